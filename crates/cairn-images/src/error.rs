use std::path::PathBuf;

use cairn_oci::Digest;

/// Errors of the image service. Each names the image, layer or path at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagesError {
    /// No image with that reference is in the store.
    #[error("image {0} is not in the store")]
    ImageNotFound(String),
    /// A reference could not be parsed.
    #[error(transparent)]
    Reference(#[from] cairn_oci::ReferenceError),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] cairn_registry::RegistryError),
    /// A blob could not be stored, or did not match its digest.
    #[error("{context}: {source}")]
    Content {
        /// Which image or registry the blob came from.
        context: String,
        /// The underlying error.
        #[source]
        source: cairn_content::ContentError,
    },
    /// Snapshot bookkeeping failed.
    #[error(transparent)]
    Snapshot(#[from] cairn_snapshot::SnapshotError),
    /// A layer could not be unpacked.
    #[error("layer {layer} of {image}: {message}")]
    Layer {
        /// The image being pulled.
        image: String,
        /// The layer blob.
        layer: Digest,
        /// What went wrong (from the unpacker, possibly in a helper process).
        message: String,
    },
    /// The uncompressed layer does not hash to the diff id the image config promises.
    #[error("layer {layer} of {image} unpacks to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        /// The image being pulled.
        image: String,
        /// The layer blob.
        layer: Digest,
        /// The diff id in the config.
        expected: Digest,
        /// The diff id of the bytes received.
        actual: Digest,
    },
    /// The image config is malformed or disagrees with the manifest.
    #[error("image {image}: invalid config {config}: {reason}")]
    InvalidConfig {
        /// The image.
        image: String,
        /// The config blob.
        config: Digest,
        /// What is wrong.
        reason: String,
    },
    /// The image manifest is malformed.
    #[error("image {image}: invalid manifest {digest}: {reason}")]
    InvalidManifest {
        /// The image.
        image: String,
        /// The manifest.
        digest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// Export refused or failed.
    #[error("export of {image} to {dest}: {message}")]
    Export {
        /// The image.
        image: String,
        /// The destination.
        dest: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An image archive is unusable as a whole (not a tar, no index, wrong format).
    #[error("archive {archive}: {message}")]
    ArchiveInvalid {
        /// The archive file or directory.
        archive: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A member of an image archive is missing, hostile or not what it claims to be.
    #[error("archive {archive}: member {member}: {message}")]
    ArchiveMember {
        /// The archive file or directory.
        archive: PathBuf,
        /// The member's name in the archive.
        member: String,
        /// What is wrong.
        message: String,
    },
    /// The user-namespace helper could not be started or stopped answering.
    #[error(transparent)]
    Runtime(#[from] cairn_runtime::RuntimeError),
    /// The helper process failed at the protocol level.
    #[error("filesystem helper: {0}")]
    Helper(String),
    /// The store directory or its metadata is unusable.
    #[error("store {path}: {message}")]
    Store {
        /// The store root or the file at fault.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A snapshot could not be packed into a layer.
    #[error("pack snapshot {snapshot} into a layer: {message}")]
    Publish {
        /// The snapshot at fault.
        snapshot: String,
        /// Why.
        message: String,
    },
    /// The metadata database failed.
    #[error("image metadata at {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Coarse classes of [`ImagesError`] that callers branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The image, tag or blob does not exist.
    NotFound,
    /// The input is malformed.
    InvalidInput,
    /// A registry or layer delivered data that is not what it claims.
    Corrupt,
    /// Credentials were refused.
    Unauthorized,
    /// The failure may go away when retried.
    Transient,
    /// Anything else.
    Other,
}

impl ImagesError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        use cairn_registry::ErrorKind as R;
        match self {
            ImagesError::ImageNotFound(_) => ErrorKind::NotFound,
            ImagesError::Reference(_) => ErrorKind::InvalidInput,
            ImagesError::Registry(e) => match e.kind() {
                R::NotFound => ErrorKind::NotFound,
                R::Unauthorized => ErrorKind::Unauthorized,
                R::InvalidInput | R::Unsupported => ErrorKind::InvalidInput,
                R::Transient => ErrorKind::Transient,
                R::Corrupt => ErrorKind::Corrupt,
                _ => ErrorKind::Other,
            },
            ImagesError::Content { source, .. } => match source.kind() {
                cairn_content::ErrorKind::Corrupt => ErrorKind::Corrupt,
                cairn_content::ErrorKind::NotFound => ErrorKind::NotFound,
                _ => ErrorKind::Other,
            },
            ImagesError::DiffIdMismatch { .. } | ImagesError::Layer { .. } => ErrorKind::Corrupt,
            ImagesError::ArchiveInvalid { .. } => ErrorKind::InvalidInput,
            ImagesError::ArchiveMember { message, .. }
                if message.contains("not in the archive") =>
            {
                ErrorKind::NotFound
            }
            ImagesError::ArchiveMember { .. } => ErrorKind::Corrupt,
            ImagesError::InvalidConfig { .. } | ImagesError::InvalidManifest { .. } => {
                ErrorKind::Corrupt
            }
            _ => ErrorKind::Other,
        }
    }
}
