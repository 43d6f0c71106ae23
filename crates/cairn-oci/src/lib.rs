//! OCI image vocabulary shared by every cairn crate: content digests, image references, layer
//! media types, platforms and layer chain ids.
//!
//! Nothing here does I/O. The types are newtypes over validated strings so that a digest or a
//! reference that reaches the store or a registry has already been checked once, here.

#![deny(missing_docs)]

mod digest;
mod media;
mod platform;
mod reference;
mod source;

pub use digest::{chain_ids, Digest, DigestError, Sha256Writer};
pub use media::{LayerCompression, ManifestKind, MediaTypeError};
pub use platform::Platform;
pub use reference::{registry_is_loopback, ImageReference, ReferenceError};
pub use source::{valid_ref_name, ImageSource};

/// Manifest media types.
pub mod media_types {
    pub use crate::media::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
}
