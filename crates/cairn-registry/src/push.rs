//! Pushing an image: its blobs, then its manifest.
//!
//! For every blob the registry is asked first (`HEAD`) whether the target repository has it;
//! only missing blobs move. A missing blob that the caller knows to be in another repository
//! of the same registry is mounted from there (`POST …/blobs/uploads/?mount=…&from=…`), which
//! copies nothing; if the registry declines the mount, the blob is uploaded. The manifest goes
//! last, so a registry never holds a manifest whose blobs it lacks, and a push that failed
//! half-way can simply be run again: what made it is found by the `HEAD` and skipped.

use std::path::PathBuf;

use cairn_oci::{Digest, ImageReference};
use futures_util::{stream, StreamExt, TryStreamExt};
use oci_client::errors::OciDistributionError;
use oci_client::RegistryOperation;
use tokio::io::AsyncReadExt;
use tracing::{debug, info, Instrument};

use crate::error::{classify, Failure, Target};
use crate::{RegistryClient, RegistryError};

/// How many blobs upload at once.
const PARALLEL_BLOBS: usize = 3;

/// One blob of the image to push: where to read it, and where else it may already be.
#[derive(Debug, Clone)]
pub struct PushBlob {
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// The local file holding it.
    pub path: PathBuf,
    /// Repositories of the target registry known to hold it: mount candidates.
    pub mount_from: Vec<String>,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The digest of the pushed manifest.
    pub digest: Digest,
    /// Blobs uploaded, with their sizes.
    pub uploaded: Vec<(Digest, u64)>,
    /// Blobs the repository had already.
    pub skipped: Vec<Digest>,
    /// Blobs mounted from another repository (and which).
    pub mounted: Vec<(Digest, String)>,
}

impl PushReport {
    /// Bytes uploaded.
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded.iter().map(|(_, s)| s).sum()
    }
}

enum BlobOutcome {
    Uploaded(Digest, u64),
    Skipped(Digest),
    Mounted(Digest, String),
}

impl RegistryClient {
    /// Pushes `blobs` (layers and config) that the repository of `reference` lacks, then the
    /// manifest `manifest` of type `media_type` under `reference`'s tag (or digest). Returns
    /// the manifest's digest and what moved.
    pub async fn push_image(
        &self,
        reference: &ImageReference,
        blobs: &[PushBlob],
        manifest: &[u8],
        media_type: &str,
    ) -> Result<PushReport, RegistryError> {
        let span = tracing::info_span!("push", reference = %reference);
        self.push_inner(reference, blobs, manifest, media_type)
            .instrument(span)
            .await
    }

    async fn push_inner(
        &self,
        reference: &ImageReference,
        blobs: &[PushBlob],
        manifest: &[u8],
        media_type: &str,
    ) -> Result<PushReport, RegistryError> {
        let host = self.host(reference).await?;
        let image = reference.as_distribution_reference();
        let registry = reference.registry();
        // A token with `push,pull` scope for the repository, taken once for every request.
        self.with_retries(registry, "push authentication", || async {
            host.client
                .auth(image, &host.auth, RegistryOperation::Push)
                .await
                .map(|_| ())
                .map_err(|e| classify(e, &Target::Manifest(reference), host.with_credentials()))
        })
        .await?;

        let outcomes: Vec<BlobOutcome> = stream::iter(blobs)
            .map(|blob| self.push_blob(reference, blob))
            .buffer_unordered(PARALLEL_BLOBS)
            .try_collect()
            .await?;
        let mut report = PushReport {
            digest: Digest::sha256_of(manifest),
            uploaded: Vec::new(),
            skipped: Vec::new(),
            mounted: Vec::new(),
        };
        for outcome in outcomes {
            match outcome {
                BlobOutcome::Uploaded(d, s) => report.uploaded.push((d, s)),
                BlobOutcome::Skipped(d) => report.skipped.push(d),
                BlobOutcome::Mounted(d, from) => report.mounted.push((d, from)),
            }
        }

        let content_type: http::HeaderValue =
            media_type
                .parse()
                .map_err(|_| RegistryError::InvalidManifest {
                    reference: reference.to_string(),
                    reason: format!("media type {media_type:?} is not a header value"),
                })?;
        let body = bytes::Bytes::copy_from_slice(manifest);
        self.with_retries(registry, "manifest upload", || async {
            host.client
                .push_manifest_raw(image, body.clone(), content_type.clone())
                .await
                .map(|_| ())
                .map_err(|e| classify(e, &Target::Manifest(reference), host.with_credentials()))
        })
        .await?;
        info!(
            digest = %report.digest,
            uploaded = report.uploaded.len(),
            uploaded_bytes = report.uploaded_bytes(),
            skipped = report.skipped.len(),
            mounted = report.mounted.len(),
            "pushed"
        );
        Ok(report)
    }

    async fn push_blob(
        &self,
        reference: &ImageReference,
        blob: &PushBlob,
    ) -> Result<BlobOutcome, RegistryError> {
        let span = tracing::debug_span!("push_blob", digest = %blob.digest, size = blob.size);
        async {
            let host = self.host(reference).await?;
            let image = reference.as_distribution_reference();
            let registry = reference.registry();
            let target = Target::Blob(reference, &blob.digest);
            let classify = |e| classify(e, &target, host.with_credentials());
            let exists = self
                .with_retries(registry, "blob check", || async {
                    host.client
                        .blob_exists(image, blob.digest.as_str())
                        .await
                        .map_err(classify)
                })
                .await?;
            if exists {
                debug!("registry has the blob already");
                return Ok(BlobOutcome::Skipped(blob.digest.clone()));
            }
            for from in &blob.mount_from {
                if from == reference.repository() {
                    continue;
                }
                let source: oci_client::Reference = match format!("{registry}/{from}").parse() {
                    Ok(r) => r,
                    Err(_) => continue,
                };
                match host
                    .client
                    .mount_blob(image, &source, blob.digest.as_str())
                    .await
                {
                    Ok(()) => {
                        debug!(from = %from, "mounted blob");
                        return Ok(BlobOutcome::Mounted(blob.digest.clone(), from.clone()));
                    }
                    // A declined mount (the registry answers 202 and opens an upload, or the
                    // source lost the blob) costs one request; the upload follows.
                    Err(e) => debug!(from = %from, error = %e, "mount declined"),
                }
            }
            self.with_retries(registry, "blob upload", || async {
                let file = tokio::fs::File::open(&blob.path).await.map_err(|source| {
                    Failure::Fatal(RegistryError::PushSource {
                        digest: blob.digest.clone(),
                        path: blob.path.clone(),
                        source,
                    })
                })?;
                host.client
                    .push_blob_stream(
                        image,
                        file_stream(file),
                        blob.digest.as_str(),
                        Some(blob.size),
                    )
                    .await
                    .map(|_| ())
                    .map_err(classify)
            })
            .await?;
            debug!("uploaded blob");
            Ok(BlobOutcome::Uploaded(blob.digest.clone(), blob.size))
        }
        .instrument(span)
        .await
    }
}

/// The file as a stream of 1 MiB chunks.
fn file_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 1 << 20];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.truncate(n);
        Ok(Some((bytes::Bytes::from(buf), file)))
    })
}
