//! `cairn`: pull images into a local store and work with them, without a daemon or root.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod exec;
mod progress;
mod run;
mod tty;

/// A rootless, daemonless CI engine.
#[derive(Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    /// The store directory [default: /var/lib/cairn for root, ~/.local/share/cairn otherwise]
    #[arg(long, global = true, env = "CAIRN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image and unpack its layers; prints the manifest digest last.
    Pull {
        /// Image reference, e.g. 127.0.0.1:5000/library/busybox:latest
        reference: String,
    },
    /// List the images in the store.
    Images {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Write an image's flattened root filesystem into a new directory, or the image itself
    /// as an OCI layout, OCI archive or docker archive. DEST appears complete or not at all.
    Export {
        /// What to write.
        #[arg(long, value_enum, default_value_t = ExportFormat::Rootfs)]
        format: ExportFormat,
        /// Image reference or manifest digest.
        reference: String,
        /// Destination: a directory (must not exist, or be empty) for rootfs and oci, a file
        /// (replaced if it exists) for the archives.
        dest: PathBuf,
    },
    /// Import an image archive (OCI layout directory, OCI archive or docker archive; detected)
    /// and print the manifest digest.
    Import {
        /// The archive.
        archive: PathBuf,
        /// The reference to record it as [default: the name the archive gives it].
        reference: Option<String>,
    },
    /// Remove an image reference; its layers stay until garbage collection.
    /// Push an image of the store to its registry (or to DEST): only the blobs the registry
    /// lacks, mounted from another repository of the same registry when possible.
    Push {
        /// The image, as `cairn images` lists it.
        reference: String,
        /// Where to push it (default: its own reference).
        dest: Option<String>,
        /// Print what moved as one JSON object.
        #[arg(long)]
        json: bool,
    },
    Rmi {
        /// Image reference or manifest digest.
        reference: String,
    },
    /// Delete the whole store, including files owned by subordinate ids.
    Reset,
    /// Run a command in a new container of an image (pulled if missing), as `podman run --rm`.
    Exec(Box<exec::ExecArgs>),
    /// Run a pipeline file: its steps (or those named with --step) and its exports.
    Run(Box<run::RunArgs>),
    /// List the running containers of this store.
    Ps {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Stop running containers: SIGTERM, then SIGKILL after a grace period.
    Kill {
        /// Send only this signal (a name like TERM or KILL, or a number).
        #[arg(short, long)]
        signal: Option<String>,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
        /// Container ids (or unique prefixes).
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ExportFormat {
    /// The flattened root filesystem, as a directory.
    Rootfs,
    /// An OCI image layout directory.
    Oci,
    /// A tar of an OCI image layout (`podman load`, `skopeo oci-archive:`).
    OciArchive,
    /// A `docker save` tar (`docker load`, `podman load`).
    DockerArchive,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line.
    Json,
}

fn main() -> ExitCode {
    // Before anything else, and before any thread: this process may be the store's helper.
    cairn_images::init();
    let cli = Cli::parse();
    if matches!(cli.command, Command::Exec(_) | Command::Run(_)) {
        // Still single-threaded: fork the runtime helper now rather than execute this
        // program again for it when the first container starts. If the fork fails, the
        // helper is executed then as usual.
        let _ = cairn_runtime::prefork_helper();
    }
    init_logging();
    // One container, or a listing, needs no worker threads, and starting and stopping them
    // is a measurable part of such a short command. Blocking work still goes to the
    // blocking pool either way. Pipelines and pulls run many things at once.
    let mut builder = if matches!(
        cli.command,
        Command::Exec(_) | Command::Ps { .. } | Command::Kill { .. }
    ) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exec = matches!(cli.command, Command::Exec(_));
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cairn: {}", one_line(&e));
            // As docker and podman do: 125 says the failure is cairn's, not the command's.
            if exec {
                ExitCode::from(125)
            } else {
                ExitCode::FAILURE
            }
        }
    };
    // Do not wait for threads still blocked on the terminal (an `exec -i` stdin copy).
    runtime.shutdown_background();
    code
}

/// Logs to stderr: warnings and errors, or what `CAIRN_LOG` (an `EnvFilter` directive such as
/// `info` or `cairn_runtime=debug`) asks for.
fn init_logging() {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let output = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .without_time()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
    };
    let registry = tracing_subscriber::registry();
    match EnvFilter::try_from_env("CAIRN_LOG") {
        Ok(filter) => registry.with(output().with_filter(filter)).init(),
        // Not an `EnvFilter` by default: parsing one compiles its regular expressions, a
        // sixth of a millisecond at the start of every command.
        Err(_) => registry
            .with(
                output().with_filter(
                    Targets::new()
                        .with_default(LevelFilter::WARN)
                        // Retries that end in success are not worth a line; one that ends
                        // in failure is the error itself. CAIRN_LOG=info shows them.
                        .with_target("cairn_registry", LevelFilter::ERROR),
                ),
            )
            .init(),
    }
}

/// The error and its causes on one line, leaving out a cause whose text the message before it
/// already includes (cairn's errors name their source in their own message).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn options(root: Option<PathBuf>) -> cairn_images::StoreOptions {
    cairn_images::StoreOptions::new(root.unwrap_or_else(cairn_images::default_root))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let options = options(cli.root);
    if let Command::Reset = cli.command {
        let root = options.root.clone();
        cairn_images::Store::reset(options)?;
        eprintln!("removed store {}", root.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Run(args) = cli.command {
        return run::run(options, *args).await;
    }
    let store = cairn_images::Store::open(options)?;
    match cli.command {
        Command::Pull { reference } => {
            let image = if std::io::stderr().is_terminal() {
                let bars = progress::Bars::new();
                let result = store.pull(&reference, &bars).await;
                bars.finish();
                result?
            } else {
                store.pull(&reference, &()).await?
            };
            println!("{}", image.digest);
        }
        Command::Images { format } => {
            let images = store.images()?;
            match format {
                Format::Json => {
                    for image in images {
                        let line = serde_json::json!({
                            "reference": image.reference,
                            "digest": image.digest,
                            "size": image.size,
                            "config": image.config,
                            "media_type": image.media_type,
                            "created": image.created,
                        });
                        println!("{line}");
                    }
                }
                Format::Table => {
                    let width = images
                        .iter()
                        .map(|i| i.reference.len())
                        .max()
                        .unwrap_or(0)
                        .max(9);
                    println!("{:width$}  {:71}  SIZE", "REFERENCE", "DIGEST");
                    for image in images {
                        println!(
                            "{:width$}  {:71}  {}",
                            image.reference,
                            image.digest.as_str(),
                            progress::human_bytes(image.size)
                        );
                    }
                }
            }
        }
        Command::Export {
            format,
            reference,
            dest,
        } => {
            use cairn_images::ArchiveFormat;
            let format = match format {
                ExportFormat::Rootfs => {
                    store.export(&reference, &dest).await?;
                    return Ok(ExitCode::SUCCESS);
                }
                ExportFormat::Oci => ArchiveFormat::OciLayout,
                ExportFormat::OciArchive => ArchiveFormat::OciArchive,
                ExportFormat::DockerArchive => ArchiveFormat::DockerArchive,
            };
            store.export_archive(&reference, format, &dest).await?;
        }
        Command::Import { archive, reference } => {
            let image = store.import(&archive, reference.as_deref(), &()).await?;
            eprintln!("{}", image.reference);
            println!("{}", image.digest);
        }
        Command::Push {
            reference,
            dest,
            json,
        } => {
            let report = store.push(&reference, dest.as_deref()).await?;
            if json {
                println!("{}", run::push_json(&report));
            } else {
                eprintln!("{}", run::push_summary(&report));
                println!("{}", report.digest);
            }
        }
        Command::Rmi { reference } => {
            let image = store.remove_image(&reference)?;
            println!("{}", image.reference);
        }
        Command::Exec(args) => return exec::exec(store, *args).await,
        Command::Ps { format } => exec::ps(store, format == Format::Json).await?,
        Command::Kill { signal, time, ids } => exec::kill(store, signal, time, ids).await?,
        Command::Reset | Command::Run(_) => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
