//! cairn's image service: pull images from OCI registries into a local store, list them,
//! remove them, export their root filesystems, export and import image archives (OCI
//! layouts, OCI archives, docker archives), make images of snapshot chains
//! ([`Store::commit_image`]) and push images ([`Store::push`]).
//!
//! A store is one directory:
//!
//! ```text
//! store.json       how the store was created (root or rootless, and the id mapping)
//! metadata.db      SQLite (WAL): images and snapshots, shared by every cairn process
//! blobs/sha256/    verified blobs: manifests, configs, compressed layers
//! ingest/          blobs being downloaded
//! snapshots/       one directory per unpacked layer (see cairn-snapshot)
//! leases/          one locked file per live process that uses the store
//! locks/           per-layer locks, so two processes never unpack one layer twice
//! ```
//!
//! Every step of a pull either completes and is recorded, or leaves debris that the next
//! process to open the store recognises (its owner's lock is gone) and deletes: a pull killed
//! at any moment is simply run again.
//!
//! Programs that embed cairn and use a rootless store must call [`init`] first in `main`: the
//! store's filesystem work runs in a helper that is the program itself, re-executed inside a
//! user namespace.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_images::ImagesError> {
//! cairn_images::init(); // first line of main
//! let store = cairn_images::Store::open(cairn_images::StoreOptions::new(
//!     cairn_images::default_root(),
//! ))?;
//! let image = store.pull("127.0.0.1:5117/fixtures/busybox:latest", &()).await?;
//! store.export(&image.reference, std::path::Path::new("/tmp/rootfs")).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod archive;
mod error;
mod publish;
mod pull;
mod store;
pub mod worker;

pub use archive::ArchiveFormat;
pub use cairn_registry::{PushBlob, PushReport};
pub use error::{ErrorKind, ImagesError};
pub use publish::{CommitOptions, ImageSpec, ALIAS_LABEL};
pub use pull::PullProgress;
pub use store::{default_root, ImageRecord, Store, StoreOptions, LEASE_LABEL};
pub use worker::HelperProgram;

/// Call first in `main` (before any thread starts) of every program that uses a rootless
/// store or runs containers. In the program's own run it returns at once; when the program
/// was started as one of cairn's helpers (the store's filesystem helper, or the runtime
/// helper in which containers are created) it serves that helper's requests and exits.
pub fn init() {
    let mut args = std::env::args_os().skip(1);
    match args.next() {
        Some(a) if a == worker::HELPER_ARG => {
            cairn_runtime::init();
            worker::serve();
        }
        Some(a) if a == cairn_runtime::helper::RUNTIME_HELPER_ARG => {
            cairn_runtime::init();
            let rest: Vec<_> = args.collect();
            cairn_runtime::helper::serve(&rest);
        }
        _ => {}
    }
}
