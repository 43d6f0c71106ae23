//! The OCI distribution API (pull, and push through [`RegistryClient::push_image`]), on top of `oci-client`: resolving an image
//! reference to a manifest for one platform, and streaming blobs, with the credentials of
//! Docker's `config.json`, digest verification of everything received, and retries with
//! resumption on transient failures.
//!
//! Pulling an image goes in two steps, each verified before the next trusts it:
//!
//! 1. [`RegistryClient::resolve`] fetches the manifest the reference names. If it is an index
//!    (or a Docker manifest list) the entry for the configured [`Platform`](cairn_oci::Platform)
//!    is picked and its manifest fetched by digest. Every manifest's bytes are hashed here,
//!    not trusted from headers, and every layer's media type is checked to be one cairn can
//!    unpack. The image config is fetched too, verified, and its platform checked.
//! 2. [`RegistryClient::fetch_blob`] streams each layer into a [`BlobSink`] (the content
//!    store's ingest), resuming with `Range` requests when the connection breaks, and checks
//!    its size and digest.
//!
//! ```no_run
//! use cairn_registry::{RegistryClient, RegistryConfig};
//! # async fn pull() -> Result<(), Box<dyn std::error::Error>> {
//! let client = RegistryClient::new(RegistryConfig::from_env());
//! let reference = "127.0.0.1:5000/fixtures/busybox:latest".parse()?;
//! let image = client.resolve(&reference).await?;
//! println!("{} for {}: {} bytes of config", image.manifest_digest, image.platform, image.config_bytes.len());
//! for layer in image.manifest.layers() {
//!     let mut data = Vec::new();
//!     let digest = layer.digest().as_ref().parse()?;
//!     client.fetch_blob(&reference, &digest, layer.size(), &mut data, &|n| {
//!         eprintln!("{digest}: {n} bytes");
//!     }).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Failures that the network causes (refused or reset connections, timeouts, 5xx, 429) are
//! retried per [`RetryPolicy`]; answers the registry means (401, 403, 404, other 4xx) and
//! content that fails verification are not. Each retry is logged at `warn` level, inside the
//! `resolve` or `fetch_blob` span that names the reference and digest.

#![deny(missing_docs)]

mod auth;
mod client;
mod config;
mod error;
mod manifest;
mod push;
mod retry;

pub use client::{BlobSink, RegistryClient, ResolvedImage, MAX_IN_MEMORY_BLOB, MAX_MANIFEST_SIZE};
pub use config::{RegistryConfig, INSECURE_REGISTRIES_ENV};
pub use error::{BoxError, ErrorKind, RegistryError};
pub use push::{PushBlob, PushReport};
pub use retry::RetryPolicy;
