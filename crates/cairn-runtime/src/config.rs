//! What a caller asks for when it runs a container: plain data, turned into an OCI runtime
//! spec by [`crate::spec::build_spec`] inside the helper.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One container to run: the process, its root filesystem and what it may see.
///
/// Everything here is resolved already: the user is numeric, the environment is final, the
/// rootfs is a list of mounts the snapshotter returned. The runtime adds the isolation
/// defaults (Docker's capability set, seccomp profile, masked paths, a minimal `/dev`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerConfig {
    /// The argv; `args[0]` is looked up in the container's `PATH` when it has no slash.
    pub args: Vec<String>,
    /// `KEY=value` entries, final (image defaults merged with the caller's).
    pub env: Vec<String>,
    /// The working directory inside the container (absolute). Created if missing.
    pub cwd: String,
    /// The numeric user the process runs as.
    pub user: ProcessUser,
    /// The container's hostname.
    pub hostname: String,
    /// The root filesystem: an overlay (lower = image layers, upper = a fresh active snapshot)
    /// or a directory to bind.
    pub rootfs: RootfsMount,
    /// Bind mounts and tmpfs mounts the caller asked for, in order.
    pub mounts: Vec<ExtraMount>,
    /// The network the container joins.
    pub network: Network,
    /// cgroup limits; all `None` means no cgroup settings at all.
    pub resources: Resources,
    /// Whether stdin, stdout and stderr are a terminal (`-t`): the container's init makes it
    /// the controlling terminal of the command.
    pub tty: bool,
}

/// The numeric identity of the container's process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessUser {
    /// uid inside the container.
    pub uid: u32,
    /// gid inside the container.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// How the container's `/` is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum RootfsMount {
    /// An overlay mount, with options one per entry (`lowerdir=…`, `upperdir=…`,
    /// `workdir=…`, `userxattr`), exactly as the snapshotter's `mounts()` returned them.
    Overlay {
        /// The mount options.
        options: Vec<String>,
    },
    /// A plain directory, bound read-write (an image without layers).
    Bind {
        /// The directory.
        source: PathBuf,
    },
}

/// A mount the caller adds on top of the root filesystem.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ExtraMount {
    /// A host path (file or directory) bound into the container.
    Bind {
        /// The host path.
        source: PathBuf,
        /// The absolute path inside the container.
        destination: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// The absolute path inside the container.
        destination: String,
    },
}

/// The network a container joins.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace, so steps can fetch what they need.
    #[default]
    Host,
    /// A new network namespace with only loopback, up.
    None,
}

/// cgroup limits. Asking for any of them on a host that cannot enforce it is an error, never
/// a silent no-op.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Maximum number of processes.
    pub pids: Option<i64>,
    /// CPU limit in cores (1.5 = one and a half cores).
    pub cpus: Option<f64>,
}

impl Resources {
    /// Whether any limit is asked for.
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some() || self.cpus.is_some()
    }
}
