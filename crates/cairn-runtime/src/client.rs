//! The engine's side of the runtime helper: [`Runtime`] starts the helper on first use and
//! turns its messages into futures, so any number of tasks can run containers at once.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::sync::oneshot;
use tracing::debug;

use crate::config::ContainerConfig;
use crate::helper::{PARENT_ENV, RUNTIME_HELPER_ARG};
use crate::prefork::Preforked;
use crate::proto::{self, Reply, Request};
use crate::{ExitStatus, IdMapping, RuntimeError};

/// How to start the runtime helper.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// A program that calls cairn's init hook first in `main` (the `cairn` binary, or the
    /// embedding program itself).
    pub program: PathBuf,
    /// libcontainer's state root: one directory per running container.
    pub state_root: PathBuf,
    /// `None` when running as real root; the store's id mapping for a rootless store, in
    /// which case the helper runs inside a user namespace with that mapping.
    pub mapping: Option<IdMapping>,
}

/// A container's stdio, handed to its process as they are (no copying through the engine).
#[derive(Debug)]
pub struct ContainerStdio {
    /// Standard input (`/dev/null` when the caller has none to give).
    pub stdin: OwnedFd,
    /// Standard output.
    pub stdout: OwnedFd,
    /// Standard error.
    pub stderr: OwnedFd,
}

/// A started container.
#[derive(Debug)]
pub struct Started {
    /// Its init's pid, in the engine's pid namespace.
    pub pid: i32,
    /// Resolves when it has exited and its runtime state is deleted.
    pub exit: ExitWaiter,
}

/// The exit of one container.
#[derive(Debug)]
pub struct ExitWaiter(oneshot::Receiver<Result<ExitStatus, String>>);

impl ExitWaiter {
    /// Waits for the container to exit.
    pub async fn wait(self) -> Result<ExitStatus, RuntimeError> {
        match self.0.await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(reason)) => Err(RuntimeError::HelperDied { reason }),
            Err(_) => Err(RuntimeError::HelperDied {
                reason: "the runtime helper stopped answering".into(),
            }),
        }
    }
}

#[derive(Default)]
struct Pending {
    replies: HashMap<u64, oneshot::Sender<Reply>>,
    exits: HashMap<String, oneshot::Sender<Result<ExitStatus, String>>>,
    /// Set once the helper is gone; every later request fails with it.
    dead: Option<String>,
}

struct Shared {
    sock: OwnedFd,
    send_lock: Mutex<()>,
    pending: Mutex<Pending>,
    seq: AtomicU64,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The helper sees end-of-file, kills what still runs and exits.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
}

/// Where a helper sees cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum CgroupView {
    /// A cgroup namespace of its own with cgroup2 mounted over `/sys/fs/cgroup`: libcgroups
    /// makes (as root) a cheap cgroup in the unified hierarchy, or (rootless) skips what it
    /// may not write — instead of a directory in each of a v1 host's dozen hierarchies.
    Own,
    /// The host's hierarchies, for root containers with limits.
    Host,
}

/// Containers through runtime helpers, started on first use; cheap to clone.
///
/// Most containers go to a helper with its own cgroup view (see `CgroupView`): on this
/// project's cgroup v1 hosts that saves 15–25 ms per container. A root container that asks
/// for limits goes to a second helper that sees the host's hierarchies.
#[derive(Clone)]
pub struct Runtime {
    options: Arc<RuntimeOptions>,
    own: Arc<HelperSlot>,
    host: Arc<HelperSlot>,
    /// Which helper runs each container this handle created.
    placed: Arc<Mutex<HashMap<String, CgroupView>>>,
}

/// One helper of a [`Runtime`]: its connection once it serves, and its start until then.
#[derive(Default)]
struct HelperSlot {
    connection: tokio::sync::OnceCell<Connection>,
    start: Mutex<Start>,
}

/// Where a helper's start stands.
#[derive(Default)]
enum Start {
    /// Not begun.
    #[default]
    Idle,
    /// Begun ahead of time by [`Runtime::start_helper_for`]; the first user waits for it.
    Running(oneshot::Receiver<Result<Connection, RuntimeError>>),
    /// Waited for by a user: later starts (after a failure) begin anew on demand.
    Claimed,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").finish_non_exhaustive()
    }
}

impl Runtime {
    /// A runtime whose helpers start when first needed.
    pub fn new(options: RuntimeOptions) -> Runtime {
        Runtime {
            options: Arc::new(options),
            own: Arc::default(),
            host: Arc::default(),
            placed: Arc::default(),
        }
    }

    fn slot(&self, view: CgroupView) -> &HelperSlot {
        match view {
            CgroupView::Own => &self.own,
            CgroupView::Host => &self.host,
        }
    }

    /// Starts the helper for `view` now, on threads of its own: an async task would wait
    /// until the caller next yields, which with a single-threaded tokio runtime is only when
    /// the container is created.
    fn begin_start(&self, view: CgroupView) -> oneshot::Receiver<Result<Connection, RuntimeError>> {
        let options = (*self.options).clone();
        // A forked helper gets its role first, and sets itself up (its mount namespace, a
        // user namespace) while the thread that talks to it starts.
        let preforked = crate::prefork::take().map(|p| assign_role(p, &options, view));
        Connection::begin(options, view, preforked)
    }

    async fn connection(&self, view: CgroupView) -> Result<&Connection, RuntimeError> {
        let slot = self.slot(view);
        slot.connection
            .get_or_try_init(|| async {
                let begun = std::mem::replace(
                    &mut *slot.start.lock().unwrap_or_else(|p| p.into_inner()),
                    Start::Claimed,
                );
                let start = match begun {
                    Start::Running(start) => start,
                    Start::Idle | Start::Claimed => self.begin_start(view),
                };
                start.await.map_err(|_| RuntimeError::HelperDied {
                    reason: "the thread starting the runtime helper died".into(),
                })?
            })
            .await
    }

    fn view_for(&self, config: &ContainerConfig) -> CgroupView {
        self.view_for_resources(&config.resources)
    }

    fn view_for_resources(&self, resources: &crate::Resources) -> CgroupView {
        if self.options.mapping.is_none() && resources.any() {
            CgroupView::Host
        } else {
            CgroupView::Own
        }
    }

    /// Starts, in the background, the helper that a container asking for `resources` will
    /// run in, so that its start (a user namespace's id mapping, for a rootless store)
    /// overlaps whatever the caller prepares meanwhile. [`Runtime::create`] waits for it, and
    /// reports its failure.
    pub fn start_helper_for(&self, resources: &crate::Resources) {
        let view = self.view_for_resources(resources);
        let slot = self.slot(view);
        if slot.connection.initialized() {
            return;
        }
        let mut start = slot.start.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(*start, Start::Idle) {
            *start = Start::Running(self.begin_start(view));
        }
    }

    /// Creates and starts the container `id`. (The helper writes its bundle where only the
    /// helper sees it, and deletes it once the container runs.)
    pub async fn create(
        &self,
        id: &str,
        config: ContainerConfig,
        stdio: ContainerStdio,
    ) -> Result<Started, RuntimeError> {
        let view = self.view_for(&config);
        let started = self
            .connection(view)
            .await?
            .create(id, config, stdio)
            .await?;
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), view);
        Ok(started)
    }

    /// Sends `signal` to the container's init (which forwards it to the command).
    pub async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let view = self
            .placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
            .unwrap_or(CgroupView::Own);
        self.connection(view).await?.signal(id, signal).await
    }

    /// Kills and deletes the runtime state of a container that a dead engine left behind;
    /// `had_limits` says whether it asked for cgroup limits (and so lived in the host's
    /// hierarchies, where its cgroups must be removed).
    pub async fn reap(&self, id: &str, had_limits: bool) -> Result<(), RuntimeError> {
        let view = if had_limits && self.options.mapping.is_none() {
            CgroupView::Host
        } else {
            CgroupView::Own
        };
        self.connection(view).await?.reap(id).await
    }

    /// Forgets where a container ran once it has exited.
    pub fn forget(&self, id: &str) {
        self.placed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// One runtime helper.
struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// Starts the helper; the receiver gets the connection once the helper serves.
    ///
    /// The helper is started from a thread of its own that lives as long as the helper: the
    /// kernel ties the parent-death signal to the parent *thread*, and the thread also reads
    /// the helper's messages. Nothing here waits for that thread: an async caller awaits the
    /// receiver, and the caller's thread goes on at once.
    ///
    /// `preforked` is the forked helper, if there is one, with its role sent already.
    fn begin(
        options: RuntimeOptions,
        view: CgroupView,
        preforked: Option<Result<Preforked, RuntimeError>>,
    ) -> oneshot::Receiver<Result<Connection, RuntimeError>> {
        let (tx, rx) = oneshot::channel();
        // Shared with the thread, so that a failure before or of the thread's start is
        // reported the same way as one in it.
        let tx = Arc::new(Mutex::new(Some(tx)));
        let report = move |result: Result<Connection, RuntimeError>| {
            if let Some(tx) = tx.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = tx.send(result);
            }
        };
        if let Err(e) = Self::start_thread(options, view, preforked, report.clone()) {
            report(Err(e));
        }
        rx
    }

    /// Starts the thread that launches the helper, hands `report` the connection, and then
    /// reads the helper's messages.
    fn start_thread(
        options: RuntimeOptions,
        view: CgroupView,
        preforked: Option<Result<Preforked, RuntimeError>>,
        report: impl FnOnce(Result<Connection, RuntimeError>) + Send + 'static,
    ) -> Result<(), RuntimeError> {
        let preforked = preforked.transpose()?;
        let program = match &preforked {
            Some(p) => format!("forked runtime helper {}", p.pid),
            None => options.program.display().to_string(),
        };
        let spawn_err = |source| RuntimeError::Spawn {
            program: program.clone(),
            source,
        };
        let (ours, launch) = match preforked {
            Some(p) => (p.sock.try_clone().map_err(spawn_err)?, Launch::Preforked(p)),
            None => {
                let (ours, theirs) = socketpair(
                    AddressFamily::Unix,
                    SockType::SeqPacket,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(|e| spawn_err(e.into()))?;
                (ours, Launch::Spawn(theirs))
            }
        };
        let reader_sock = ours.try_clone().map_err(spawn_err)?;
        let shared = Arc::new(Shared {
            sock: ours,
            send_lock: Mutex::new(()),
            pending: Mutex::new(Pending::default()),
            seq: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("cairn-runtime".into())
            .spawn(move || {
                let child = match launch_helper(&options, view, launch, reader_sock.as_fd()) {
                    Ok(child) => {
                        report(Ok(Connection { shared }));
                        child
                    }
                    Err(e) => {
                        report(Err(e));
                        return;
                    }
                };
                read_loop(reader_sock, weak, child);
            })
            .map_err(spawn_err)?;
        Ok(())
    }

    fn next_seq(&self) -> u64 {
        self.shared.seq.fetch_add(1, Ordering::Relaxed)
    }

    async fn call(
        &self,
        seq: u64,
        request: &Request,
        fds: &[std::os::fd::RawFd],
    ) -> Result<Reply, RuntimeError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(reason) = &pending.dead {
                return Err(RuntimeError::HelperDied {
                    reason: reason.clone(),
                });
            }
            pending.replies.insert(seq, tx);
        }
        {
            let _guard = self
                .shared
                .send_lock
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            proto::send(self.shared.sock.as_fd(), request, fds).map_err(|e| {
                RuntimeError::HelperDied {
                    reason: format!("cannot send to the runtime helper: {e}"),
                }
            })?;
        }
        rx.await.map_err(|_| RuntimeError::HelperDied {
            reason: self.death_reason(),
        })
    }

    fn death_reason(&self) -> String {
        let pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending
            .dead
            .clone()
            .unwrap_or_else(|| "the runtime helper stopped answering".into())
    }

    async fn create(
        &self,
        id: &str,
        config: ContainerConfig,
        stdio: ContainerStdio,
    ) -> Result<Started, RuntimeError> {
        let seq = self.next_seq();
        let (exit_tx, exit_rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .exits
            .insert(id.to_owned(), exit_tx);
        let request = Request::Create {
            seq,
            id: id.to_owned(),
            config: Box::new(config),
        };
        let fds = [
            stdio.stdin.as_raw_fd(),
            stdio.stdout.as_raw_fd(),
            stdio.stderr.as_raw_fd(),
        ];
        let reply = self.call(seq, &request, &fds).await;
        // The helper holds its own copies now.
        drop(stdio);
        let forget_exit = || {
            self.shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .exits
                .remove(id);
        };
        match reply {
            Ok(Reply::Created { pid, .. }) => Ok(Started {
                pid,
                exit: ExitWaiter(exit_rx),
            }),
            Ok(Reply::Failed { message, .. }) => {
                forget_exit();
                Err(RuntimeError::Create {
                    id: id.to_owned(),
                    message,
                })
            }
            Ok(other) => {
                forget_exit();
                Err(RuntimeError::HelperDied {
                    reason: format!("unexpected answer {other:?}"),
                })
            }
            Err(e) => {
                forget_exit();
                Err(e)
            }
        }
    }

    async fn signal(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let seq = self.next_seq();
        let request = Request::Signal {
            seq,
            id: id.to_owned(),
            signal,
        };
        self.expect_done(id, self.call(seq, &request, &[]).await)
    }

    async fn reap(&self, id: &str) -> Result<(), RuntimeError> {
        let seq = self.next_seq();
        let request = Request::Reap {
            seq,
            id: id.to_owned(),
        };
        self.expect_done(id, self.call(seq, &request, &[]).await)
    }

    fn expect_done(
        &self,
        id: &str,
        reply: Result<Reply, RuntimeError>,
    ) -> Result<(), RuntimeError> {
        match reply? {
            Reply::Done { .. } => Ok(()),
            Reply::Failed { message, .. } => Err(RuntimeError::Container {
                id: id.to_owned(),
                message,
            }),
            other => Err(RuntimeError::HelperDied {
                reason: format!("unexpected answer {other:?}"),
            }),
        }
    }
}

/// How a helper comes to be: the program executed with the helper's end of a new socket
/// pair, or the child that [`crate::prefork_helper`] forked, which holds its end already.
enum Launch {
    Spawn(OwnedFd),
    Preforked(crate::prefork::Preforked),
}

/// A running helper process.
enum HelperProcess {
    Spawned(std::process::Child),
    Forked(nix::unistd::Pid),
}

impl HelperProcess {
    fn pid(&self) -> u32 {
        match self {
            HelperProcess::Spawned(child) => child.id(),
            HelperProcess::Forked(pid) => pid.as_raw() as u32,
        }
    }

    fn kill(&mut self) {
        match self {
            HelperProcess::Spawned(child) => {
                let _ = child.kill();
            }
            HelperProcess::Forked(pid) => {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }

    /// Waits for it to exit; how it ended, for messages.
    fn wait(&mut self) -> String {
        match self {
            HelperProcess::Spawned(child) => match child.wait() {
                Ok(status) => status.to_string(),
                Err(e) => format!("wait: {e}"),
            },
            HelperProcess::Forked(pid) => loop {
                match nix::sys::wait::waitpid(*pid, None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                        break format!("exit status: {code}")
                    }
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, signal, _)) => {
                        break format!("signal: {signal}")
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break format!("wait: {e}"),
                }
            },
        }
    }
}

fn launch_helper(
    options: &RuntimeOptions,
    view: CgroupView,
    launch: Launch,
    ours: std::os::fd::BorrowedFd<'_>,
) -> Result<HelperProcess, RuntimeError> {
    let mode = helper_mode(options, view);
    let mut child = match launch {
        Launch::Spawn(theirs) => HelperProcess::Spawned(spawn_helper(options, mode, theirs)?),
        Launch::Preforked(preforked) => HelperProcess::Forked(preforked.pid),
    };
    if let Some(mapping) = &options.mapping {
        let pid = child.pid();
        let mut buf = [0u8; 512];
        let read_line = || -> std::io::Result<String> {
            let n = nix::unistd::read(ours, &mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let write_line = |line: &str| -> std::io::Result<()> {
            nix::unistd::write(ours, line.as_bytes())?;
            Ok(())
        };
        if let Err(e) = crate::userns::map_after_ready(pid, mapping, read_line, write_line) {
            child.kill();
            child.wait();
            return Err(e);
        }
    }
    debug!(pid = child.pid(), mode, "runtime helper started");
    Ok(child)
}

/// The helper's mode argument: which cgroups it sees and whether it is in a user namespace.
fn helper_mode(options: &RuntimeOptions, view: CgroupView) -> &'static str {
    match (&options.mapping, view) {
        (None, CgroupView::Own) => "root",
        (None, CgroupView::Host) => "root-host-cgroups",
        (Some(m), _) if m.is_full() => "rootless",
        (Some(_), _) => "rootless-single",
    }
}

/// Tells a forked helper what to serve; kills it if it cannot be told.
fn assign_role(
    preforked: Preforked,
    options: &RuntimeOptions,
    view: CgroupView,
) -> Result<Preforked, RuntimeError> {
    let role = crate::prefork::Role {
        state_root: options.state_root.clone(),
        mode: helper_mode(options, view).to_owned(),
        userns: options.mapping.is_some(),
    };
    if let Err(source) = crate::prefork::send_role(&preforked, &role) {
        let mut child = HelperProcess::Forked(preforked.pid);
        child.kill();
        child.wait();
        return Err(RuntimeError::Spawn {
            program: format!("forked runtime helper {}", preforked.pid),
            source,
        });
    }
    Ok(preforked)
}

/// Executes the program as a helper, the socket for its stdin and stdout.
fn spawn_helper(
    options: &RuntimeOptions,
    mode: &str,
    theirs: OwnedFd,
) -> Result<std::process::Child, RuntimeError> {
    let spawn_err = |source| RuntimeError::Spawn {
        program: options.program.display().to_string(),
        source,
    };
    let mut command = Command::new(&options.program);
    command
        .arg(RUNTIME_HELPER_ARG)
        .arg(&options.state_root)
        .arg(mode)
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::from(theirs.try_clone().map_err(spawn_err)?))
        .stdout(Stdio::from(theirs));
    if options.mapping.is_some() {
        command.env(crate::HELPER_ENV, "1");
    }
    command.spawn().map_err(spawn_err)
}

/// Dispatches the helper's messages until it goes away, then fails everything still waiting.
fn read_loop(sock: OwnedFd, shared: Weak<Shared>, mut child: HelperProcess) {
    let mut buf = Vec::new();
    let reason = loop {
        match proto::recv::<Reply>(sock.as_fd(), &mut buf) {
            Ok(Some((reply, _))) => {
                let Some(shared) = shared.upgrade() else {
                    break String::new();
                };
                let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                match reply {
                    Reply::Exited { id, status } => {
                        if let Some(tx) = pending.exits.remove(&id) {
                            let _ = tx.send(Ok(status));
                        }
                    }
                    Reply::Created { seq, .. }
                    | Reply::Done { seq }
                    | Reply::Failed { seq, .. } => {
                        if let Some(tx) = pending.replies.remove(&seq) {
                            let _ = tx.send(reply);
                        }
                    }
                }
            }
            Ok(None) => break "the runtime helper exited".to_owned(),
            Err(e) => break format!("reading from the runtime helper: {e}"),
        }
    };
    let status = child.wait();
    let reason = if reason.is_empty() {
        reason
    } else {
        format!("{reason} ({status})")
    };
    if let Some(shared) = shared.upgrade() {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.dead = Some(reason.clone());
        pending.replies.clear();
        for (_, tx) in pending.exits.drain() {
            let _ = tx.send(Err(reason.clone()));
        }
    }
}
