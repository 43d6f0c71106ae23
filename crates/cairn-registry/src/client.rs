//! The registry client: resolving references and fetching blobs (pushing is in `push.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use cairn_oci::{Digest, ImageReference, ManifestKind, Platform, Sha256Writer};
use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol, SizedStream};
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;
use tracing::{debug, warn, Instrument};

use crate::auth::{DockerConfig, HelperRunner};
use crate::error::{classify, BoxError, Failure, Target};
use crate::{manifest, RegistryConfig, RegistryError};

/// The largest manifest or index accepted. The distribution spec lets registries refuse
/// manifests above 4 MiB, so none bigger can be pushed to most of them.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// The largest blob [`RegistryClient::fetch_blob_bytes`] holds in memory.
pub const MAX_IN_MEMORY_BLOB: u64 = 64 << 20;

/// Receives a blob as it streams in. Implementations write to a file, a hasher, memory.
pub trait BlobSink {
    /// Appends the next bytes of the blob.
    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()>;
}

impl BlobSink for Vec<u8> {
    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(chunk);
        Ok(())
    }
}

/// An image reference resolved to one image manifest for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as asked for.
    pub reference: ImageReference,
    /// The digest of the image manifest used: the platform's manifest when the reference
    /// named an index.
    pub manifest_digest: Digest,
    /// The manifest's media type (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// The manifest as the registry served it, digest-verified.
    pub manifest_bytes: Bytes,
    /// The manifest, parsed; Docker schema 2 has the same shape. Every layer's media type has
    /// been checked to be one cairn unpacks.
    pub manifest: oci_spec::image::ImageManifest,
    /// When the reference named an index or manifest list: its digest and raw bytes.
    pub index: Option<(Digest, Bytes)>,
    /// The image config (`manifest.config()`), digest-verified.
    pub config_bytes: Bytes,
    /// The image's platform, as its config states it; it matches the configured platform.
    pub platform: Platform,
}

/// A client for the pull side of the OCI distribution API.
///
/// Cheap to clone: clones share one HTTP client per registry host, created on first use with
/// that host's credentials, and share bearer tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: RegistryConfig,
    helpers: HelperRunner,
    hosts: tokio::sync::Mutex<HashMap<String, Arc<Host>>>,
}

/// One registry host: its client and the credentials it was set up with.
pub(crate) struct Host {
    pub(crate) client: oci_client::Client,
    pub(crate) auth: RegistryAuth,
}

impl Host {
    pub(crate) fn with_credentials(&self) -> bool {
        self.auth != RegistryAuth::Anonymous
    }
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client with `config`. Nothing is read or connected until the first request.
    pub fn new(config: RegistryConfig) -> Self {
        // rustls needs one crypto provider per process; cairn's is *ring*. A program that
        // embeds cairn and installed its own first keeps it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        RegistryClient {
            inner: Arc::new(Inner {
                config,
                helpers: HelperRunner::default(),
                hosts: tokio::sync::Mutex::default(),
            }),
        }
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &RegistryConfig {
        &self.inner.config
    }

    /// Resolves `reference` to one image manifest for the configured platform.
    ///
    /// The manifest is fetched with every OCI and Docker schema-2 media type accepted, its
    /// digest checked (against the reference's digest when it has one) and its size capped at
    /// [`MAX_MANIFEST_SIZE`]. An index or manifest list is resolved to the entry that best
    /// matches the platform, which is then fetched by digest and verified the same way.
    /// Finally the image config is fetched and verified, and the platform it states checked
    /// against the configured one: a single-platform image for another platform is refused
    /// with [`RegistryError::NoMatchingPlatform`], as an index without a matching entry is.
    pub async fn resolve(
        &self,
        reference: &ImageReference,
    ) -> Result<ResolvedImage, RegistryError> {
        let span = tracing::info_span!("resolve", reference = %reference);
        self.resolve_inner(reference).instrument(span).await
    }

    async fn resolve_inner(
        &self,
        reference: &ImageReference,
    ) -> Result<ResolvedImage, RegistryError> {
        let host = self.host(reference).await?;
        let (bytes, digest) = self.fetch_manifest(&host, reference).await?;
        let name = reference.to_string();
        let (kind, media_type) = manifest::sniff(&bytes, &name)?;
        let (index, image_ref, bytes, digest, media_type) = match kind {
            ManifestKind::Image => (None, reference.clone(), bytes, digest, media_type),
            ManifestKind::Index => {
                let selected =
                    manifest::select_platform(&bytes, &self.inner.config.platform, &name)?;
                debug!(platform = %selected.platform, digest = %selected.digest, "picked index entry");
                let child = reference.with_digest(&selected.digest);
                let (child_bytes, child_digest) = self.fetch_manifest(&host, &child).await?;
                let (child_kind, child_type) = manifest::sniff(&child_bytes, &child.to_string())?;
                if child_kind != ManifestKind::Image {
                    return Err(RegistryError::UnsupportedMediaType {
                        reference: child.to_string(),
                        media_type: child_type,
                    });
                }
                (
                    Some((digest, bytes)),
                    child,
                    child_bytes,
                    child_digest,
                    child_type,
                )
            }
        };
        let image_name = image_ref.to_string();
        let manifest = manifest::parse_image(&bytes, &image_name)?;
        let config = manifest.config();
        let config_digest: Digest =
            config
                .digest()
                .as_ref()
                .parse()
                .map_err(|e| RegistryError::InvalidManifest {
                    reference: image_name.clone(),
                    reason: format!("config: {e}"),
                })?;
        let config_bytes = self
            .fetch_blob_bytes(&image_ref, &config_digest, config.size())
            .await?;
        let platform = manifest::check_config_platform(
            &config_bytes,
            &self.inner.config.platform,
            &image_name,
        )?;
        debug!(digest = %digest, platform = %platform, layers = manifest.layers().len(), "resolved");
        Ok(ResolvedImage {
            reference: reference.clone(),
            manifest_digest: digest,
            manifest_media_type: media_type,
            manifest_bytes: bytes,
            manifest,
            index,
            config_bytes,
            platform,
        })
    }

    /// Fetches one manifest, by tag or digest, and verifies its size and digest.
    async fn fetch_manifest(
        &self,
        host: &Host,
        reference: &ImageReference,
    ) -> Result<(Bytes, Digest), RegistryError> {
        let registry = reference.registry();
        let bytes = self
            .with_retries(registry, "manifest request", || async {
                host.client
                    .pull_manifest_raw(
                        reference.as_distribution_reference(),
                        &host.auth,
                        &ManifestKind::ACCEPTED,
                    )
                    .await
                    .map(|(bytes, _)| bytes)
                    .map_err(|e| match e {
                        // oci-client checks the body against the reference's digest and the
                        // registry's Docker-Content-Digest header.
                        OciDistributionError::DigestError(DigestError::VerificationError {
                            expected,
                            actual,
                        }) => match (expected.parse(), actual.parse()) {
                            (Ok(digest), Ok(actual)) => {
                                Failure::Fatal(RegistryError::DigestMismatch {
                                    registry: registry.to_owned(),
                                    what: "manifest",
                                    digest,
                                    actual,
                                })
                            }
                            _ => Failure::Fatal(RegistryError::Rejected {
                                registry: registry.to_owned(),
                                reference: reference.to_string(),
                                source: format!(
                                    "digest {expected} does not match content ({actual})"
                                )
                                .into(),
                            }),
                        },
                        other => {
                            classify(other, &Target::Manifest(reference), host.with_credentials())
                        }
                    })
            })
            .await?;
        // oci-client buffers the whole response, so this cap bounds what is kept and parsed,
        // not what is downloaded.
        if bytes.len() as u64 > MAX_MANIFEST_SIZE {
            return Err(RegistryError::TooLarge {
                registry: registry.to_owned(),
                what: format!("manifest {reference}"),
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let actual = Digest::sha256_of(&bytes);
        if let Some(pinned) = reference.digest() {
            if *pinned != actual {
                return Err(RegistryError::DigestMismatch {
                    registry: registry.to_owned(),
                    what: "manifest",
                    digest: pinned.clone(),
                    actual,
                });
            }
        }
        Ok((bytes, actual))
    }

    /// Streams blob `digest` of `reference`'s repository into `sink`.
    ///
    /// After a transient failure the download resumes where it stopped with a `Range`
    /// request; if the registry ignores the range and sends the whole blob, the part already
    /// received is skipped. No more than `expected_size` bytes are accepted, and the blob is
    /// verified against `digest` at the end: on error, what `sink` received must be thrown
    /// away. `progress` is called with the number of bytes received so far.
    pub async fn fetch_blob(
        &self,
        reference: &ImageReference,
        digest: &Digest,
        expected_size: u64,
        sink: &mut (dyn BlobSink + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let span = tracing::info_span!(
            "fetch_blob",
            reference = %reference,
            digest = %digest,
            size = expected_size
        );
        self.fetch_blob_inner(reference, digest, expected_size, sink, progress)
            .instrument(span)
            .await
    }

    async fn fetch_blob_inner(
        &self,
        reference: &ImageReference,
        digest: &Digest,
        expected_size: u64,
        sink: &mut (dyn BlobSink + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let host = self.host(reference).await?;
        let registry = reference.registry();
        let policy = &self.inner.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut hasher = Sha256Writer::new();
        let mut attempt = 0;
        // Attempts since the download last made progress: a connection that keeps breaking
        // but delivers bytes each time is let finish.
        let mut stalled = 0;
        loop {
            attempt += 1;
            let offset = hasher.written();
            if offset > 0 && offset == expected_size {
                break; // everything arrived before the failure
            }
            let failure = match self
                .blob_attempt(
                    &host,
                    reference,
                    digest,
                    expected_size,
                    &mut hasher,
                    sink,
                    progress,
                )
                .await
            {
                Ok(()) => break,
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(e)) => e,
            };
            if hasher.written() > offset {
                stalled = 0;
            }
            stalled += 1;
            if stalled >= max_attempts {
                return Err(RegistryError::Unreachable {
                    registry: registry.to_owned(),
                    attempts: attempt,
                    source: failure,
                });
            }
            let delay = policy.delay(stalled + 1);
            warn!(
                attempt,
                max_attempts,
                received = hasher.written(),
                delay_ms = delay.as_millis() as u64,
                error = %crate::error::chain(&*failure),
                "blob download failed transiently, resuming"
            );
            tokio::time::sleep(delay).await;
        }
        let received = hasher.written();
        if received != expected_size {
            return Err(RegistryError::SizeMismatch {
                registry: registry.to_owned(),
                digest: digest.clone(),
                expected: expected_size,
                actual: received,
            });
        }
        let actual = hasher.finish();
        if actual != *digest {
            return Err(RegistryError::DigestMismatch {
                registry: registry.to_owned(),
                what: "blob",
                digest: digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// One request for the rest of a blob, from `hasher.written()` on.
    #[allow(clippy::too_many_arguments)]
    async fn blob_attempt(
        &self,
        host: &Host,
        reference: &ImageReference,
        digest: &Digest,
        expected_size: u64,
        hasher: &mut Sha256Writer,
        sink: &mut (dyn BlobSink + Send),
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), Failure> {
        let image = reference.as_distribution_reference();
        let target = Target::Blob(reference, digest);
        let offset = hasher.written();
        let classify = |e| classify(e, &target, host.with_credentials());
        // `start` is the position in the blob of the stream's first byte.
        let (mut stream, start): (SizedStream, u64) = if offset == 0 {
            (
                host.client
                    .pull_blob_stream(image, digest.as_str())
                    .await
                    .map_err(classify)?,
                0,
            )
        } else {
            match host
                .client
                .pull_blob_stream_partial(image, digest.as_str(), offset, None)
                .await
                .map_err(classify)?
            {
                BlobResponse::Partial(s) => (s, offset),
                BlobResponse::Full(s) => {
                    debug!(
                        offset,
                        "registry ignored the range, skipping what was received"
                    );
                    (s, 0)
                }
            }
        };
        let mut pos = start;
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                // oci-client verifies full responses itself and reports a mismatch as the
                // stream's last item; the check below names the registry and the digests.
                Err(e) if e.get_ref().is_some_and(|inner| inner.is::<DigestError>()) => break,
                Err(e) => return Err(Failure::Transient(Box::new(e))),
            };
            let have = hasher.written();
            let chunk_end = pos + chunk.len() as u64;
            if chunk_end > have {
                // Skip the part of the chunk already received in an earlier attempt.
                let new = &chunk[usize::try_from(have.saturating_sub(pos)).unwrap_or(usize::MAX)..];
                if have + new.len() as u64 > expected_size {
                    return Err(Failure::Fatal(RegistryError::TooLarge {
                        registry: reference.registry().to_owned(),
                        what: format!("blob {digest}"),
                        limit: expected_size,
                    }));
                }
                sink.write_chunk(new).map_err(|source| {
                    Failure::Fatal(RegistryError::Sink {
                        digest: digest.clone(),
                        source,
                    })
                })?;
                hasher.update(new);
                progress(hasher.written());
            }
            pos = chunk_end;
        }
        Ok(())
    }

    /// Fetches a small blob (an image config) into memory, refusing more than `expected_size`
    /// bytes (and anything above [`MAX_IN_MEMORY_BLOB`]), and verifies its digest.
    pub async fn fetch_blob_bytes(
        &self,
        reference: &ImageReference,
        digest: &Digest,
        expected_size: u64,
    ) -> Result<Bytes, RegistryError> {
        if expected_size > MAX_IN_MEMORY_BLOB {
            return Err(RegistryError::TooLarge {
                registry: reference.registry().to_owned(),
                what: format!("blob {digest}"),
                limit: MAX_IN_MEMORY_BLOB,
            });
        }
        let mut buf = Vec::with_capacity(usize::try_from(expected_size).unwrap_or(0));
        self.fetch_blob(reference, digest, expected_size, &mut buf, &|_| {})
            .await?;
        Ok(Bytes::from(buf))
    }

    /// The client for `reference`'s registry, set up on first use.
    pub(crate) async fn host(
        &self,
        reference: &ImageReference,
    ) -> Result<Arc<Host>, RegistryError> {
        let registry = reference.registry();
        let mut hosts = self.inner.hosts.lock().await;
        if let Some(host) = hosts.get(registry) {
            return Ok(host.clone());
        }
        let config = &self.inner.config;
        let credentials = match &config.docker_config_dir {
            Some(dir) => {
                DockerConfig::load(dir)?
                    .credentials_for(registry, &self.inner.helpers)
                    .await?
            }
            None => None,
        };
        let auth = credentials.map_or(RegistryAuth::Anonymous, |c| c.to_registry_auth());
        let plain_http = config.is_plain_http(registry);
        debug!(registry, plain_http, auth = ?auth, "setting up registry client");
        let client = oci_client::Client::try_from(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(config.connect_timeout),
            read_timeout: Some(config.read_timeout),
            user_agent: config.user_agent,
            // Pushes stream each blob in one PUT: no per-chunk round trips, and a blob
            // that fails is sent again whole (blobs already there are skipped before).
            use_monolithic_push: true,
            ..ClientConfig::default()
        })
        .map_err(|e| RegistryError::HttpClient {
            registry: registry.to_owned(),
            source: Box::new(e),
        })?;
        // Blob requests take no credentials argument: oci-client looks them up by host.
        client
            .store_auth_if_needed(
                reference.as_distribution_reference().resolve_registry(),
                &auth,
            )
            .await;
        let host = Arc::new(Host { client, auth });
        hosts.insert(registry.to_owned(), host.clone());
        Ok(host)
    }

    /// Runs `op` until it succeeds, fails for good, or has failed transiently
    /// `max_attempts` times.
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        registry: &str,
        what: &str,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.inner.config.retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let source: BoxError = match op().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(source)) => source,
            };
            if attempt >= max_attempts {
                return Err(RegistryError::Unreachable {
                    registry: registry.to_owned(),
                    attempts: attempt,
                    source,
                });
            }
            let delay = policy.delay(attempt + 1);
            warn!(
                attempt,
                max_attempts,
                delay_ms = delay.as_millis() as u64,
                error = %crate::error::chain(&*source),
                "{what} failed transiently, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}
