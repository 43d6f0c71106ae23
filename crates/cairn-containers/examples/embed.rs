//! Running a container from a program that embeds cairn.
//!
//! ```sh
//! cargo run -p cairn-containers --example embed -- 127.0.0.1:5117/fixtures/busybox:latest
//! ```
//!
//! The one thing an embedding program must do is call `cairn_images::init()` first in
//! `main`, before any thread starts: cairn runs containers (and, for a rootless store, its
//! filesystem work) in helper processes that are this very program, re-executed with a
//! marker argument; `init` serves as that helper and exits when it was started as one, and
//! returns at once otherwise. A program that cannot do that (say, one whose `main` belongs to
//! a framework) points `StoreOptions::helper` at the `cairn` binary instead.

use std::time::Duration;

use cairn_containers::{Containers, ExecOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    cairn_images::init();
    let image = std::env::args().nth(1).ok_or("usage: embed IMAGE [ROOT]")?;
    let root = std::env::args()
        .nth(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(cairn_images::default_root);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = cairn_images::Store::open(cairn_images::StoreOptions::new(root))?;
        let containers = Containers::open(store).await?;
        let options = ExecOptions {
            args: vec![
                "sh".into(),
                "-c".into(),
                "echo hello from $(hostname)".into(),
            ],
            ..Default::default()
        };
        let running = containers
            .start(&image, &options, cairn_containers::inherit_stdio(false)?)
            .await?;
        let outcome = running
            .run_to_end(
                Some(Duration::from_secs(30)),
                std::future::pending(),
                Duration::from_secs(5),
            )
            .await?;
        println!("exit code {}", outcome.status.code());
        Ok(())
    })
}
