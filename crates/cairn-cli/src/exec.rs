//! `cairn exec`, `cairn ps` and `cairn kill`.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use cairn_containers::{Containers, ExecOptions, Volume};
use cairn_runtime::{ContainerStdio, Network, Resources};
use clap::{Args, ValueEnum};

/// `cairn exec` options, named as Docker's and podman's `run`.
#[derive(Args)]
#[command(trailing_var_arg = true)]
pub struct ExecArgs {
    /// Set an environment variable (KEY=value, or KEY to pass the caller's value).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Read environment variables from a file of KEY=value lines.
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User: uid[:gid] or a name from the image's /etc/passwd.
    #[arg(short, long)]
    user: Option<String>,
    /// Bind a host path: HOST:CONTAINER[:ro].
    #[arg(short, long = "volume", value_name = "HOST:CONTAINER[:ro]")]
    volume: Vec<Volume>,
    /// Mount an empty tmpfs at this path.
    #[arg(long, value_name = "PATH")]
    tmpfs: Vec<String>,
    /// Network: the host's, or a namespace with only loopback.
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    network: NetworkArg,
    /// Stop the container after this long (e.g. 30s, 5m; bare numbers are seconds).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    #[arg(long, default_value_t = 10)]
    stop_timeout: u64,
    /// Memory limit (bytes, or with k, m, g).
    #[arg(long, value_parser = parse_size)]
    memory: Option<u64>,
    /// Maximum number of processes.
    #[arg(long)]
    pids_limit: Option<i64>,
    /// CPU limit in cores (e.g. 1.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Keep stdin open and connect it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Replace the image's entrypoint (split on whitespace).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Image reference or manifest digest.
    image: String,
    /// The command and its arguments (default: the image's).
    command: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetworkArg {
    Host,
    None,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 30s, 5m, 1h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (number, mult) = match trimmed.chars().last() {
        Some('k') => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        Some('m') => (&trimmed[..trimmed.len() - 1], 1 << 20),
        Some('g') => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (like 512m, 2g)"))?;
    n.checked_mul(mult)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

fn read_env_files(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("env file {}", file.display()))?;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(line.to_owned());
        }
    }
    Ok(out)
}

/// Runs the container; returns its exit code (128+N for signal N).
pub async fn exec(store: cairn_images::Store, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let mut env = read_env_files(&args.env_file)?;
    env.extend(args.env);
    let options = ExecOptions {
        args: args.command,
        entrypoint: args
            .entrypoint
            .map(|e| e.split_whitespace().map(str::to_owned).collect()),
        env,
        workdir: args.workdir,
        user: args.user,
        volumes: args.volume,
        tmpfs: args.tmpfs,
        network: match args.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
        },
        resources: Resources {
            memory: args.memory,
            pids: args.pids_limit,
            cpus: args.cpus,
        },
        tty: args.tty,
    };
    let containers = Containers::open(store).await?;
    containers.start_runtime_for(&options.resources).await?;
    let mut terminal = None;
    let stdio = if args.tty {
        let (stdio, t) = TerminalProxy::start(args.interactive)?;
        terminal = Some(t);
        stdio
    } else {
        cairn_containers::inherit_stdio(args.interactive)?
    };
    let running = containers.start(&args.image, &options, stdio).await?;
    let id = running.id().to_owned();
    if let Some(t) = &mut terminal {
        t.container_started();
    }
    let outcome = running
        .run_to_end(
            args.timeout,
            stop_requested(),
            Duration::from_secs(args.stop_timeout),
        )
        .await?;
    if let Some(t) = terminal {
        t.finish();
    }
    if outcome.timed_out {
        eprintln!(
            "cairn: container {id} timed out after {}; stopped",
            humantime(args.timeout.unwrap_or_default())
        );
    }
    let code = outcome.status.code();
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s}s")
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Resolves on the first SIGINT, SIGTERM or SIGHUP.
pub(crate) async fn stop_requested() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut streams = Vec::new();
    for kind in [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ] {
        match signal(kind) {
            Ok(s) => streams.push(s),
            Err(e) => tracing::warn!("cannot watch signal: {e}"),
        }
    }
    if streams.is_empty() {
        return std::future::pending().await;
    }
    let waits = streams.iter_mut().map(|s| Box::pin(s.recv()));
    futures_select_all(waits).await;
}

async fn futures_select_all<F: std::future::Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// `-t`: a new pseudo-terminal for the container, bytes copied between it and ours.
struct TerminalProxy {
    primary: Option<OwnedFd>,
    interactive: bool,
    output: Option<std::thread::JoinHandle<()>>,
    raw: Option<cairn_runtime::tty::RawMode<'static>>,
}

impl TerminalProxy {
    fn start(interactive: bool) -> anyhow::Result<(ContainerStdio, TerminalProxy)> {
        let stdin_tty = std::io::stdin().is_terminal();
        let pty = cairn_runtime::tty::open_pty(stdin_tty.then(stdin_static))?;
        let secondary = pty.secondary;
        let stdio = ContainerStdio {
            stdin: secondary.try_clone()?,
            stdout: secondary.try_clone()?,
            stderr: secondary,
        };
        Ok((
            stdio,
            TerminalProxy {
                primary: Some(pty.primary),
                interactive,
                output: None,
                raw: None,
            },
        ))
    }

    /// The container holds the secondary side now: start copying.
    fn container_started(&mut self) {
        let Some(primary) = self.primary.take() else {
            return;
        };
        if std::io::stdin().is_terminal() {
            // The user's terminal is raw while the container has it: keys such as Ctrl-C
            // go to the container's terminal, which turns them into signals there.
            match cairn_runtime::tty::RawMode::enable(stdin_static()) {
                Ok(raw) => self.raw = Some(raw),
                Err(e) => tracing::warn!("{e}"),
            }
            if let Ok(resize_primary) = primary.try_clone() {
                tokio::spawn(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut winch) = signal(SignalKind::window_change()) else {
                        return;
                    };
                    while winch.recv().await.is_some() {
                        let _ = cairn_runtime::tty::copy_window_size(
                            stdin_static(),
                            resize_primary.as_fd(),
                        );
                    }
                });
            }
        }
        if self.interactive {
            if let Ok(input) = primary.try_clone() {
                std::thread::spawn(move || {
                    let mut to = std::fs::File::from(input);
                    let mut buf = [0u8; 8192];
                    let mut stdin = std::io::stdin();
                    loop {
                        match stdin.read(&mut buf) {
                            Ok(0) | Err(_) => {
                                // End of input: send the terminal's EOF character.
                                let _ = to.write_all(&[4]);
                                break;
                            }
                            Ok(n) => {
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        }
        self.output = Some(std::thread::spawn(move || {
            let mut from = std::fs::File::from(primary);
            let mut buf = [0u8; 8192];
            let mut stdout = std::io::stdout();
            // EIO once every holder of the secondary side has closed it.
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        }));
    }

    fn finish(mut self) {
        if let Some(output) = self.output.take() {
            let _ = output.join();
        }
        self.raw = None;
    }
}

/// stdin, borrowed for as long as the process lives.
fn stdin_static() -> std::os::fd::BorrowedFd<'static> {
    static STDIN: std::sync::LazyLock<std::io::Stdin> = std::sync::LazyLock::new(std::io::stdin);
    STDIN.as_fd()
}

/// `cairn ps`.
pub async fn ps(store: cairn_images::Store, json: bool) -> anyhow::Result<()> {
    let containers = Containers::open(store).await?;
    let list = containers.list()?;
    if json {
        for c in list {
            println!(
                "{}",
                serde_json::json!({
                    "id": c.id, "image": c.image, "command": c.command,
                    "created": c.created, "pid": c.pid,
                })
            );
        }
        return Ok(());
    }
    println!(
        "{:12}  {:40}  {:30}  {:>8}  CREATED",
        "CONTAINER ID", "IMAGE", "COMMAND", "PID"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for c in list {
        let mut command = c.command.join(" ");
        if command.chars().count() > 30 {
            command = command.chars().take(27).collect::<String>() + "...";
        }
        println!(
            "{:12}  {:40}  {:30}  {:>8}  {}s ago",
            c.id,
            c.image,
            command,
            c.pid.unwrap_or(0),
            (now - c.created).max(0)
        );
    }
    Ok(())
}

/// `cairn kill`.
pub async fn kill(
    store: cairn_images::Store,
    signal: Option<String>,
    time: u64,
    ids: Vec<String>,
) -> anyhow::Result<()> {
    let signal = signal.map(|s| parse_signal(&s)).transpose()?;
    let containers = Containers::open(store).await?;
    let mut failed = false;
    for id in ids {
        match containers
            .kill(&id, signal, Duration::from_secs(time))
            .await
        {
            Ok(record) => println!("{}", record.id),
            Err(e) => {
                eprintln!("cairn: {e}");
                failed = true;
            }
        }
    }
    if failed {
        bail!("some containers could not be stopped");
    }
    Ok(())
}

fn parse_signal(s: &str) -> anyhow::Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n).with_context(|| format!("signal {s}"));
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    nix::sys::signal::Signal::from_str(&name).with_context(|| format!("unknown signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn signals_by_name_or_number() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("2").unwrap(), Signal::SIGINT);
        assert!(parse_signal("NOPE").is_err());
    }
}
