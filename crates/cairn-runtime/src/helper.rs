//! The runtime helper: the single-threaded process in which libcontainer runs.
//!
//! libcontainer clones the calling process without glibc's fork handlers, changes its working
//! directory and dumpable flag, and lets its signal mask leak into containers; it is not safe
//! in a multithreaded engine. So each engine starts one long-lived helper (its own program,
//! re-executed with [`RUNTIME_HELPER_ARG`]) and sends it requests over a socket. The helper:
//!
//! - runs as root, or for a rootless store inside the store's user namespace (made with
//!   checked `newuidmap`/`newgidmap` by [`crate::spawn_in_user_namespace`]'s machinery), with
//!   a cgroup namespace of its own and cgroup2 mounted over `/sys/fs/cgroup` so libcgroups
//!   skips what an unprivileged user cannot write;
//! - creates and starts containers, their init being cairn's reaper ([`crate::init_process`]);
//! - watches every container's init through a pidfd in one `poll` loop, deletes its state when
//!   it exits and reports the exit status;
//! - dies with the engine (parent-death signal), and the containers die with it.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tracing::{debug, warn};

use crate::config::{ContainerConfig, Network};
use crate::init_process::ReaperExecutor;
use crate::proto::{self, Reply, Request};
use crate::spec::{build_spec, SpecContext};
use crate::{sys, ExitStatus};

/// The first argument that makes a program serve as the runtime helper (see [`crate::init`]).
pub const RUNTIME_HELPER_ARG: &str = "__cairn-runtime-helper";

/// The command line of a serving helper (and so of every container's pid 1): it names
/// neither the store nor the engine's arguments.
pub const PROCESS_TITLE: &str = "cairn-runtime-helper";

/// Set by the engine to its own pid: a helper whose parent is someone else exits at once
/// (the engine died between spawning it and the helper arming its parent-death signal).
pub(crate) const PARENT_ENV: &str = "_CAIRN_RUNTIME_PARENT";

struct Running {
    pid: Pid,
    pidfd: OwnedFd,
    container: Container,
}

struct Server {
    /// The store's runtime directory: the seccomp cache, and libcontainer's state of the
    /// containers of helpers with cgroups (one directory each).
    state_root: PathBuf,
    /// Where libcontainer keeps each container's state: `state_root`, or for a helper that
    /// makes no cgroups its scratch tmpfs.
    containers_root: PathBuf,
    /// The helper's private tmpfs (see [`private_scratch`]), where bundles are written; or
    /// why it has none, which every create then reports.
    scratch: Result<PathBuf, String>,
    /// The host's v1 cgroup hierarchies are in view (their devices controller enforces the
    /// spec's device rules); otherwise the helper has a view of its own.
    host_cgroups: bool,
    /// No cgroup hierarchy is in view at all (see [`no_cgroup_view`]): containers get no
    /// cgroup, and their state is only their state directory.
    no_cgroups: bool,
    /// A seccomp profile and its BPF program, compiled once per helper (see
    /// [`crate::seccomp::compile`]).
    seccomp: Option<(oci_spec::runtime::LinuxSeccomp, std::sync::Arc<Vec<u8>>)>,
    rootless: bool,
    single_id: bool,
    running: HashMap<String, Running>,
}

/// Serves requests on stdin (a `SOCK_SEQPACKET` socket) until the engine goes away. The
/// arguments after [`RUNTIME_HELPER_ARG`] are the state root and the mode: `root` (real root,
/// with a cgroup view of its own), `root-host-cgroups` (real root in the host's cgroup
/// hierarchies, for containers with limits), `rootless` or `rootless-single`.
pub fn serve(args: &[std::ffi::OsString]) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    if let Some(parent) = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    {
        if nix::unistd::getppid().as_raw() != parent {
            std::process::exit(0);
        }
    }
    let sock = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(sock) => sock,
        Err(e) => {
            eprintln!("cairn runtime helper: stdin: {e}");
            std::process::exit(2);
        }
    };
    serve_on(sock, args, None)
}

/// The terminal sends Ctrl-C's SIGINT (and SIGQUIT, and SIGHUP on hang-up) to the whole
/// foreground process group, which the helper shares with the engine so that a container
/// reading the terminal is not a background job. The engine decides what such a signal means
/// for its containers (SIGTERM, a grace period, SIGKILL); the helper must outlive it to carry
/// that out, so it ignores them. Containers' inits restore the defaults.
pub(crate) fn ignore_terminal_signals() {
    sys::ignore_signals(&[Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP]);
}

/// [`serve`] on a connected socket: also the entry of a helper forked by
/// [`crate::prefork_helper`], which never executes the program again.
pub(crate) fn serve_on<S: AsRef<std::ffi::OsStr>>(
    sock: OwnedFd,
    args: &[S],
    jit_memory: Option<OwnedFd>,
) -> ! {
    sys::set_process_title(PROCESS_TITLE);
    ignore_terminal_signals();
    let (Some(state_root), Some(mode)) = (
        args.first().map(|a| a.as_ref()),
        args.get(1).map(|a| a.as_ref()),
    ) else {
        eprintln!("cairn runtime helper: usage: {RUNTIME_HELPER_ARG} STATE_ROOT MODE");
        std::process::exit(2);
    };
    let mode = mode.to_str().unwrap_or_default();
    let rootless = mode != "root" && mode != "root-host-cgroups";
    let state_root = PathBuf::from(state_root);
    // A rootless helper's cgroup view needs a cgroup namespace too; it is made with the mount
    // namespace so that the cgroup2 mounted in it shows the helper's own cgroup as its root.
    let namespace = private_mount_namespace(if rootless {
        nix::sched::CloneFlags::CLONE_NEWCGROUP
    } else {
        nix::sched::CloneFlags::empty()
    });
    let scratch = namespace
        .map_err(|e| format!("a mount namespace of its own: {e}"))
        .and_then(|()| private_scratch(&state_root));
    let view = match (&scratch, mode) {
        (Err(_), _) | (_, "root-host-cgroups") => Ok(()),
        (_, "root") => no_cgroup_view(),
        _ => own_cgroup_view(),
    };
    let no_cgroups = mode == "root" && scratch.is_ok() && view.is_ok();
    if let Err(e) = view {
        // Containers still run; libcgroups then works on the host's hierarchies, which
        // fails for a plain user (it says so when a container is created).
        warn!("runtime helper: no cgroup view of its own: {e}");
    }
    // Kept open until the helper exits: see its doc.
    let _jit_memory = jit_memory.or_else(|| {
        sys::socket_holding_jit_memory()
            .map_err(|e| debug!("runtime helper: no BPF program to hold JIT memory: {e}"))
            .ok()
    });
    let containers_root = match &scratch {
        Ok(dir) if no_cgroups => dir.clone(),
        _ => state_root.clone(),
    };
    let mut server = Server {
        containers_root,
        scratch,
        state_root,
        host_cgroups: mode == "root-host-cgroups",
        no_cgroups,
        seccomp: None,
        rootless,
        single_id: mode == "rootless-single",
        running: HashMap::new(),
    };
    // Every container gets this profile: have its program ready (from the store's cache, or
    // compiled) while the engine still prepares the first container's snapshot, instead of
    // after its request arrives.
    if let Err(e) = server.seccomp_program(crate::seccomp::default_profile()) {
        debug!("runtime helper: seccomp filter not prepared ahead: {e}");
    }
    let mut buf = Vec::new();
    loop {
        let ids: Vec<String> = server.running.keys().cloned().collect();
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            ids.iter()
                .map(|id| PollFd::new(server.running[id].pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("cairn runtime helper: poll: {e}");
                server.shutdown();
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        for (id, _) in ids.iter().zip(&ready[1..]).filter(|(_, r)| **r) {
            server.finish(sock.as_fd(), id);
        }
        if ready[0] {
            match proto::recv::<Request>(sock.as_fd(), &mut buf) {
                Ok(Some((request, fds))) => server.handle(sock.as_fd(), request, fds),
                Ok(None) => server.shutdown(),
                Err(e) => {
                    eprintln!("cairn runtime helper: {e}");
                    server.shutdown();
                }
            }
        }
    }
}

/// A mount namespace of the helper's own (with the namespaces in `also`), every mount in it
/// private: nothing the helper mounts or detaches reaches the host, and back.
fn private_mount_namespace(also: nix::sched::CloneFlags) -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    // A rootless helper has a mount namespace of its own from `init` already; for root this
    // is the first one.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | also)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// No cgroup hierarchy at all, for root containers without limits: in the helper's own mount
/// namespace, the host's hierarchies are detached and an empty read-only tmpfs takes
/// their place. libcgroups then finds no controller mounted and has nothing to do, where a
/// cgroup of its own per container cost a directory, and moving the container's first
/// process into it a wait for an RCU grace period (6–10 ms here) on every start: crun
/// avoids that with `CLONE_INTO_CGROUP`, which libcontainer does not use. Such a cgroup
/// would hold no limit, and the pid namespace already ends every process of a container
/// with its init. (A rootless helper cannot detach the host's mounts; it uses
/// [`own_cgroup_view`].)
fn no_cgroup_view() -> nix::Result<()> {
    use nix::mount::{mount, umount2, MntFlags, MsFlags};
    match umount2("/sys/fs/cgroup", MntFlags::MNT_DETACH) {
        // Not a mount point on this host: nothing to detach.
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e),
    }
    mount(
        Some("tmpfs"),
        "/sys/fs/cgroup",
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=755"),
    )
}

/// Deletes a container's libcontainer state or bundle directory, if it is there.
fn remove_directory(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(path = %dir.display(), error = %e, "remove container directory");
        }
    }
}

/// A tmpfs seen only in the helper's mount namespace, for what a container's start writes and
/// nobody reads after it: the bundle (`config.json`, which holds the environment and so any
/// secret in it, and the root mount point), and, for a helper that makes no cgroups,
/// libcontainer's state of each container. On the store's disk these were 7 of the 24 inodes
/// a `cairn exec` allocated, and on an ext4 without a journal (this project's hosts)
/// allocating an inode walks past every inode freed in the last minutes. The tmpfs dies with
/// the helper, and so do its containers (their inits' parent-death signal); containers with
/// cgroups keep their state in the store, where the next engine finds it to delete a dead
/// helper's cgroups.
fn private_scratch(state_root: &Path) -> Result<PathBuf, String> {
    use nix::mount::{mount, MsFlags};
    let dir = state_root.join(".live");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    mount(
        Some("tmpfs"),
        &dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=700,size=32m"),
    )
    .map_err(|e| format!("mount tmpfs on {}: {e}", dir.display()))?;
    Ok(dir)
}

/// cgroup2 mounted over `/sys/fs/cgroup` in the helper's own mount and cgroup namespaces, for
/// rootless helpers. libcgroups then sees a unified hierarchy: a plain user
/// may not write it and libcgroups leaves it alone, instead of failing on the host's v1
/// hierarchies (libcontainer-facts: "no flag skips it"). Where the host delegates a cgroup2
/// subtree to the user, containers get a cgroup there.
fn own_cgroup_view() -> nix::Result<()> {
    use nix::mount::{mount, MsFlags};
    mount(
        Some("cgroup2"),
        "/sys/fs/cgroup",
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
}

impl Server {
    fn handle(&mut self, sock: BorrowedFd<'_>, request: Request, fds: Vec<OwnedFd>) {
        let reply = match request {
            Request::Create { seq, id, config } => match self.create(&id, *config, fds) {
                Ok(pid) => {
                    let created = Reply::Created {
                        seq,
                        pid: pid.as_raw(),
                    };
                    if let Err(e) = proto::send(sock, &created, &[]) {
                        eprintln!("cairn runtime helper: cannot answer: {e}");
                        self.shutdown();
                    }
                    self.remove_start_files(&id);
                    return;
                }
                Err(message) => Reply::Failed { seq, message },
            },
            Request::Signal { seq, id, signal } => match self.signal(&id, signal) {
                Ok(()) => Reply::Done { seq },
                Err(message) => Reply::Failed { seq, message },
            },
            Request::Reap { seq, id } => match self.reap_stale(&id) {
                Ok(()) => Reply::Done { seq },
                Err(message) => Reply::Failed { seq, message },
            },
        };
        if let Err(e) = proto::send(sock, &reply, &[]) {
            eprintln!("cairn runtime helper: cannot answer: {e}");
            self.shutdown();
        }
    }

    /// Where container `id`'s bundle is written: on the scratch tmpfs, next to (not in)
    /// libcontainer's state directories, which must not exist before it makes them.
    fn bundle(&self, id: &str) -> Result<PathBuf, String> {
        match &self.scratch {
            Ok(dir) => Ok(dir.join(format!("bundle-{id}"))),
            Err(e) => Err(format!("the runtime helper has no private tmpfs: {e}")),
        }
    }

    fn create(
        &mut self,
        id: &str,
        config: ContainerConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<Pid, String> {
        if self.running.contains_key(id) {
            return Err(format!("container {id} exists already"));
        }
        let bundle = self.bundle(id)?;
        let created = self.create_in(id, &bundle, config, fds);
        if created.is_err() {
            remove_directory(&bundle);
        }
        created
    }

    fn create_in(
        &mut self,
        id: &str,
        bundle: &Path,
        config: ContainerConfig,
        fds: Vec<OwnedFd>,
    ) -> Result<Pid, String> {
        let [stdin, stdout, stderr]: [OwnedFd; 3] = fds
            .try_into()
            .map_err(|fds: Vec<OwnedFd>| format!("expected 3 stdio fds, got {}", fds.len()))?;
        let rootfs = bundle.join("rootfs");
        std::fs::create_dir_all(&rootfs)
            .map_err(|e| format!("create {}: {e}", rootfs.display()))?;
        let netns = match config.network {
            Network::None => Some(new_loopback_netns()?),
            Network::Host => None,
        };
        let ctx = SpecContext {
            rootless: self.rootless,
            single_id: self.single_id,
            cgroups_path: format!("/cairn/{id}"),
            netns_path: netns.as_ref().map(|(_, path)| path.clone()),
            device_rules: self.host_cgroups && Path::new("/sys/fs/cgroup/devices/tasks").exists(),
        };
        let mut spec = build_spec(&config, &ctx).map_err(|e| e.to_string())?;
        // The reaper changes into the working directory itself, creating it if missing as
        // Docker does; libcontainer would fail on a missing one.
        if let Some(process) = spec.process_mut() {
            process.set_cwd("/".into());
        }
        // The reaper installs the seccomp filter, compiled once here, instead of libcontainer
        // compiling the same profile in every container.
        let profile = spec
            .linux_mut()
            .as_mut()
            .and_then(|l| l.seccomp_mut().take());
        let seccomp = profile.map(|p| self.seccomp_program(p)).transpose()?;
        let config_path = bundle.join("config.json");
        spec.save(&config_path)
            .map_err(|e| format!("write {}: {e}", config_path.display()))?;
        let executor = ReaperExecutor {
            cwd: config.cwd.clone(),
            tty: config.tty,
            seccomp,
        };
        let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_root_path(&self.containers_root)
            .map_err(|e| format!("state directory {}: {e}", self.containers_root.display()))?
            .with_executor(executor)
            .with_stdin(stdin)
            .with_stdout(stdout)
            .with_stderr(stderr)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build();
        let mut container = match built {
            Ok(c) => c,
            Err(e) => {
                self.remove_state(id);
                return Err(format!("create container: {e}"));
            }
        };
        drop(netns);
        if let Err(e) = container.start() {
            let _ = container.delete(true);
            self.remove_state(id);
            return Err(format!("start container: {e}"));
        }
        let pid = container
            .pid()
            .map(|p| Pid::from_raw(p.as_raw()))
            .ok_or_else(|| "libcontainer reported no pid".to_owned())?;
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = container.delete(true);
                return Err(format!("watch container init {pid}: {e}"));
            }
        };
        debug!(id, %pid, "container started");
        self.running.insert(
            id.to_owned(),
            Running {
                pid,
                pidfd,
                container,
            },
        );
        Ok(pid)
    }

    /// The BPF program of `profile`: the one compiled before when the profile is the same.
    fn seccomp_program(
        &mut self,
        profile: oci_spec::runtime::LinuxSeccomp,
    ) -> Result<std::sync::Arc<Vec<u8>>, String> {
        if let Some((compiled_profile, program)) = &self.seccomp {
            if *compiled_profile == profile {
                return Ok(program.clone());
            }
        }
        let program = std::sync::Arc::new(self.compiled_filter(&profile)?);
        self.seccomp = Some((profile, program.clone()));
        Ok(program)
    }

    /// The profile compiled to BPF, from a cache next to the state directories when an
    /// earlier helper compiled the same profile (each `cairn exec` starts a fresh helper, and
    /// compiling costs more than the rest of a container's start).
    fn compiled_filter(
        &self,
        profile: &oci_spec::runtime::LinuxSeccomp,
    ) -> Result<Vec<u8>, String> {
        use sha2::Digest as _;
        let text = serde_json::to_vec(profile).map_err(|e| format!("seccomp profile: {e}"))?;
        let mut hasher = sha2::Sha256::new();
        hasher.update(b"cairn-seccomp-bpf-v2-binary-tree\0");
        hasher.update(std::env::consts::ARCH.as_bytes());
        hasher.update(format!("{:?}", libseccomp::ScmpVersion::current().ok()).as_bytes());
        hasher.update(&text);
        let dir = self.state_root.join(".seccomp");
        let path = dir.join(format!("{}.bpf", hex::encode(hasher.finalize())));
        if let Ok(bytes) = std::fs::read(&path) {
            if !bytes.is_empty() && bytes.len() % 8 == 0 {
                return Ok(bytes);
            }
        }
        let bytes = crate::seccomp::compile(profile, crate::seccomp::FilterLayout::BinaryTree)?;
        // Best effort: write-then-rename so a reader sees all of it or nothing.
        let temp = dir.join(format!(".{}.tmp", std::process::id()));
        let written = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&temp, &bytes))
            .and_then(|_| std::fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temp);
            debug!(path = %path.display(), error = %e, "cannot cache compiled seccomp filter");
        }
        Ok(bytes)
    }

    fn signal(&mut self, id: &str, signal: i32) -> Result<(), String> {
        let running = self
            .running
            .get(id)
            .ok_or_else(|| format!("no running container {id}"))?;
        let signal = Signal::try_from(signal).map_err(|e| format!("signal {signal}: {e}"))?;
        match nix::sys::signal::kill(running.pid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(format!("signal container {id}: {e}")),
        }
    }

    /// The container's init exited: collect its status, delete its state, report.
    fn finish(&mut self, sock: BorrowedFd<'_>, id: &str) {
        let Some(mut running) = self.running.remove(id) else {
            return;
        };
        let status = loop {
            match waitpid(running.pid, None) {
                Ok(WaitStatus::Exited(_, code)) => break ExitStatus::Code(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => break ExitStatus::Signal(signal as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    warn!(id, error = %e, "waitpid on container init");
                    break ExitStatus::Signal(Signal::SIGKILL as i32);
                }
            }
        };
        // Without cgroups nothing is left to delete: no cgroup was made, no hooks are set, and
        // the state directory went once the container had started (`remove_start_files`).
        // libcontainer's delete would look for the cgroup anyway, reading mountinfo once per
        // controller through freshly verified procfs handles: a millisecond here, after every
        // container.
        if !self.no_cgroups {
            if let Err(e) = running.container.delete(true) {
                warn!(id, error = %e, "delete container state");
                self.remove_state(id);
            }
        }
        debug!(id, ?status, "container exited");
        if let Err(e) = proto::send(
            sock,
            &Reply::Exited {
                id: id.to_owned(),
                status,
            },
            &[],
        ) {
            eprintln!("cairn runtime helper: cannot report exit: {e}");
            self.shutdown();
        }
    }

    /// A container whose engine died: kill whatever is left of it and delete its state.
    /// (Such state is in the store's `state_root`: a helper's private tmpfs dies with it.)
    fn reap_stale(&mut self, id: &str) -> Result<(), String> {
        let dir = self.state_root.join(id);
        if !dir.exists() {
            return Ok(());
        }
        match Container::load(dir.clone()) {
            Ok(mut container) => {
                if let Some(pid) = container.pid() {
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid.as_raw()), Signal::SIGKILL);
                }
                if let Err(e) = container.delete(true) {
                    debug!(id, error = %e, "delete stale container");
                }
            }
            Err(e) => debug!(id, error = %e, "load stale container"),
        }
        remove_directory(&dir);
        Ok(())
    }

    /// Deletes, once a container runs, what only its start read: the bundle (`config.json`,
    /// which holds the container's environment, secrets included, and the empty root mount
    /// point), and, where the helper makes no cgroups, libcontainer's state (with no cgroup
    /// a container is its init's pid, which dies with the helper through its parent-death
    /// signal: nothing reads that state again). The container runs meanwhile, so these
    /// unlinks no longer come between its exit and the engine learning of it.
    fn remove_start_files(&self, id: &str) {
        if let Ok(bundle) = self.bundle(id) {
            remove_directory(&bundle);
        }
        if self.no_cgroups {
            self.remove_state(id);
        }
    }

    fn remove_state(&self, id: &str) {
        remove_directory(&self.containers_root.join(id));
    }

    /// The engine is gone: kill every container, delete their state, exit.
    fn shutdown(&mut self) -> ! {
        for (id, mut running) in self.running.drain() {
            let _ = nix::sys::signal::kill(running.pid, Signal::SIGKILL);
            let _ = waitpid(running.pid, None);
            if running.container.delete(true).is_err() {
                let _ = std::fs::remove_dir_all(self.containers_root.join(&id));
            }
        }
        std::process::exit(0)
    }
}

/// A new network namespace with loopback up, held by an open descriptor. It is made in a
/// forked child because a rootless helper could not return to the host's namespace after
/// `unshare`; the child exits once the descriptor is open.
fn new_loopback_netns() -> Result<(std::fs::File, PathBuf), String> {
    let (read, write) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let child = match sys::fork_single_threaded().map_err(|e| format!("fork: {e}"))? {
        sys::Forked::Child => {
            drop(read);
            let status: u8 = match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .and_then(|_| sys::loopback_up())
            {
                Ok(()) => 0,
                Err(e) => e as i32 as u8,
            };
            let _ = nix::unistd::write(&write, &[status]);
            // Wait until the parent has opened the namespace and killed us.
            std::thread::sleep(std::time::Duration::from_secs(60));
            sys::exit_now(0)
        }
        sys::Forked::Parent(child) => child,
    };
    drop(write);
    let mut status = [255u8];
    let got = nix::unistd::read(&read, &mut status);
    let result = match (got, status[0]) {
        (Ok(1), 0) => {
            let ns = std::fs::File::open(format!("/proc/{child}/ns/net"))
                .map_err(|e| format!("open network namespace: {e}"));
            ns.map(|f| {
                use std::os::fd::AsRawFd;
                let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
                (f, path)
            })
        }
        (Ok(1), errno) => Err(format!(
            "new network namespace: {}",
            nix::errno::Errno::from_raw(errno as i32)
        )),
        _ => Err("new network namespace: helper child died".into()),
    };
    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
    let _ = waitpid(child, None);
    result
}
