//! Gives a runc or crun bundle the isolation `cairn exec` gives its containers, so that
//! `benches/exec.sh` compares runtimes doing the same work rather than `runc spec`'s
//! defaults (three capabilities, no seccomp profile, a network namespace) against Docker's.
//!
//!   same-isolation CONFIG.JSON
//!
//! Rewrites CONFIG.JSON in place: the capability sets and the seccomp profile become the
//! ones cairn's runtime builds (Docker's defaults), and the network namespace goes, since
//! `cairn exec` shares the host's network unless asked otherwise. Everything else —
//! namespaces, user mappings, mounts, masked paths — stays as the bundle's tool wrote it.

use std::process::ExitCode;

use cairn_runtime::spec::{build_spec, SpecContext};
use cairn_runtime::{ContainerConfig, Network, ProcessUser, Resources, RootfsMount};
use serde_json::Value;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: same-isolation CONFIG.JSON");
        return ExitCode::from(2);
    };
    match rewrite(std::path::Path::new(&path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("same-isolation: {}: {e}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}

fn rewrite(path: &std::path::Path) -> Result<(), String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let mut config: Value = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
    let cairn = cairn_spec()?;
    config["process"]["capabilities"] = cairn["process"]["capabilities"].clone();
    config["process"]["noNewPrivileges"] = Value::Bool(true);
    let linux = config
        .get_mut("linux")
        .and_then(Value::as_object_mut)
        .ok_or("no \"linux\" section")?;
    linux.insert("seccomp".into(), cairn["linux"]["seccomp"].clone());
    if let Some(Value::Array(namespaces)) = linux.get_mut("namespaces") {
        namespaces.retain(|ns| ns["type"] != "network");
    }
    let text = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| e.to_string())
}

/// The spec cairn's runtime builds for `true` as root with the host's network.
fn cairn_spec() -> Result<Value, String> {
    let config = ContainerConfig {
        args: vec!["true".into()],
        env: Vec::new(),
        cwd: "/".into(),
        user: ProcessUser::default(),
        hostname: "bench".into(),
        rootfs: RootfsMount::Bind { source: "/".into() },
        mounts: Vec::new(),
        network: Network::Host,
        resources: Resources::default(),
        tty: false,
    };
    let ctx = SpecContext {
        rootless: false,
        single_id: false,
        cgroups_path: "/bench".into(),
        netns_path: None,
        device_rules: false,
    };
    let spec = build_spec(&config, &ctx).map_err(|e| e.to_string())?;
    serde_json::to_value(&spec).map_err(|e| e.to_string())
}
