use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use tracing::debug;

use crate::{IdMapping, RuntimeError};

/// Set in a helper's environment; [`init`] acts only when it is present.
pub const HELPER_ENV: &str = "_CAIRN_USERNS_HELPER";

const READY: &str = "cairn-userns-ready";
const MAPPED: &str = "cairn-userns-mapped";

/// Call first thing in `main`, before any thread starts. In an ordinary process it does
/// nothing. In a process started by [`spawn_in_user_namespace`] it enters a new user namespace
/// (and a mount namespace of its own), tells the parent so over stdout, and waits on stdin until
/// the parent has written the id mapping; it then returns as root of that namespace and the
/// program goes on to serve whatever the parent asked for.
pub fn init() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    // Still single-threaded here, when changing the environment is sound; removing the
    // variable keeps it out of anything the helper itself starts.
    std::env::remove_var(HELPER_ENV);
    let entered = enter_user_namespace(
        |line| {
            let mut out = std::io::stdout();
            writeln!(out, "{line}").and_then(|_| out.flush())
        },
        || {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            Ok(line)
        },
    );
    if let Err(e) = entered {
        let _ = writeln!(std::io::stdout(), "error: {e}");
        std::process::exit(125);
    }
}

/// The helper's half of the start-up handshake: enter a new user namespace (and a mount
/// namespace of its own) dying with the parent, say so with `say`, wait until `hear` brings
/// word that the parent wrote the id mapping, and become root of the namespace. The process
/// must be single-threaded (the kernel refuses `unshare(CLONE_NEWUSER)` otherwise).
pub(crate) fn enter_user_namespace(
    say: impl FnOnce(&str) -> std::io::Result<()>,
    hear: impl FnOnce() -> std::io::Result<String>,
) -> Result<(), String> {
    // Die with the parent: a helper left behind would hold the store.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("set parent-death signal: {e}"))?;
    use nix::sched::CloneFlags;
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare user and mount namespaces: {e}"))?;
    say(READY).map_err(|e| format!("tell the parent: {e}"))?;
    match hear() {
        Ok(line) if line.trim() == MAPPED => {}
        // The parent could not map us (it said why on its side) or went away.
        _ => return Err("the parent did not map the namespace's ids".into()),
    }
    // Become root in full: the uid is mapped to 0 already, make the gid match too.
    let root = nix::unistd::Gid::from_raw(0);
    let _ = nix::unistd::setresgid(root, root, root);
    let _ = nix::unistd::setresuid(0.into(), 0.into(), 0.into());
    Ok(())
}

/// A helper running inside its own user namespace, with its stdin and stdout for the caller's
/// protocol.
#[derive(Debug)]
pub struct UsernsChild {
    /// The process; dropping it does not kill it, but closing `stdin` makes a well-behaved
    /// helper exit.
    pub child: Child,
    /// Requests go here.
    pub stdin: ChildStdin,
    /// Responses come from here.
    pub stdout: BufReader<ChildStdout>,
    /// Keeps the thread that started the helper alive (see [`spawn_in_user_namespace`]).
    _parent_thread: std::sync::mpsc::Sender<()>,
}

/// Starts `command` (a program that calls [`init`] first) in a new user namespace with
/// `mapping`, and waits until it runs as root there.
///
/// The helper is killed when its parent dies, so that a killed engine leaves no helper writing
/// into the store. The kernel ties that signal to the parent *thread*, and callers often run on
/// pool threads that come and go; so the helper is started from a thread of its own that lives
/// exactly as long as the returned [`UsernsChild`].
pub fn spawn_in_user_namespace(
    command: Command,
    mapping: &IdMapping,
) -> Result<UsernsChild, RuntimeError> {
    let (result_tx, result_rx) = std::sync::mpsc::channel();
    let (keep_tx, keep_rx) = std::sync::mpsc::channel::<()>();
    let mapping = mapping.clone();
    let program = command.get_program().to_string_lossy().into_owned();
    std::thread::Builder::new()
        .name("cairn-userns-parent".into())
        .spawn(move || {
            let started = spawn_here(command, &mapping);
            let ok = started.is_ok();
            let _ = result_tx.send(started);
            if ok {
                // Returns when the UsernsChild (the only sender) is dropped.
                let _ = keep_rx.recv();
            }
        })
        .map_err(|source| RuntimeError::Spawn {
            program: program.clone(),
            source,
        })?;
    let (child, stdin, stdout) = result_rx.recv().map_err(|_| RuntimeError::Handshake {
        pid: 0,
        reason: "the thread starting the helper died".into(),
    })??;
    Ok(UsernsChild {
        child,
        stdin,
        stdout,
        _parent_thread: keep_tx,
    })
}

type Started = (Child, ChildStdin, BufReader<ChildStdout>);

/// The parent's half of the start-up handshake with a helper that called [`init`]: wait for
/// it to be in its new namespace, write its id mapping (checking `newuidmap`'s verdict), and
/// let it go on.
pub(crate) fn map_after_ready(
    pid: u32,
    mapping: &IdMapping,
    read_line: impl FnOnce() -> std::io::Result<String>,
    write_line: impl FnOnce(&str) -> std::io::Result<()>,
) -> Result<(), RuntimeError> {
    let handshake = |reason: String| RuntimeError::Handshake { pid, reason };
    let line = read_line().map_err(|e| handshake(e.to_string()))?;
    if line.trim() != READY {
        let said = line.trim();
        return Err(handshake(if said.is_empty() {
            "it exited before entering its namespace (does the program call cairn's init hook first in main?)".into()
        } else {
            said.to_owned()
        }));
    }
    mapping.apply_to(pid)?;
    write_line(&format!("{MAPPED}\n")).map_err(|e| handshake(e.to_string()))
}

fn spawn_here(mut command: Command, mapping: &IdMapping) -> Result<Started, RuntimeError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .env(HELPER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Spawn { program, source })?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let read_line = || -> std::io::Result<String> {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        Ok(line)
    };
    let write_line = |line: &str| stdin.write_all(line.as_bytes());
    if let Err(e) = map_after_ready(pid, mapping, read_line, write_line) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    debug!(pid, %mapping, "user namespace helper started");
    Ok((child, stdin, stdout))
}
