//! Pulling: resolve, download layers concurrently, unpack them in order as they arrive.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_content::BlobWriter;
use cairn_oci::{chain_ids, Digest, ImageReference, ImageSource, LayerCompression};
use cairn_registry::BlobSink;
use cairn_snapshot::{Kind, Snapshotter};
use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use tokio::sync::Semaphore;
use tracing::{debug, info_span, warn, Instrument};

use crate::store::{Inner, LEASE_LABEL};
use crate::worker::ApplyRequest;
use crate::{ImageRecord, ImagesError, Store};

/// Hooks for showing a pull's progress. Every method has an empty default; `()` shows nothing.
pub trait PullProgress: Send + Sync {
    /// The reference resolved to `digest` with these layers (digest, compressed size).
    fn resolved(&self, _reference: &str, _digest: &Digest, _layers: &[(Digest, u64)]) {}
    /// `done` of `total` bytes of a layer have arrived.
    fn downloading(&self, _layer: &Digest, _done: u64, _total: u64) {}
    /// The layer's blob was already in the store.
    fn already_present(&self, _layer: &Digest) {}
    /// The layer is being unpacked.
    fn unpacking(&self, _layer: &Digest) {}
    /// The layer is unpacked and committed (or was already).
    fn unpacked(&self, _layer: &Digest) {}
}

impl PullProgress for () {}

/// Feeds a registry stream into a blob writer, keeping the writer's own error.
struct WriterSink<'a> {
    writer: &'a mut BlobWriter,
    failure: Option<cairn_content::ContentError>,
}

impl BlobSink for WriterSink<'_> {
    fn write_chunk(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.writer.write_chunk(chunk).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            self.failure = Some(e);
            io
        })
    }
}

/// A download task that is cancelled when the pull that started it returns early (an error
/// in another layer), instead of running on while the runtime shuts down.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Device nodes a rootless unpack had to leave out, across an image's layers.
#[derive(Default)]
pub(crate) struct SkippedDevices {
    count: usize,
    first: Option<std::path::PathBuf>,
}

/// What the manifest and config of an image say about its layers, checked against each
/// other: shared by pull and import so both refuse the same malformed images.
pub(crate) struct ImageParts {
    pub(crate) config_digest: Digest,
    pub(crate) config_size: u64,
    /// Layer blobs in order: digest, compressed size, compression.
    pub(crate) layers: Vec<(Digest, u64, LayerCompression)>,
    pub(crate) diff_ids: Vec<Digest>,
    pub(crate) chains: Vec<Digest>,
}

impl ImageParts {
    pub(crate) fn parse(
        name: &str,
        manifest_digest: &Digest,
        manifest: &ImageManifest,
        config_bytes: &[u8],
    ) -> Result<ImageParts, ImagesError> {
        let config_desc = manifest.config();
        let config_digest: Digest =
            config_desc
                .digest()
                .to_string()
                .parse()
                .map_err(|e| ImagesError::InvalidManifest {
                    image: name.to_owned(),
                    digest: manifest_digest.clone(),
                    reason: format!("invalid config digest: {e}"),
                })?;
        let invalid_config = |reason: String| ImagesError::InvalidConfig {
            image: name.to_owned(),
            config: config_digest.clone(),
            reason,
        };
        let config: ImageConfiguration = serde_json::from_slice(config_bytes)
            .map_err(|e| invalid_config(format!("not an image config: {e}")))?;
        let diff_ids: Vec<Digest> = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| {
                d.parse()
                    .map_err(|e| invalid_config(format!("bad diff id {d:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;

        let mut layers = Vec::new();
        for desc in manifest.layers() {
            let digest: Digest = desc.digest().to_string().parse().map_err(|e| {
                invalid_config(format!("manifest names an invalid layer digest: {e}"))
            })?;
            let compression = LayerCompression::from_media_type(desc.media_type().as_ref())
                .map_err(|e| invalid_config(format!("layer {digest}: {e}")))?;
            layers.push((digest, desc.size(), compression));
        }
        if diff_ids.len() != layers.len() {
            return Err(invalid_config(format!(
                "{} diff ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let chains = chain_ids(&diff_ids);
        Ok(ImageParts {
            config_digest,
            config_size: config_bytes.len() as u64,
            layers,
            diff_ids,
            chains,
        })
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Store {
    /// Pulls an image into the store and records it under its reference. Layers already in the
    /// store are neither downloaded nor unpacked again. An archive source (`oci:DIR[:TAG]`,
    /// `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`) is imported instead, under the
    /// name the archive gives the image (see [`Store::import_source`]).
    pub async fn pull(
        &self,
        reference: &str,
        progress: &dyn PullProgress,
    ) -> Result<ImageRecord, ImagesError> {
        let reference = match reference.parse::<ImageSource>()? {
            ImageSource::Registry(r) => r,
            archive => return self.import_source(&archive, None, progress).await,
        };
        let span = info_span!("pull", reference = %reference);
        self.pull_inner(reference, progress).instrument(span).await
    }

    async fn pull_inner(
        &self,
        reference: ImageReference,
        progress: &dyn PullProgress,
    ) -> Result<ImageRecord, ImagesError> {
        let inner = &self.inner;
        let name = reference.to_string();
        let resolved = inner.registry.resolve(&reference).await?;
        let content_err = |context: String| move |source| ImagesError::Content { context, source };
        let store_blob = |digest: &Digest, bytes: &[u8], what: &str| {
            inner
                .content
                .write_blob(digest, bytes)
                .map_err(content_err(format!(
                    "{what} of {name} from {}",
                    reference.registry()
                )))
        };
        if let Some((index_digest, index_bytes)) = &resolved.index {
            store_blob(index_digest, index_bytes, "index")?;
        }
        store_blob(
            &resolved.manifest_digest,
            &resolved.manifest_bytes,
            "manifest",
        )?;

        // The registry client fetched and verified the config while checking its platform.
        let config_bytes = resolved.config_bytes.to_vec();
        let parts = ImageParts::parse(
            &name,
            &resolved.manifest_digest,
            &resolved.manifest,
            &config_bytes,
        )?;
        store_blob(&parts.config_digest, &config_bytes, "config")?;
        let layers = &parts.layers;
        let sizes: Vec<(Digest, u64)> = layers.iter().map(|(d, s, _)| (d.clone(), *s)).collect();
        progress.resolved(&name, &resolved.manifest_digest, &sizes);

        // Downloads run ahead, a few at a time; unpacking follows in layer order.
        let limit = Arc::new(Semaphore::new(inner.max_concurrent_downloads));
        let mut downloads = Vec::new();
        for (digest, size, _) in layers.iter() {
            if inner.content.contains(digest).unwrap_or(false) {
                progress.already_present(digest);
                downloads.push(None);
                continue;
            }
            let (store, reference, digest, size, limit) = (
                self.clone(),
                reference.clone(),
                digest.clone(),
                *size,
                limit.clone(),
            );
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
            let task = tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore open");
                store.download(&reference, &digest, size, tx).await
            });
            downloads.push(Some((AbortOnDrop(task), rx)));
        }

        let mut skipped = SkippedDevices::default();
        for (i, (digest, _size, _)) in layers.iter().enumerate() {
            if let Some((task, mut rx)) = downloads[i].take() {
                let total = layers[i].1;
                // Forward progress while this layer arrives; later ones keep downloading.
                let mut task = task;
                loop {
                    tokio::select! {
                        done = rx.recv() => if let Some(done) = done {
                            progress.downloading(digest, done, total);
                        },
                        result = &mut task.0 => {
                            result.map_err(|e| ImagesError::Helper(format!("download task failed: {e}")))??;
                            break;
                        }
                    }
                }
            }
            self.unpack_layer_of(&name, &parts, i, progress, &mut skipped)
                .await?;
        }
        // Where these blobs live, so a push to another repository of this registry can
        // mount them instead of uploading.
        let mut blobs: Vec<Digest> = parts.layers.iter().map(|(d, _, _)| d.clone()).collect();
        blobs.push(parts.config_digest.clone());
        let record = self.finish_image(
            name,
            resolved.manifest_digest.clone(),
            resolved.manifest_media_type.clone(),
            resolved.manifest_bytes.len() as u64,
            parts,
            skipped,
        )?;
        self.record_blob_sources(reference.registry(), reference.repository(), &blobs)?;
        Ok(record)
    }

    /// Unpacks layer `i` of an image whose blobs are in the content store (the step that pull
    /// and import share), on a blocking thread.
    pub(crate) async fn unpack_layer_of(
        &self,
        name: &str,
        parts: &ImageParts,
        i: usize,
        progress: &dyn PullProgress,
        skipped: &mut SkippedDevices,
    ) -> Result<(), ImagesError> {
        let (digest, _, compression) = &parts.layers[i];
        let parent = i.checked_sub(1).map(|p| parts.chains[p].clone());
        progress.unpacking(digest);
        let store = self.clone();
        let (chain, diff_id, digest_c, compression, image) = (
            parts.chains[i].clone(),
            parts.diff_ids[i].clone(),
            digest.clone(),
            *compression,
            name.to_owned(),
        );
        let devices = tokio::task::spawn_blocking(move || {
            store.unpack(
                &image,
                &digest_c,
                compression,
                &chain,
                parent.as_ref(),
                &diff_id,
            )
        })
        .await
        .map_err(|e| ImagesError::Helper(format!("unpack task failed: {e}")))??;
        if let Some(first) = devices.first() {
            skipped.first.get_or_insert_with(|| first.clone());
            skipped.count += devices.len();
        }
        progress.unpacked(digest);
        Ok(())
    }

    /// Records an image whose layers are all unpacked: the last step of pull and import, so
    /// an image is listed only once everything it needs is in the store.
    pub(crate) fn finish_image(
        &self,
        name: String,
        manifest_digest: Digest,
        media_type: String,
        manifest_size: u64,
        parts: ImageParts,
        skipped: SkippedDevices,
    ) -> Result<ImageRecord, ImagesError> {
        if skipped.count > 0 {
            warn!(
                image = %name,
                count = skipped.count,
                first = %skipped.first.unwrap_or_default().display(),
                "device nodes cannot be created without root and were left out"
            );
        }
        let size =
            manifest_size + parts.config_size + parts.layers.iter().map(|(_, s, _)| s).sum::<u64>();
        let record = ImageRecord {
            reference: name,
            digest: manifest_digest,
            media_type,
            config: parts.config_digest,
            top_snapshot: parts.chains.last().cloned(),
            size,
            created: now(),
        };
        self.record_image(&record)?;
        Ok(record)
    }

    fn is_unpacked(&self, chain: &Digest) -> Result<bool, ImagesError> {
        match self.inner.snapshots.stat(chain.as_str()) {
            Ok(info) => Ok(info.kind == Kind::Committed),
            Err(e) if e.kind() == cairn_snapshot::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn download(
        &self,
        reference: &ImageReference,
        digest: &Digest,
        size: u64,
        progress: tokio::sync::mpsc::UnboundedSender<u64>,
    ) -> Result<(), ImagesError> {
        let inner: &Inner = &self.inner;
        if inner.content.contains(digest).unwrap_or(false) {
            return Ok(());
        }
        let context = || format!("layer {digest} from registry {}", reference.registry());
        let mut writer =
            inner
                .content
                .writer(digest, size)
                .map_err(|source| ImagesError::Content {
                    context: context(),
                    source,
                })?;
        let mut sink = WriterSink {
            writer: &mut writer,
            failure: None,
        };
        let report = move |done| {
            let _ = progress.send(done);
        };
        let fetched = inner
            .registry
            .fetch_blob(reference, digest, size, &mut sink, &report)
            .await;
        if let Some(source) = sink.failure.take() {
            return Err(ImagesError::Content {
                context: context(),
                source,
            });
        }
        fetched?;
        writer.commit().map_err(|source| ImagesError::Content {
            context: context(),
            source,
        })?;
        debug!(%digest, size, "downloaded layer");
        Ok(())
    }

    /// Unpacks one layer as the committed snapshot `chain`, unless it already is. Returns the
    /// device nodes that could not be created.
    fn unpack(
        &self,
        image: &str,
        layer: &Digest,
        compression: LayerCompression,
        chain: &Digest,
        parent: Option<&Digest>,
        diff_id: &Digest,
    ) -> Result<Vec<std::path::PathBuf>, ImagesError> {
        let inner = &self.inner;
        // One unpacker per layer across all processes; the others wait and then find it done.
        let lock_path = inner.root.join("locks").join(chain.hex());
        let _lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .and_then(|f: File| Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| e.into()))
            .map_err(|e| ImagesError::Store {
                path: lock_path.clone(),
                message: e.to_string(),
            })?;
        if self.is_unpacked(chain)? {
            return Ok(Vec::new());
        }
        let key = format!("extract-{}-{}", inner.lease, chain.hex());
        let labels = BTreeMap::from([(LEASE_LABEL.to_owned(), inner.lease.clone())]);
        let mounts = inner
            .snapshots
            .prepare(&key, parent.map(Digest::as_str), &labels)?;
        let result = (|| {
            let mount = &mounts[0];
            let upper = mount.writable_dir().ok_or_else(|| {
                ImagesError::Helper(format!("snapshot {key} has no writable directory"))
            })?;
            let request = ApplyRequest {
                blob: inner.content.blob_path(layer),
                compression: compression.into(),
                upper,
                lowers: mount.lower_dirs(),
                userxattr: inner.rootless,
            };
            let applied = inner
                .worker
                .apply(request)?
                .map_err(|message| ImagesError::Layer {
                    image: image.to_owned(),
                    layer: layer.clone(),
                    message,
                })?;
            if &applied.diff_id != diff_id {
                return Err(ImagesError::DiffIdMismatch {
                    image: image.to_owned(),
                    layer: layer.clone(),
                    expected: diff_id.clone(),
                    actual: applied.diff_id,
                });
            }
            // Durable before it is recorded as complete: one syncfs for the whole layer
            // instead of an fsync per file.
            if let Ok(f) = File::open(inner.root.join("snapshots")) {
                let _ = nix::unistd::syncfs(&f);
            }
            let labels = BTreeMap::from([
                ("cairn.layer".to_owned(), layer.to_string()),
                ("cairn.diff-id".to_owned(), diff_id.to_string()),
            ]);
            inner.snapshots.commit(chain.as_str(), &key, &labels)?;
            debug!(%layer, %chain, entries = applied.entries, "unpacked layer");
            Ok(applied.skipped_devices)
        })();
        if result.is_err() {
            if let Err(e) = inner.snapshots.remove(&key) {
                warn!(snapshot = %key, error = %e, "could not remove failed snapshot; it will be cleaned up later");
            }
        }
        result
    }
}
