//! Turning a [`ContainerConfig`] into an OCI runtime spec with Docker's isolation defaults.
//!
//! The spec is what libcontainer reads from `config.json` in the container's bundle. It is
//! built from the config plus what only the runtime helper knows ([`SpecContext`]: whether
//! it runs in a user namespace, which network namespace it made). What it sets up, in the
//! order libcontainer applies it:
//!
//! 1. **Root filesystem.** `root.path` is `rootfs` inside the bundle, an empty directory the
//!    helper makes; the first mount puts the overlay the snapshotter described on `/` there
//!    (each overlay option its own list entry: libcontainer hands them to `fsconfig` one by
//!    one). A plain directory is used as `root.path` directly instead.
//! 2. **The Docker mounts**: `/proc`, a tmpfs `/dev` (libcontainer fills it with `null`,
//!    `zero`, `full`, `tty`, `random`, `urandom`, the `/dev/fd`, `stdin`, `stdout`,
//!    `stderr` and `ptmx` links), `/dev/pts`, `/dev/shm`, `/dev/mqueue` and a read-only
//!    `/sys`; then the caller's binds and tmpfs mounts, in order.
//! 3. **Namespaces**: new pid, ipc, uts, mount and cgroup namespaces; the network namespace
//!    the helper made (loopback only) or the host's. Never a user namespace: a rootless
//!    helper already runs inside the store's.
//! 4. **Paths hidden or frozen**: Docker's masked paths (`/proc/kcore`, `/sys/firmware` …)
//!    and read-only paths (`/proc/sys`, `/proc/sysrq-trigger` …).
//! 5. **Privileges**: Docker's 14 default capabilities in the bounding set (and effective and
//!    permitted for uid 0 only, as Docker 20.10+ does), `no_new_privileges`, and Docker's
//!    default seccomp profile (written out in the crate's private `seccomp` module: calls
//!    refused with `EPERM` unless allowed, `clone` without namespace flags, `clone3` →
//!    `ENOSYS`).
//! 6. **cgroup limits**: memory, pids and CPU when asked for, and (when not rootless) the
//!    device rules that keep `CAP_MKNOD` from opening host devices — or, where the cgroup
//!    cannot enforce device rules, no `CAP_MKNOD` for root containers.
//!
//! ```no_run
//! use cairn_runtime::config::{ContainerConfig, Network, ProcessUser, Resources, RootfsMount};
//! use cairn_runtime::spec::{build_spec, SpecContext};
//!
//! let config = ContainerConfig {
//!     args: vec!["sh".into(), "-c".into(), "echo hi".into()],
//!     env: vec!["PATH=/usr/bin:/bin".into()],
//!     cwd: "/".into(),
//!     user: ProcessUser::default(),
//!     hostname: "cairn".into(),
//!     rootfs: RootfsMount::Overlay {
//!         options: vec!["lowerdir=/l1:/l2".into(), "upperdir=/u".into(), "workdir=/w".into()],
//!     },
//!     mounts: vec![],
//!     network: Network::Host,
//!     resources: Resources::default(),
//!     tty: false,
//! };
//! let ctx = SpecContext {
//!     rootless: true,
//!     single_id: false,
//!     cgroups_path: "/cairn/c1".into(),
//!     netns_path: None,
//!     device_rules: false,
//! };
//! let spec = build_spec(&config, &ctx)?;
//! spec.save("/run/cairn/bundles/c1/config.json").expect("write config.json");
//! # Ok::<(), cairn_runtime::RuntimeError>(())
//! ```

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, Process, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

use crate::config::{ContainerConfig, ExtraMount, Network, Resources, RootfsMount};
use crate::RuntimeError;

/// Facts of the helper's environment that shape the spec.
#[derive(Debug, Clone)]
pub struct SpecContext {
    /// The helper runs inside a user namespace (a rootless store): no cgroup limits, `/sys`
    /// bound from the host unless the container has its own network namespace.
    pub rootless: bool,
    /// Only one id exists in the user namespace (no subordinate range): no `gid=5` on devpts,
    /// no supplementary groups.
    pub single_id: bool,
    /// Absolute cgroups path for the container, e.g. `/cairn/<id>`.
    pub cgroups_path: String,
    /// The network namespace to join when the config asks for [`crate::config::Network::None`]
    /// (the helper made it, with loopback up).
    pub netns_path: Option<std::path::PathBuf>,
    /// The container's cgroup enforces device rules (cgroup v1's devices controller). When
    /// it does not — a cgroup2 view, where libcgroups would need eBPF to enforce them — a
    /// root container loses `CAP_MKNOD`, the one capability that would let it make and open
    /// a host device node. (In a user namespace the kernel refuses device nodes anyway.)
    pub device_rules: bool,
}

/// The runtime-spec version written into `config.json` (libcontainer accepts any `1.x`).
const OCI_VERSION: &str = "1.2.0";

/// Docker's default capability set.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths Docker hides: a read-only empty tmpfs over directories, `/dev/null` over files.
const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths Docker makes read-only.
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The CFS period the CPU limit is expressed in (100 ms, as Docker uses).
const CPU_PERIOD_US: u64 = 100_000;

/// The shortest CFS quota the kernel accepts (1 ms), i.e. `cpus` 0.01.
const MIN_CPU_QUOTA_US: i64 = 1_000;

/// The umask of the container's process, as runc and Docker set it.
const UMASK: u32 = 0o022;

/// Builds the spec for `config`.
///
/// Fails with [`RuntimeError::Spec`] when the config cannot be run as asked: an empty
/// command, a relative working directory, a mount destination that is relative, contains
/// `..`, is `/` or lies under `/proc`, a relative bind source, [`Network::None`] without
/// [`SpecContext::netns_path`], a relative cgroups path, or a limit out of range.
pub fn build_spec(config: &ContainerConfig, ctx: &SpecContext) -> Result<Spec, RuntimeError> {
    if config.args.is_empty() {
        return Err(invalid("no command to run (args is empty)"));
    }
    if !Path::new(&config.cwd).is_absolute() {
        return Err(invalid(format!(
            "working directory {:?} is not absolute",
            config.cwd
        )));
    }

    let (root_path, mut mounts) = match &config.rootfs {
        RootfsMount::Overlay { options } => (
            PathBuf::from("rootfs"),
            vec![mount("/", "overlay", "overlay", overlay_options(options))?],
        ),
        RootfsMount::Bind { source } => {
            if !source.is_absolute() {
                return Err(invalid(format!(
                    "root filesystem directory {} is not absolute",
                    source.display()
                )));
            }
            (source.clone(), Vec::new())
        }
    };
    mounts.extend(system_mounts(config.network, ctx)?);
    for extra in &config.mounts {
        mounts.push(extra_mount(extra)?);
    }

    let root = RootBuilder::default()
        .path(root_path)
        .readonly(false)
        .build()
        .map_err(|e| invalid(format!("root: {e}")))?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(config.network, ctx)?)
        .cgroups_path(cgroups_path(ctx)?)
        .masked_paths(Vec::from(MASKED_PATHS.map(String::from)))
        .readonly_paths(Vec::from(READONLY_PATHS.map(String::from)))
        .seccomp(crate::seccomp::default_profile())
        .build()
        .map_err(|e| invalid(format!("linux section: {e}")))?;
    // The builder starts from oci-spec's defaults, which carry an (empty) resources section:
    // set it explicitly, None included.
    linux.set_resources(resources(&config.resources, ctx)?);
    // libcontainer creates the default devices itself (see the module documentation).
    linux.set_devices(None);

    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .root(root)
        .mounts(mounts)
        .process(process(config, ctx)?)
        .linux(linux)
        .build()
        .map_err(|e| invalid(format!("spec: {e}")))?;
    spec.set_hostname((!config.hostname.is_empty()).then(|| config.hostname.clone()));
    spec.set_annotations(None);
    Ok(spec)
}

/// A [`RuntimeError::Spec`].
fn invalid(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Spec {
        reason: reason.into(),
    }
}

/// The process: the command, its user, Docker's capabilities, no rlimits, no terminal (cairn
/// sets up ttys itself).
fn process(config: &ContainerConfig, ctx: &SpecContext) -> Result<Process, RuntimeError> {
    let user = &config.user;
    let mut spec_user = UserBuilder::default()
        .uid(user.uid)
        .gid(user.gid)
        .umask(UMASK)
        .build()
        .map_err(|e| invalid(format!("user: {e}")))?;
    if !ctx.single_id {
        // libcontainer calls setgroups(2) only for a non-empty list; otherwise the process
        // keeps the helper's supplementary groups. The primary group alone clears them.
        let groups = if user.additional_gids.is_empty() {
            vec![user.gid]
        } else {
            user.additional_gids.clone()
        };
        spec_user.set_additional_gids(Some(groups));
    }

    let bounding: Capabilities = DEFAULT_CAPABILITIES
        .into_iter()
        .filter(|c| ctx.rootless || ctx.device_rules || *c != Capability::Mknod)
        .collect();
    // Docker 20.10+: a non-root user starts with no effective or permitted capabilities
    // (file capabilities can still raise them within the bounding set).
    let granted = if user.uid == 0 {
        bounding.clone()
    } else {
        Capabilities::new()
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(bounding)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(|e| invalid(format!("capabilities: {e}")))?;

    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(spec_user)
        .args(config.args.clone())
        .env(config.env.clone())
        .cwd(&config.cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(|e| invalid(format!("process: {e}")))?;
    // oci-spec's default carries RLIMIT_NOFILE 1024; Docker leaves the limits inherited.
    process.set_rlimits(None);
    Ok(process)
}

/// The mounts every container gets, after the root filesystem's.
fn system_mounts(network: Network, ctx: &SpecContext) -> Result<Vec<Mount>, RuntimeError> {
    let mut devpts = vec![
        "nosuid",
        "noexec",
        "newinstance",
        "ptmxmode=0666",
        "mode=0620",
    ];
    if !ctx.single_id {
        // The tty group; it does not exist in a user namespace with a single id.
        devpts.push("gid=5");
    }
    let sys = if ctx.rootless && network == Network::Host {
        // A fresh sysfs needs a network namespace owned by the user namespace: bind the
        // host's instead.
        mount(
            "/sys",
            "bind",
            "/sys",
            // `rro`: read-only all the way down; `ro` alone leaves submounts writable.
            ["rbind", "nosuid", "noexec", "nodev", "ro", "rro"],
        )?
    } else {
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            ["nosuid", "noexec", "nodev", "ro"],
        )?
    };
    Ok(vec![
        mount("/proc", "proc", "proc", ["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            ["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", "devpts", devpts)?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            ["nosuid", "noexec", "nodev"],
        )?,
        sys,
    ])
}

/// One of the caller's mounts.
fn extra_mount(extra: &ExtraMount) -> Result<Mount, RuntimeError> {
    match extra {
        ExtraMount::Bind {
            source,
            destination,
            readonly,
        } => {
            check_destination(destination)?;
            if !source.is_absolute() {
                return Err(invalid(format!(
                    "bind source {} (for {destination}) is not absolute",
                    source.display()
                )));
            }
            let mut options = vec!["rbind"];
            if *readonly {
                // `rro` makes submounts of the bound tree read-only too.
                options.extend(["ro", "rro"]);
            }
            mount(destination, "bind", source, options)
        }
        ExtraMount::Tmpfs { destination } => {
            check_destination(destination)?;
            mount(
                destination,
                "tmpfs",
                "tmpfs",
                ["nosuid", "nodev", "mode=1777"],
            )
        }
    }
}

/// A mount destination must be an absolute path without `..`, not `/` itself, and not
/// under `/proc` (where a mount could uncover a masked path; runc refuses it too).
fn check_destination(destination: &str) -> Result<(), RuntimeError> {
    let path = Path::new(destination);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "mount destination {destination:?} is not absolute"
        )));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(format!(
            "mount destination {destination:?} contains `..`"
        )));
    }
    if path.components().all(|c| c == Component::RootDir) {
        return Err(invalid(format!(
            "mount destination {destination:?} is the root directory"
        )));
    }
    if path.starts_with("/proc") {
        return Err(invalid(format!(
            "mount destination {destination:?} is under /proc"
        )));
    }
    Ok(())
}

/// libcontainer hands each overlay option to `fsconfig`, which takes values of at most 255
/// bytes: a `lowerdir=a:b:…` longer than that (five or six layers of a deep store path) fails
/// with "failed to prepare rootfs". Such a list goes as one `lowerdir+=DIR` per layer instead
/// (Linux 6.8 and later; same order, uppermost first). Shorter lists stay as they are, so older
/// kernels keep working where they worked.
fn overlay_options(options: &[String]) -> Vec<String> {
    const FSCONFIG_MAX_VALUE: usize = 255;
    let mut out = Vec::with_capacity(options.len());
    for option in options {
        match option.strip_prefix("lowerdir=") {
            Some(dirs) if dirs.len() > FSCONFIG_MAX_VALUE => {
                out.extend(dirs.split(':').map(|d| format!("lowerdir+={d}")));
            }
            _ => out.push(option.clone()),
        }
    }
    out
}

/// A mount entry.
fn mount<I>(
    destination: &str,
    typ: &str,
    source: impl AsRef<Path>,
    options: I,
) -> Result<Mount, RuntimeError>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.as_ref())
        .options(
            options
                .into_iter()
                .map(|o| o.as_ref().to_owned())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| invalid(format!("mount {destination}: {e}")))
}

/// New pid, ipc, uts, mount and cgroup namespaces, and the network namespace asked for.
fn namespaces(network: Network, ctx: &SpecContext) -> Result<Vec<LinuxNamespace>, RuntimeError> {
    let new = |typ: LinuxNamespaceType| {
        LinuxNamespaceBuilder::default()
            .typ(typ)
            .build()
            .map_err(|e| invalid(format!("namespace: {e}")))
    };
    let mut namespaces = vec![
        new(LinuxNamespaceType::Pid)?,
        new(LinuxNamespaceType::Ipc)?,
        new(LinuxNamespaceType::Uts)?,
        new(LinuxNamespaceType::Mount)?,
        new(LinuxNamespaceType::Cgroup)?,
    ];
    match network {
        Network::Host => {}
        Network::None => {
            let path = ctx.netns_path.as_ref().ok_or_else(|| {
                invalid("network none needs a network namespace to join, and none was made")
            })?;
            if !path.is_absolute() {
                return Err(invalid(format!(
                    "network namespace path {} is not absolute",
                    path.display()
                )));
            }
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::Network)
                    .path(path.clone())
                    .build()
                    .map_err(|e| invalid(format!("network namespace: {e}")))?,
            );
        }
    }
    Ok(namespaces)
}

/// The cgroups path, which must be absolute: libcontainer reads a relative one as
/// systemd's `slice:prefix:name`.
fn cgroups_path(ctx: &SpecContext) -> Result<PathBuf, RuntimeError> {
    let path = PathBuf::from(&ctx.cgroups_path);
    if !path.is_absolute() {
        return Err(invalid(format!(
            "cgroups path {:?} is not absolute",
            ctx.cgroups_path
        )));
    }
    Ok(path)
}

/// The cgroup settings. Without limits and without a devices controller to close, there
/// is nothing to write and no resources section at all: a rootless helper can write none
/// (not even the device rules libcgroups always adds), and a root helper with its own view
/// has no hierarchy in sight. A limit asked for where it cannot be set then fails at create
/// time, as it should. Where the devices controller is in view (root, host hierarchies), the
/// devices cgroup is closed to all but libcgroups' default devices.
fn resources(
    resources: &Resources,
    ctx: &SpecContext,
) -> Result<Option<LinuxResources>, RuntimeError> {
    if !ctx.device_rules && !resources.any() {
        return Ok(None);
    }
    let mut builder = LinuxResourcesBuilder::default();
    if !ctx.rootless {
        // Deny everything; libcgroups then allows (after the spec's rules) Docker's default
        // devices: null, zero, full, tty, random, urandom, console, ptmx, pts/*, tun, and
        // mknod of any character or block device.
        builder = builder.devices(vec![LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .typ(LinuxDeviceType::A)
            .access("rwm")
            .build()
            .map_err(|e| invalid(format!("device rule: {e}")))?]);
    }
    if let Some(bytes) = resources.memory {
        let limit = i64::try_from(bytes)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| invalid(format!("memory limit {bytes} is out of range")))?;
        builder = builder.memory(
            LinuxMemoryBuilder::default()
                .limit(limit)
                .build()
                .map_err(|e| invalid(format!("memory limit: {e}")))?,
        );
    }
    if let Some(pids) = resources.pids {
        if pids <= 0 {
            return Err(invalid(format!("pids limit {pids} is not positive")));
        }
        builder = builder.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(|e| invalid(format!("pids limit: {e}")))?,
        );
    }
    if let Some(cpus) = resources.cpus {
        let quota = (cpus * CPU_PERIOD_US as f64).round();
        if !quota.is_finite() || quota < MIN_CPU_QUOTA_US as f64 || quota > i64::MAX as f64 {
            return Err(invalid(format!(
                "cpu limit {cpus} is out of range (at least 0.01)"
            )));
        }
        builder = builder.cpu(
            LinuxCpuBuilder::default()
                .quota(quota as i64)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(|e| invalid(format!("cpu limit: {e}")))?,
        );
    }
    builder
        .build()
        .map(Some)
        .map_err(|e| invalid(format!("resources: {e}")))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxSeccompAction, Mount};

    use super::*;
    use crate::config::ProcessUser;

    #[test]
    fn long_lowerdir_lists_go_one_layer_an_option() {
        let short = vec!["lowerdir=/s/2/fs:/s/1/fs".to_owned(), "userxattr".into()];
        assert_eq!(overlay_options(&short), short);
        let dirs: Vec<String> = (1..=8)
            .map(|n| format!("/var/tmp/cairn-store-{n:040}/fs"))
            .collect();
        let long = vec![format!("lowerdir={}", dirs.join(":")), "upperdir=/u".into()];
        let split = overlay_options(&long);
        assert_eq!(split.len(), 9);
        assert_eq!(split[0], format!("lowerdir+={}", dirs[0]));
        assert_eq!(split[7], format!("lowerdir+={}", dirs[7]));
        assert_eq!(split[8], "upperdir=/u");
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
            cwd: "/work".into(),
            user: ProcessUser::default(),
            hostname: "step-1".into(),
            rootfs: RootfsMount::Overlay {
                options: vec![
                    "lowerdir=/s/2/fs:/s/1/fs".into(),
                    "upperdir=/s/3/fs".into(),
                    "workdir=/s/3/work".into(),
                    "userxattr".into(),
                ],
            },
            mounts: vec![
                ExtraMount::Bind {
                    source: "/home/u/src".into(),
                    destination: "/src".into(),
                    readonly: true,
                },
                ExtraMount::Tmpfs {
                    destination: "/tmp".into(),
                },
            ],
            network: Network::None,
            resources: Resources::default(),
            tty: false,
        }
    }

    fn ctx() -> SpecContext {
        SpecContext {
            rootless: true,
            single_id: false,
            cgroups_path: "/cairn/c1".into(),
            netns_path: Some("/proc/4242/ns/net".into()),
            device_rules: false,
        }
    }

    fn rootful() -> SpecContext {
        SpecContext {
            rootless: false,
            ..ctx()
        }
    }

    fn mounts(spec: &Spec) -> &[Mount] {
        spec.mounts().as_deref().expect("mounts")
    }

    fn find<'a>(spec: &'a Spec, destination: &str) -> &'a Mount {
        mounts(spec)
            .iter()
            .find(|m| m.destination() == Path::new(destination))
            .unwrap_or_else(|| panic!("no mount on {destination}"))
    }

    fn options(m: &Mount) -> Vec<&str> {
        m.options().iter().flatten().map(String::as_str).collect()
    }

    fn spec_error(result: Result<Spec, RuntimeError>) -> String {
        match result {
            Err(RuntimeError::Spec { reason }) => reason,
            other => panic!("expected a spec error, got {other:?}"),
        }
    }

    #[test]
    fn overlay_rootfs_docker_mounts_and_extra_mounts_come_in_order() {
        let spec = build_spec(&config(), &ctx()).expect("spec");
        let root = spec.root().as_ref().expect("root");
        assert_eq!(root.path(), Path::new("rootfs"));
        assert_eq!(root.readonly(), Some(false));

        let order: Vec<(&Path, Option<&str>)> = mounts(&spec)
            .iter()
            .map(|m| (m.destination().as_path(), m.typ().as_deref()))
            .collect();
        let expected: Vec<(&Path, Option<&str>)> = [
            ("/", "overlay"),
            ("/proc", "proc"),
            ("/dev", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/dev/shm", "tmpfs"),
            ("/dev/mqueue", "mqueue"),
            ("/sys", "sysfs"),
            ("/src", "bind"),
            ("/tmp", "tmpfs"),
        ]
        .into_iter()
        .map(|(d, t)| (Path::new(d), Some(t)))
        .collect();
        assert_eq!(order, expected);

        let overlay = &mounts(&spec)[0];
        assert_eq!(overlay.source().as_deref(), Some(Path::new("overlay")));
        assert_eq!(
            options(overlay),
            [
                "lowerdir=/s/2/fs:/s/1/fs",
                "upperdir=/s/3/fs",
                "workdir=/s/3/work",
                "userxattr"
            ]
        );
        assert_eq!(options(find(&spec, "/proc")), ["nosuid", "noexec", "nodev"]);
        assert_eq!(
            options(find(&spec, "/dev")),
            ["nosuid", "strictatime", "mode=755", "size=65536k"]
        );
        assert_eq!(
            options(find(&spec, "/dev/pts")),
            [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5"
            ]
        );
        assert_eq!(
            options(find(&spec, "/dev/shm")),
            ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        );
        assert_eq!(
            options(find(&spec, "/dev/mqueue")),
            ["nosuid", "noexec", "nodev"]
        );
        assert_eq!(
            options(find(&spec, "/sys")),
            ["nosuid", "noexec", "nodev", "ro"]
        );
        let src = find(&spec, "/src");
        assert_eq!(src.source().as_deref(), Some(Path::new("/home/u/src")));
        assert_eq!(options(src), ["rbind", "ro", "rro"]);
        assert_eq!(
            options(find(&spec, "/tmp")),
            ["nosuid", "nodev", "mode=1777"]
        );
    }

    #[test]
    fn writable_bind_has_no_ro() {
        let mut config = config();
        config.mounts = vec![ExtraMount::Bind {
            source: "/var/cache/cairn/v1".into(),
            destination: "/cache".into(),
            readonly: false,
        }];
        let spec = build_spec(&config, &ctx()).expect("spec");
        assert_eq!(options(find(&spec, "/cache")), ["rbind"]);
    }

    #[test]
    fn bind_rootfs_is_the_root_path_without_a_root_mount() {
        let mut config = config();
        config.rootfs = RootfsMount::Bind {
            source: "/var/lib/cairn/rootfs/abc".into(),
        };
        let spec = build_spec(&config, &ctx()).expect("spec");
        let root = spec.root().as_ref().expect("root");
        assert_eq!(root.path(), Path::new("/var/lib/cairn/rootfs/abc"));
        assert_eq!(mounts(&spec)[0].destination(), Path::new("/proc"));
        assert!(mounts(&spec)
            .iter()
            .all(|m| m.destination() != Path::new("/")));

        config.rootfs = RootfsMount::Bind {
            source: "rootfs/abc".into(),
        };
        assert!(spec_error(build_spec(&config, &ctx())).contains("rootfs/abc"));
    }

    #[test]
    fn bad_mount_destinations_are_refused_by_name() {
        for destination in [
            "data",
            "./data",
            "/data/../etc",
            "/..",
            "/",
            "/proc/sys/kernel",
        ] {
            for extra in [
                ExtraMount::Tmpfs {
                    destination: destination.into(),
                },
                ExtraMount::Bind {
                    source: "/host".into(),
                    destination: destination.into(),
                    readonly: false,
                },
            ] {
                let mut config = config();
                config.mounts = vec![extra];
                let reason = spec_error(build_spec(&config, &ctx()));
                assert!(
                    reason.contains(&format!("{destination:?}")),
                    "{destination}: {reason}"
                );
            }
        }
        let mut config = config();
        config.mounts = vec![ExtraMount::Bind {
            source: "relative/dir".into(),
            destination: "/data".into(),
            readonly: false,
        }];
        assert!(spec_error(build_spec(&config, &ctx())).contains("relative/dir"));
    }

    #[test]
    fn namespaces_are_docker_s_and_never_a_user_namespace() {
        let spec = build_spec(&config(), &ctx()).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        let namespaces = linux.namespaces().as_deref().expect("namespaces");
        let kinds: Vec<LinuxNamespaceType> = namespaces.iter().map(|n| n.typ()).collect();
        assert_eq!(
            kinds,
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Cgroup,
                LinuxNamespaceType::Network,
            ]
        );
        assert!(namespaces[..5].iter().all(|n| n.path().is_none()));
        assert_eq!(
            namespaces[5].path().as_deref(),
            Some(Path::new("/proc/4242/ns/net"))
        );
        assert!(linux.uid_mappings().is_none() && linux.gid_mappings().is_none());
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/cairn/c1"))
        );
        assert_eq!(spec.hostname().as_deref(), Some("step-1"));
    }

    #[test]
    fn host_network_joins_no_network_namespace() {
        let mut config = config();
        config.network = Network::Host;
        let spec = build_spec(&config, &rootful()).expect("spec");
        let namespaces = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .expect("namespaces");
        assert_eq!(namespaces.len(), 5);
        assert!(namespaces
            .iter()
            .all(|n| n.typ() != LinuxNamespaceType::Network));
    }

    #[test]
    fn network_none_without_a_namespace_path_is_an_error() {
        let ctx = SpecContext {
            netns_path: None,
            ..ctx()
        };
        assert!(spec_error(build_spec(&config(), &ctx)).contains("network"));
        let ctx = SpecContext {
            netns_path: Some("ns/net".into()),
            ..self::ctx()
        };
        assert!(spec_error(build_spec(&config(), &ctx)).contains("ns/net"));
    }

    #[test]
    fn relative_cgroups_path_and_cwd_are_refused() {
        let ctx = SpecContext {
            cgroups_path: "cairn/c1".into(),
            ..ctx()
        };
        assert!(spec_error(build_spec(&config(), &ctx)).contains("cairn/c1"));
        let mut config = config();
        config.cwd = "work".into();
        assert!(spec_error(build_spec(&config, &self::ctx())).contains("work"));
        config.cwd = "/".into();
        config.args.clear();
        assert!(spec_error(build_spec(&config, &self::ctx())).contains("args"));
    }

    #[test]
    fn masked_and_readonly_paths_are_docker_s() {
        let spec = build_spec(&config(), &ctx()).expect("spec");
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.masked_paths().as_deref().expect("masked"),
            [
                "/proc/asound",
                "/proc/acpi",
                "/proc/interrupts",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
                "/sys/devices/virtual/powercap",
            ]
        );
        assert_eq!(
            linux.readonly_paths().as_deref().expect("readonly"),
            [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger"
            ]
        );
        assert!(linux.devices().is_none());
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        assert_eq!(seccomp.default_action(), LinuxSeccompAction::ScmpActErrno);
    }

    #[test]
    fn process_is_the_command_without_terminal_rlimits_or_new_privileges() {
        let spec = build_spec(&config(), &ctx()).expect("spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(
            process.args().as_deref().expect("args"),
            ["sh", "-c", "echo hi"]
        );
        assert_eq!(
            process.env().as_deref().expect("env"),
            ["PATH=/usr/bin:/bin", "HOME=/root"]
        );
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!(process.terminal(), Some(false));
        assert_eq!(process.no_new_privileges(), Some(true));
        assert!(process.rlimits().is_none());
        assert_eq!(process.user().umask(), Some(0o022));
    }

    #[test]
    fn capabilities_are_docker_s_and_granted_to_root_only() {
        let docker: Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(docker.len(), 14);

        let spec = build_spec(&config(), &ctx()).expect("spec");
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        assert_eq!(caps.bounding().as_ref(), Some(&docker));
        assert_eq!(caps.effective().as_ref(), Some(&docker));
        assert_eq!(caps.permitted().as_ref(), Some(&docker));
        assert_eq!(caps.inheritable().as_ref(), Some(&Capabilities::new()));
        assert_eq!(caps.ambient().as_ref(), Some(&Capabilities::new()));

        let mut config = config();
        config.user = ProcessUser {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![],
        };
        let spec = build_spec(&config, &ctx()).expect("spec");
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        assert_eq!(caps.bounding().as_ref(), Some(&docker));
        assert_eq!(caps.effective().as_ref(), Some(&Capabilities::new()));
        assert_eq!(caps.permitted().as_ref(), Some(&Capabilities::new()));
    }

    #[test]
    fn root_containers_without_device_rules_lose_mknod() {
        let bounding = |ctx: &SpecContext| {
            build_spec(&config(), ctx)
                .expect("spec")
                .process()
                .as_ref()
                .and_then(|p| p.capabilities().clone())
                .and_then(|c| c.bounding().clone())
                .expect("bounding set")
        };
        assert!(!bounding(&rootful()).contains(&Capability::Mknod));
        let enforced = SpecContext {
            device_rules: true,
            ..rootful()
        };
        assert!(bounding(&enforced).contains(&Capability::Mknod));
        // In a user namespace the kernel refuses device nodes whatever the capabilities.
        assert!(bounding(&ctx()).contains(&Capability::Mknod));
    }

    #[test]
    fn supplementary_groups_are_set_unless_there_is_a_single_id() {
        let mut config = config();
        config.user = ProcessUser {
            uid: 1000,
            gid: 100,
            additional_gids: vec![10, 20],
        };
        let gids = |config: &ContainerConfig, ctx: &SpecContext| {
            let spec = build_spec(config, ctx).expect("spec");
            let user = spec.process().as_ref().expect("process").user().clone();
            assert_eq!((user.uid(), user.gid()), (1000, 100));
            user.additional_gids().clone()
        };
        assert_eq!(gids(&config, &ctx()), Some(vec![10, 20]));
        let single = SpecContext {
            single_id: true,
            ..ctx()
        };
        assert_eq!(gids(&config, &single), None);
        config.user.additional_gids.clear();
        assert_eq!(gids(&config, &ctx()), Some(vec![100]));
    }

    #[test]
    fn devpts_has_no_tty_group_with_a_single_id() {
        let ctx = SpecContext {
            single_id: true,
            ..ctx()
        };
        let spec = build_spec(&config(), &ctx).expect("spec");
        assert_eq!(
            options(find(&spec, "/dev/pts")),
            [
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620"
            ]
        );
    }

    #[test]
    fn sys_is_bound_from_the_host_only_rootless_on_the_host_network() {
        let mut config = config();
        config.network = Network::Host;
        let spec = build_spec(&config, &ctx()).expect("spec");
        let sys = find(&spec, "/sys");
        assert_eq!(sys.typ().as_deref(), Some("bind"));
        assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
        assert_eq!(
            options(sys),
            ["rbind", "nosuid", "noexec", "nodev", "ro", "rro"]
        );

        let spec = build_spec(&config, &rootful()).expect("spec");
        assert_eq!(find(&spec, "/sys").typ().as_deref(), Some("sysfs"));

        config.network = Network::None;
        let spec = build_spec(&config, &ctx()).expect("spec");
        assert_eq!(find(&spec, "/sys").typ().as_deref(), Some("sysfs"));
    }

    #[test]
    fn rootless_without_limits_has_no_resources_section() {
        let spec = build_spec(&config(), &ctx()).expect("spec");
        assert!(spec.linux().as_ref().expect("linux").resources().is_none());
    }

    #[test]
    fn rootful_without_limits_or_devices_controller_has_no_resources_section() {
        let spec = build_spec(&config(), &rootful()).expect("spec");
        assert!(spec.linux().as_ref().expect("linux").resources().is_none());
    }

    #[test]
    fn rootful_without_limits_closes_the_devices_cgroup_only() {
        let ctx = SpecContext {
            device_rules: true,
            ..rootful()
        };
        let spec = build_spec(&config(), &ctx).expect("spec");
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone())
            .expect("resources");
        let devices = resources.devices().as_deref().expect("devices");
        assert_eq!(devices.len(), 1);
        assert!(!devices[0].allow());
        assert_eq!(devices[0].to_string(), "a *:* rwm");
        assert!(resources.memory().is_none());
        assert!(resources.pids().is_none());
        assert!(resources.cpu().is_none());
    }

    #[test]
    fn limits_asked_for_are_set() {
        let mut config = config();
        config.resources = Resources {
            memory: Some(512 << 20),
            pids: Some(100),
            cpus: Some(1.5),
        };
        for ctx in [ctx(), rootful()] {
            let spec = build_spec(&config, &ctx).expect("spec");
            let resources = spec
                .linux()
                .as_ref()
                .and_then(|l| l.resources().clone())
                .expect("resources");
            assert_eq!(
                resources.memory().as_ref().and_then(|m| m.limit()),
                Some(512 << 20)
            );
            assert_eq!(resources.pids().as_ref().map(|p| p.limit()), Some(100));
            let cpu = resources.cpu().as_ref().expect("cpu");
            assert_eq!(cpu.quota(), Some(150_000));
            assert_eq!(cpu.period(), Some(100_000));
            // Device rules only where they can be written.
            assert_eq!(resources.devices().is_some(), !ctx.rootless);
        }
    }

    #[test]
    fn limits_out_of_range_are_refused() {
        for resources in [
            Resources {
                cpus: Some(0.001),
                ..Resources::default()
            },
            Resources {
                cpus: Some(f64::NAN),
                ..Resources::default()
            },
            Resources {
                pids: Some(0),
                ..Resources::default()
            },
            Resources {
                memory: Some(u64::MAX),
                ..Resources::default()
            },
        ] {
            let mut config = config();
            config.resources = resources;
            spec_error(build_spec(&config, &ctx()));
        }
    }

    #[test]
    fn spec_round_trips_through_config_json() {
        let mut config = config();
        config.resources.memory = Some(1 << 30);
        let spec = build_spec(&config, &rootful()).expect("spec");
        let json = serde_json::to_string_pretty(&spec).expect("serialize");
        assert!(json.contains(r#""ociVersion": "1.2.0""#), "{json}");
        assert!(!json.contains("rlimits"), "{json}");
        assert!(!json.contains("annotations"), "{json}");
        let back: Spec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);

        let dir = std::env::temp_dir().join(format!("cairn-spec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.json");
        spec.save(&path).expect("save");
        let loaded = Spec::load(&path).expect("load");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(loaded, spec);
    }
}
