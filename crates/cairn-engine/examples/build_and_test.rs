//! Builds and tests a project directory in a container with cairn's engine: the host
//! directory is mounted (not copied) into the container, a check script is written into the
//! image with `with_new_file`, a "build" lists and counts the project's files into `/out`, a
//! "test" runs the script on that, and the results are read back as a file and exported as a
//! directory. Run it twice: the second run takes every step from the cache; edit a file of
//! the project and the steps run again.
//!
//! ```sh
//! cargo run -p cairn-engine --example build_and_test -- IMAGE [PROJECT_DIR] [OUT_DIR]
//! ```
//!
//! `IMAGE` (or `CAIRN_EXAMPLE_IMAGE` when there is no argument) is any image with a POSIX
//! shell, such as the fixture `127.0.0.1:5117/fixtures/busybox:latest`; `PROJECT_DIR`
//! defaults to `.`, `OUT_DIR` to `./cairn-out`. The store is `CAIRN_ROOT`, else cairn's
//! default store. Works as root and as a plain user (with subordinate ids for images whose
//! files belong to other users).

use std::path::PathBuf;
use std::process::ExitCode;

use cairn_engine::{Engine, EngineError};
use cairn_images::StoreOptions;

/// The test the "test" step runs: at least one file listed, each listed file present.
const CHECK: &str = r#"#!/bin/sh
set -e
count=$(cat /out/count.txt)
[ "$count" -gt 0 ] || { echo "no files" >&2; exit 1; }
while read -r f; do [ -f "/src/$f" ] || { echo "missing $f" >&2; exit 1; }; done < /out/files.txt
echo "ok $count files"
"#;

async fn run(image: String, project: PathBuf, out: PathBuf) -> Result<(), EngineError> {
    let root = std::env::var_os("CAIRN_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(cairn_images::default_root);
    let engine = Engine::open(StoreOptions::new(root)).await?;
    let src = engine
        .host()
        .directory(&project)
        .with_exclude(["target", ".git", "cairn-out"]);
    let build = engine
        .container()
        .from(image)
        .with_new_file_permissions("/usr/local/bin/check-listing", CHECK, 0o755)
        .with_mounted_directory("/src", &src)
        .with_mounted_temp("/tmp")
        .with_workdir("/src")
        .with_name("build")
        .with_exec([
            "sh",
            "-c",
            "mkdir -p /out && find . -type f | sed 's|^\\./||' | sort > /out/files.txt \
             && wc -l < /out/files.txt | tr -d ' ' > /out/count.txt",
        ]);
    let test = build
        .with_name("test")
        .with_exec(["/usr/local/bin/check-listing"]);
    print!("test: {}", test.stdout().await?);

    let listing = build.file("/out/files.txt");
    println!(
        "listing: {} bytes, {}",
        listing.size().await?,
        listing.digest().await?
    );
    print!("{}", listing.contents().await?);
    let results = build.directory("/out");
    println!("exported: {}", results.entries().await?.join(" "));
    results.export(&out).await?;
    Ok(())
}

fn main() -> ExitCode {
    // First line of main: the program is also its own store and runtime helper.
    cairn_images::init();
    let mut args = std::env::args().skip(1);
    let Some(image) = args
        .next()
        .or_else(|| std::env::var("CAIRN_EXAMPLE_IMAGE").ok())
    else {
        eprintln!(
            "usage: build_and_test IMAGE [PROJECT_DIR] [OUT_DIR] (or set CAIRN_EXAMPLE_IMAGE)"
        );
        return ExitCode::from(2);
    };
    let project = PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "cairn-out".into()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(image, project, out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain: the solver's error names the step, its source says why.
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
