//! Gives a runc or crun bundle the isolation `cairn exec` gives its containers, so that
//! `benches/exec.sh` compares runtimes doing the same work rather than `runc spec`'s
//! defaults (three capabilities, no seccomp profile, a network namespace) against Docker's.
//!
//!   same-isolation CONFIG.JSON [--precompiled linear|binary-tree]
//!
//! Rewrites CONFIG.JSON in place: the capability sets and the seccomp profile become the
//! ones cairn's runtime builds (Docker's defaults), and the network namespace goes, since
//! `cairn exec` shares the host's network unless asked otherwise. Everything else —
//! namespaces, user mappings, mounts, masked paths — stays as the bundle's tool wrote it.
//!
//! With `--precompiled`, the profile compiled to classic BPF also goes into crun's
//! `run.oci.seccomp_bpf_data` annotation, which crun installs instead of compiling the
//! profile: what its seccomp cache does, for a crun built without that cache. `linear` is
//! the layout crun itself compiles (libseccomp's default), so the filter its cache would
//! hold; `binary-tree` is the layout cairn's containers get, which loads faster
//! (`cairn_runtime::FilterLayout`).

use std::process::ExitCode;

use cairn_runtime::spec::{build_spec, SpecContext};
use cairn_runtime::{
    compile_filter, ContainerConfig, FilterLayout, Network, ProcessUser, Resources, RootfsMount,
};
use oci_spec::runtime::LinuxSeccomp;
use serde_json::Value;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let usage = || {
        eprintln!("usage: same-isolation CONFIG.JSON [--precompiled linear|binary-tree]");
        ExitCode::from(2)
    };
    let (path, precompiled) = match args.as_slice() {
        [path] => (path, None),
        [path, flag, layout] if flag == "--precompiled" => match layout.to_str() {
            Some("linear") => (path, Some(FilterLayout::Linear)),
            Some("binary-tree") => (path, Some(FilterLayout::BinaryTree)),
            _ => return usage(),
        },
        _ => return usage(),
    };
    match rewrite(std::path::Path::new(path), precompiled) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("same-isolation: {}: {e}", path.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}

fn rewrite(path: &std::path::Path, precompiled: Option<FilterLayout>) -> Result<(), String> {
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
    if let Some(layout) = precompiled {
        use base64::Engine as _;
        let profile: LinuxSeccomp = serde_json::from_value(cairn["linux"]["seccomp"].clone())
            .map_err(|e| format!("cairn's seccomp profile: {e}"))?;
        let program = compile_filter(&profile, layout).map_err(|e| e.to_string())?;
        let annotations = config
            .as_object_mut()
            .ok_or("not a JSON object")?
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        annotations["run.oci.seccomp_bpf_data"] =
            Value::String(base64::engine::general_purpose::STANDARD.encode(program));
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
