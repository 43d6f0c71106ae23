//! Where filesystem work on snapshots happens: in this process, or in a helper process inside
//! the store's user namespace.
//!
//! A rootless store holds files owned by subordinate ids (or carries whiteout devices) that the
//! user can create and delete only as root of a user namespace. Namespaces cannot be entered by
//! a multithreaded process, so that work goes to a long-lived helper: this same program,
//! re-executed, which serves requests read from stdin as JSON lines. As real root the work runs
//! in-process and the helper is never started.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use cairn_oci::{Digest, LayerCompression};
use cairn_runtime::{IdMapping, UsernsChild};
use cairn_snapshot::apply::{apply_layer, ApplyOptions, OverlayXattrs};
use cairn_snapshot::flatten::{flatten, ExportOwnership, FlattenOptions};
use cairn_snapshot::pack::{pack_layer, PackOptions, PackedLayer};
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::ImagesError;

/// The first argument that makes a program that called [`crate::init`] serve as the helper.
pub const HELPER_ARG: &str = "__cairn-fs-helper";

/// A request to unpack one layer blob into an upper directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The compressed layer blob.
    pub blob: PathBuf,
    /// Its compression.
    pub compression: Compression,
    /// The snapshot's upper directory.
    pub upper: PathBuf,
    /// The lower layers, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Overlay markers in `user.overlay.*` rather than `trusted.overlay.*`.
    pub userxattr: bool,
}

/// [`LayerCompression`] as it crosses the process boundary.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl From<LayerCompression> for Compression {
    fn from(c: LayerCompression) -> Self {
        match c {
            LayerCompression::None => Compression::None,
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        }
    }
}

impl From<Compression> for LayerCompression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::None => LayerCompression::None,
            Compression::Gzip => LayerCompression::Gzip,
            Compression::Zstd => LayerCompression::Zstd,
        }
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream.
    pub diff_id: Digest,
    /// Tar entries processed.
    pub entries: u64,
    /// Device nodes that could not be created (rootless).
    pub skipped_devices: Vec<PathBuf>,
    /// Files whose owner could not be mapped and was recorded in `user.rootlesscontainers`.
    pub squashed_owners: u64,
}

/// A request to write the merged view of a layer chain into a new directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlattenRequest {
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Where to write.
    pub dest: PathBuf,
    /// Overlay markers in `user.overlay.*` rather than `trusted.overlay.*`.
    pub userxattr: bool,
    /// Give every file to the caller and record owners in `user.rootlesscontainers`.
    pub to_caller: bool,
}

/// A request to pack an upper directory into a compressed layer blob.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackRequest {
    /// The snapshot's upper directory.
    pub upper: PathBuf,
    /// Where to write the blob (a new file).
    pub out: PathBuf,
    /// Overlay markers in `user.overlay.*` rather than `trusted.overlay.*`.
    pub userxattr: bool,
    /// The compression to write.
    pub compression: Compression,
    /// Clamp mtimes to this (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Apply(ApplyRequest),
    Pack(PackRequest),
    Flatten(FlattenRequest),
    RemoveTree(PathBuf),
}

#[derive(Debug, Serialize, Deserialize)]
enum Response {
    Applied(Applied),
    Packed(PackedLayer),
    Done,
    Failed(String),
}

fn run(request: Request) -> Response {
    match request {
        Request::Apply(r) => match do_apply(&r) {
            Ok(a) => Response::Applied(a),
            Err(e) => Response::Failed(e),
        },
        Request::Pack(r) => match do_pack(&r) {
            Ok(p) => Response::Packed(p),
            Err(e) => Response::Failed(e),
        },
        Request::Flatten(r) => match do_flatten(&r) {
            Ok(()) => Response::Done,
            Err(e) => Response::Failed(e),
        },
        Request::RemoveTree(path) => match cairn_snapshot::remove_tree_local(&path) {
            Ok(()) => Response::Done,
            Err(e) => Response::Failed(format!("remove {}: {e}", path.display())),
        },
    }
}

fn xattrs(user: bool) -> OverlayXattrs {
    if user {
        OverlayXattrs::User
    } else {
        OverlayXattrs::Trusted
    }
}

fn do_apply(r: &ApplyRequest) -> Result<Applied, String> {
    let blob =
        std::fs::File::open(&r.blob).map_err(|e| format!("open {}: {e}", r.blob.display()))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, blob);
    let opts = ApplyOptions {
        xattrs: xattrs(r.userxattr),
        lowers: &r.lowers,
    };
    let report =
        apply_layer(reader, r.compression.into(), &r.upper, &opts).map_err(|e| e.to_string())?;
    Ok(Applied {
        diff_id: report.diff_id,
        entries: report.entries,
        skipped_devices: report.skipped_devices,
        squashed_owners: report.squashed_owners,
    })
}

fn do_pack(r: &PackRequest) -> Result<PackedLayer, String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&r.out)
        .map_err(|e| format!("create {}: {e}", r.out.display()))?;
    let out = std::io::BufWriter::with_capacity(1 << 20, file);
    let opts = PackOptions {
        xattrs: xattrs(r.userxattr),
        source_date_epoch: r.source_date_epoch,
    };
    let packed = pack_layer(&r.upper, &opts, r.compression.into(), out).map_err(|e| e.to_string());
    if packed.is_err() {
        let _ = std::fs::remove_file(&r.out);
    }
    packed
}

fn do_flatten(r: &FlattenRequest) -> Result<(), String> {
    let opts = FlattenOptions {
        xattrs: xattrs(r.userxattr),
        ownership: if r.to_caller {
            ExportOwnership::Caller
        } else {
            ExportOwnership::Exact
        },
    };
    flatten(&r.layers, &r.dest, &opts)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Serves requests on stdin until it closes. Runs in the helper process.
pub(crate) fn serve() -> ! {
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(request) => run(request),
            Err(e) => Response::Failed(format!("malformed request: {e}")),
        };
        let text = serde_json::to_string(&response).expect("responses serialise");
        if writeln!(stdout, "{text}")
            .and_then(|_| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    std::process::exit(0)
}

/// How to start the helper: a program that calls [`crate::init`] first in `main`.
#[derive(Debug, Clone)]
pub enum HelperProgram {
    /// This very program (it must call [`crate::init`]).
    CurrentExe,
    /// Another program, such as the `cairn` binary.
    Path(PathBuf),
}

/// Runs filesystem work on the store's snapshots.
pub enum Worker {
    /// In this process: the caller is real root.
    InProcess,
    /// In a helper inside a user namespace, started on first use.
    Helper {
        /// How to start it.
        program: HelperProgram,
        /// The mapping to give it.
        mapping: IdMapping,
        /// The running helper.
        child: Mutex<Option<UsernsChild>>,
    },
}

impl Worker {
    fn call(&self, request: Request) -> Result<Response, ImagesError> {
        match self {
            Worker::InProcess => Ok(run(request)),
            Worker::Helper {
                program,
                mapping,
                child,
            } => {
                let mut guard = child.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    let exe = match program {
                        HelperProgram::CurrentExe => std::env::current_exe().map_err(|e| {
                            ImagesError::Helper(format!("cannot find own executable: {e}"))
                        })?,
                        HelperProgram::Path(p) => p.clone(),
                    };
                    let mut command = Command::new(exe);
                    command.arg(HELPER_ARG);
                    *guard = Some(cairn_runtime::spawn_in_user_namespace(command, mapping)?);
                }
                let helper = guard.as_mut().expect("started above");
                let text = serde_json::to_string(&request).expect("requests serialise");
                let mut line = String::new();
                let exchange = writeln!(helper.stdin, "{text}")
                    .and_then(|_| helper.stdin.flush())
                    .and_then(|_| helper.stdout.read_line(&mut line));
                match exchange {
                    Ok(n) if n > 0 => serde_json::from_str(&line).map_err(|e| {
                        ImagesError::Helper(format!("unreadable answer {line:?}: {e}"))
                    }),
                    other => {
                        // The helper died; the next call starts a fresh one.
                        let mut dead = guard.take().expect("present");
                        let _ = dead.child.kill();
                        let status = dead.child.wait().ok();
                        Err(ImagesError::Helper(format!(
                            "helper process exited ({status:?}) during a request: {:?}",
                            other.err()
                        )))
                    }
                }
            }
        }
    }

    /// Unpacks a layer blob into an upper directory.
    pub fn apply(&self, request: ApplyRequest) -> Result<Result<Applied, String>, ImagesError> {
        debug!(blob = %request.blob.display(), upper = %request.upper.display(), "apply layer");
        match self.call(Request::Apply(request))? {
            Response::Applied(a) => Ok(Ok(a)),
            Response::Failed(e) => Ok(Err(e)),
            _ => Err(ImagesError::Helper("unexpected answer to apply".into())),
        }
    }

    /// Writes the merged view of a chain into a new directory.
    pub fn flatten(&self, request: FlattenRequest) -> Result<Result<(), String>, ImagesError> {
        match self.call(Request::Flatten(request))? {
            Response::Done => Ok(Ok(())),
            Response::Failed(e) => Ok(Err(e)),
            _ => Err(ImagesError::Helper("unexpected answer to flatten".into())),
        }
    }

    /// Packs an upper directory into a compressed layer blob (in the store's user namespace,
    /// so owners read as the container's ids).
    pub fn pack(&self, request: PackRequest) -> Result<Result<PackedLayer, String>, ImagesError> {
        debug!(upper = %request.upper.display(), "pack layer");
        match self.call(Request::Pack(request))? {
            Response::Packed(p) => Ok(Ok(p)),
            Response::Failed(e) => Ok(Err(e)),
            _ => Err(ImagesError::Helper("unexpected answer to pack".into())),
        }
    }

    /// Deletes a tree, whoever owns its files.
    pub fn remove_tree(&self, path: &Path) -> std::io::Result<()> {
        if let Worker::Helper { .. } = self {
            // Most trees a plain user deletes are its own (a container's writable layer when
            // the command ran as root inside): try that first and start the helper only for
            // what the user cannot delete itself.
            if cairn_snapshot::remove_tree_local(path).is_ok() {
                return Ok(());
            }
        }
        match self.call(Request::RemoveTree(path.to_owned())) {
            Ok(Response::Done) => Ok(()),
            Ok(Response::Failed(e)) => Err(std::io::Error::other(e)),
            Ok(_) => Err(std::io::Error::other("unexpected answer to remove")),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Worker::Helper { child, .. } = self {
            if let Some(mut helper) = child.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
                // Closing stdin ends the serve loop; wait so no zombie is left.
                drop(helper.stdin);
                let _ = helper.child.wait();
            }
        }
    }
}

/// The snapshotter deletes through the worker, so rootless trees go through the helper.
pub(crate) struct WorkerRemover(pub(crate) std::sync::Arc<Worker>);

impl cairn_snapshot::TreeRemover for WorkerRemover {
    fn remove_tree(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove_tree(path)
    }
}
