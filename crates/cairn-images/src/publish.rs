//! Turning a snapshot chain into an image, and pushing images.
//!
//! A container's filesystem is a chain of committed snapshots: the layers of the image it
//! started from (each labelled with the blob it was unpacked from), then one snapshot per step
//! that changed it. [`Store::commit_image`] walks that chain bottom up. A snapshot unpacked from
//! a blob the store still holds is that blob again, byte for byte: never re-compressed, so the
//! registry finds it and nothing moves. Any other snapshot's upper directory is packed into a
//! new layer (see `cairn_snapshot::pack`), in the store's user namespace for a rootless store
//! so owners come out as the container's ids. Packed layers are remembered per snapshot, so
//! publishing the same result twice packs nothing the second time.
//!
//! The config and manifest go into the content store and the image is recorded like a pulled
//! one: `cairn images` lists it, `cairn export` writes it, [`Store::push`] pushes it. Its top
//! snapshot is named by its chain id as for pulled images (a committed, empty snapshot on top
//! of the chain, labelled [`ALIAS_LABEL`], when the chain's own names differ).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

use cairn_oci::{chain_ids, Digest, ImageReference, LayerCompression, Platform};
use cairn_registry::{PushBlob, PushReport};
use cairn_snapshot::pack::PackedLayer;
use cairn_snapshot::Snapshotter;
use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::store::LEASE_LABEL;
use crate::worker::PackRequest;
use crate::{ImageRecord, ImagesError, Store};

/// The label of the empty snapshot that names a published image's top by its chain id.
pub const ALIAS_LABEL: &str = "cairn.alias";

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blob_sources (
    digest TEXT NOT NULL,
    registry TEXT NOT NULL,
    repository TEXT NOT NULL,
    PRIMARY KEY (digest, registry, repository)
);
CREATE TABLE IF NOT EXISTS packed_layers (
    snapshot TEXT NOT NULL,
    created INTEGER NOT NULL,
    options TEXT NOT NULL,
    digest TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    PRIMARY KEY (snapshot, created, options)
);
";

/// The configuration of an image to publish: what containers of it run with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The working directory (`None`: `/`).
    pub workdir: Option<String>,
    /// The user (`None`: root).
    pub user: Option<String>,
    /// The entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments.
    pub cmd: Option<Vec<String>>,
    /// OCI labels.
    pub labels: BTreeMap<String, String>,
    /// Exposed ports, `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// The config of the image the chain started from: its platform and history are kept.
    pub base_config: Option<Digest>,
}

/// How to write the new layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitOptions {
    /// The compression of new layers (reused ones stay as they are).
    pub compression: LayerCompression,
    /// `SOURCE_DATE_EPOCH`: mtimes later than this are clamped to it, and it is the image's
    /// creation time.
    pub source_date_epoch: Option<u64>,
}

impl Default for CommitOptions {
    /// gzip, and `SOURCE_DATE_EPOCH` from the environment when it holds a number.
    fn default() -> Self {
        CommitOptions {
            compression: LayerCompression::Gzip,
            source_date_epoch: std::env::var("SOURCE_DATE_EPOCH")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
        }
    }
}

/// One layer of the image being assembled.
struct Layer {
    digest: Digest,
    size: u64,
    diff_id: Digest,
    media_type: &'static str,
    /// The snapshot it came from, for history.
    snapshot: String,
    reused: bool,
}

fn media_type(c: LayerCompression) -> &'static str {
    match c {
        LayerCompression::None => "application/vnd.oci.image.layer.v1.tar",
        LayerCompression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        LayerCompression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 in UTC for seconds since the epoch (the civil-from-days algorithm).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Store {
    /// Records that these blobs are in `repository` of `registry` (mount sources for pushes).
    pub(crate) fn record_blob_sources(
        &self,
        registry: &str,
        repository: &str,
        digests: &[Digest],
    ) -> Result<(), ImagesError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.db_err())?;
        for d in digests {
            tx.execute(
                "INSERT OR IGNORE INTO blob_sources (digest, registry, repository) VALUES (?1, ?2, ?3)",
                params![d.as_str(), registry, repository],
            )
            .map_err(self.db_err())?;
        }
        tx.commit().map_err(self.db_err())
    }

    /// Repositories of `registry` known to hold `digest`.
    fn blob_sources(&self, digest: &Digest, registry: &str) -> Result<Vec<String>, ImagesError> {
        let db = self.db();
        let mut stmt = db
            .prepare("SELECT repository FROM blob_sources WHERE digest = ?1 AND registry = ?2 ORDER BY repository")
            .map_err(self.db_err())?;
        let rows = stmt
            .query_map(params![digest.as_str(), registry], |r| r.get(0))
            .map_err(self.db_err())?;
        rows.collect::<Result<_, _>>().map_err(self.db_err())
    }

    /// Makes an image of the committed snapshot `top` (and its parents; `None`: no layers)
    /// with the configuration `spec`, and records it under `reference`.
    pub async fn commit_image(
        &self,
        reference: &str,
        top: Option<&str>,
        spec: &ImageSpec,
        options: &CommitOptions,
    ) -> Result<ImageRecord, ImagesError> {
        let parsed: ImageReference = reference.parse()?;
        let span = info_span!("commit_image", reference = %parsed, top = top.unwrap_or(""));
        self.commit_inner(parsed, top, spec, options)
            .instrument(span)
            .await
    }

    async fn commit_inner(
        &self,
        reference: ImageReference,
        top: Option<&str>,
        spec: &ImageSpec,
        options: &CommitOptions,
    ) -> Result<ImageRecord, ImagesError> {
        let name = reference.to_string();
        let snapshots = self.snapshots();
        let mut chain = Vec::new();
        let mut next = top.map(str::to_owned);
        while let Some(n) = next {
            let info = snapshots.stat(&n)?;
            next = info.parent.clone();
            chain.push(info);
        }
        chain.reverse();

        let mut layers: Vec<Layer> = Vec::new();
        for info in &chain {
            if info.labels.contains_key(ALIAS_LABEL) {
                continue;
            }
            if let Some(layer) = self.reusable_layer(info)? {
                layers.push(layer);
                continue;
            }
            let store = self.clone();
            let (snapshot, options_c) = (info.name.clone(), *options);
            let packed = tokio::task::spawn_blocking(move || store.pack(&snapshot, &options_c))
                .await
                .map_err(|e| ImagesError::Helper(format!("pack task failed: {e}")))??;
            if packed.entries == 0 {
                debug!(snapshot = %info.name, "no changes: no layer");
                continue;
            }
            layers.push(Layer {
                digest: packed.digest,
                size: packed.size,
                diff_id: packed.diff_id,
                media_type: media_type(options.compression),
                snapshot: info.name.clone(),
                reused: false,
            });
        }

        let base = match &spec.base_config {
            Some(digest) => match self.content().read_blob(digest) {
                Ok(bytes) => serde_json::from_slice::<Value>(&bytes).ok(),
                Err(e) => {
                    warn!(config = %digest, error = %e, "base image config unreadable; platform and history not kept");
                    None
                }
            },
            None => None,
        };
        let created = options
            .source_date_epoch
            .map_or_else(now, |e| i64::try_from(e).unwrap_or(i64::MAX));
        let config = build_config(&layers, spec, base.as_ref(), created);
        let config_bytes = serde_json::to_vec(&config).expect("json serialises");
        let config_digest = Digest::sha256_of(&config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": cairn_oci::media_types::OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest.as_str(),
                "size": config_bytes.len(),
            },
            "layers": layers.iter().map(|l| json!({
                "mediaType": l.media_type,
                "digest": l.digest.as_str(),
                "size": l.size,
            })).collect::<Vec<_>>(),
        });
        let manifest_bytes = serde_json::to_vec(&manifest).expect("json serialises");
        let manifest_digest = Digest::sha256_of(&manifest_bytes);
        let content_err = |what: &str| {
            let context = format!("{what} of {name}");
            move |source| ImagesError::Content { context, source }
        };
        self.content()
            .write_blob(&config_digest, &config_bytes)
            .map_err(content_err("config"))?;
        self.content()
            .write_blob(&manifest_digest, &manifest_bytes)
            .map_err(content_err("manifest"))?;

        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let top_chain = chain_ids(&diff_ids).pop();
        if let (Some(chain_id), Some(top)) = (&top_chain, top) {
            self.alias(chain_id, top)?;
        }
        let record = ImageRecord {
            reference: name.clone(),
            digest: manifest_digest,
            media_type: cairn_oci::media_types::OCI_MANIFEST.to_owned(),
            config: config_digest,
            top_snapshot: top_chain,
            size: manifest_bytes.len() as u64
                + config_bytes.len() as u64
                + layers.iter().map(|l| l.size).sum::<u64>(),
            created,
        };
        self.record_image(&record)?;
        info!(
            digest = %record.digest,
            layers = layers.len(),
            reused = layers.iter().filter(|l| l.reused).count(),
            "committed image"
        );
        Ok(record)
    }

    /// The blob a snapshot was unpacked from, when the store still holds it.
    fn reusable_layer(&self, info: &cairn_snapshot::Info) -> Result<Option<Layer>, ImagesError> {
        let (Some(layer), Some(diff_id)) = (
            info.labels.get("cairn.layer"),
            info.labels.get("cairn.diff-id"),
        ) else {
            return Ok(None);
        };
        let (Ok(digest), Ok(diff_id)) = (layer.parse::<Digest>(), diff_id.parse::<Digest>()) else {
            return Ok(None);
        };
        let Ok(Some(size)) = self.content().size(&digest) else {
            warn!(snapshot = %info.name, layer = %digest, "layer blob is gone from the store; packing the snapshot again");
            return Ok(None);
        };
        // The media type is read off the blob: gzip and zstd have magic numbers, tar has none.
        let mut magic = [0u8; 4];
        let mut file =
            self.content()
                .open_blob(&digest)
                .map_err(|source| ImagesError::Content {
                    context: format!("layer of snapshot {}", info.name),
                    source,
                })?;
        let n = file.read(&mut magic).unwrap_or(0);
        let compression = match &magic[..n] {
            [0x1f, 0x8b, ..] => LayerCompression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd] => LayerCompression::Zstd,
            _ => LayerCompression::None,
        };
        Ok(Some(Layer {
            digest,
            size,
            diff_id,
            media_type: media_type(compression),
            snapshot: info.name.clone(),
            reused: true,
        }))
    }

    /// Packs the upper directory of committed snapshot `name` into a blob in the content
    /// store, or finds the blob packed before with the same options.
    fn pack(&self, name: &str, options: &CommitOptions) -> Result<PackedLayer, ImagesError> {
        let info = self.snapshots().stat(name)?;
        let option_key = format!(
            "{:?}/{}",
            options.compression,
            options
                .source_date_epoch
                .map_or_else(String::new, |e| e.to_string())
        );
        let remembered = self
            .db()
            .query_row(
                "SELECT digest, diff_id, size, entries FROM packed_layers WHERE snapshot = ?1 AND created = ?2 AND options = ?3",
                params![name, info.created, option_key],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.db_err())?;
        if let Some((digest, diff_id, size, entries)) = remembered {
            if let (Ok(digest), Ok(diff_id)) = (digest.parse::<Digest>(), diff_id.parse()) {
                if entries == 0 || self.content().contains(&digest).unwrap_or(false) {
                    debug!(snapshot = name, %digest, "packed before");
                    return Ok(PackedLayer {
                        digest,
                        size: size as u64,
                        diff_id,
                        entries: entries as u64,
                    });
                }
            }
        }

        let layers = self.snapshots().layer_dirs(name)?;
        let upper = layers
            .last()
            .cloned()
            .expect("a snapshot has its own directory");
        let tmp_dir = self.root().join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| ImagesError::Store {
            path: tmp_dir.clone(),
            message: e.to_string(),
        })?;
        let out = tmp_dir.join(format!("pack-{:016x}", rand::random::<u64>()));
        let request = PackRequest {
            upper,
            out: out.clone(),
            userxattr: self.is_rootless(),
            compression: options.compression.into(),
            source_date_epoch: options.source_date_epoch,
        };
        let result = (|| -> Result<PackedLayer, ImagesError> {
            let packed =
                self.inner
                    .worker
                    .pack(request)?
                    .map_err(|message| ImagesError::Publish {
                        snapshot: name.to_owned(),
                        message,
                    })?;
            if packed.entries > 0 {
                self.ingest_file(&out, &packed.digest, packed.size)?;
            }
            Ok(packed)
        })();
        let _ = std::fs::remove_file(&out);
        let packed = result?;
        self.db()
            .execute(
                "INSERT OR REPLACE INTO packed_layers (snapshot, created, options, digest, diff_id, size, entries) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    name,
                    info.created,
                    option_key,
                    packed.digest.as_str(),
                    packed.diff_id.as_str(),
                    packed.size as i64,
                    packed.entries as i64
                ],
            )
            .map_err(self.db_err())?;
        info!(snapshot = name, digest = %packed.digest, size = packed.size, entries = packed.entries, "packed layer");
        Ok(packed)
    }

    /// Copies a file into the content store, verified against `digest`.
    fn ingest_file(&self, path: &PathBuf, digest: &Digest, size: u64) -> Result<(), ImagesError> {
        let context = || format!("packed layer {digest}");
        if self.content().contains(digest).unwrap_or(false) {
            return Ok(());
        }
        let mut writer =
            self.content()
                .writer(digest, size)
                .map_err(|source| ImagesError::Content {
                    context: context(),
                    source,
                })?;
        let mut file = std::fs::File::open(path).map_err(|e| ImagesError::Store {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| ImagesError::Store {
                path: path.clone(),
                message: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            writer
                .write_chunk(&buf[..n])
                .map_err(|source| ImagesError::Content {
                    context: context(),
                    source,
                })?;
        }
        writer.commit().map_err(|source| ImagesError::Content {
            context: context(),
            source,
        })
    }

    /// Names the committed snapshot `top` also by the chain id `chain_id`: an empty committed
    /// snapshot on top of it, unless `chain_id` exists already.
    fn alias(&self, chain_id: &Digest, top: &str) -> Result<(), ImagesError> {
        if chain_id.as_str() == top {
            return Ok(());
        }
        let snapshots = self.snapshots();
        match snapshots.stat(chain_id.as_str()) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == cairn_snapshot::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let key = format!("alias-{}-{}", self.lease(), chain_id.hex());
        let lease = BTreeMap::from([(LEASE_LABEL.to_owned(), self.lease().to_owned())]);
        snapshots.prepare(&key, Some(top), &lease)?;
        let labels = BTreeMap::from([(ALIAS_LABEL.to_owned(), top.to_owned())]);
        match snapshots.commit(chain_id.as_str(), &key, &labels) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = snapshots.remove(&key);
                if e.kind() == cairn_snapshot::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Pushes the store's image `name` to `dest` (default: its own reference): only blobs the
    /// registry lacks, mounted from another repository of the same registry when the store
    /// knows one that has them; then the manifest.
    pub async fn push(&self, name: &str, dest: Option<&str>) -> Result<PushReport, ImagesError> {
        let image = self.image(name)?;
        let dest: ImageReference = dest.unwrap_or(&image.reference).parse()?;
        let invalid = |reason: String| ImagesError::InvalidManifest {
            image: image.reference.clone(),
            digest: image.digest.clone(),
            reason,
        };
        let manifest_bytes =
            self.content()
                .read_blob(&image.digest)
                .map_err(|source| ImagesError::Content {
                    context: format!("manifest of {}", image.reference),
                    source,
                })?;
        let manifest: Value = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| invalid(format!("not JSON: {e}")))?;
        let descriptor = |v: &Value| -> Result<(Digest, u64), ImagesError> {
            let digest = v["digest"]
                .as_str()
                .ok_or_else(|| invalid("descriptor without digest".into()))?
                .parse::<Digest>()
                .map_err(|e| invalid(e.to_string()))?;
            let size = v["size"]
                .as_u64()
                .ok_or_else(|| invalid(format!("descriptor {digest} without size")))?;
            Ok((digest, size))
        };
        let mut wanted = vec![descriptor(&manifest["config"])?];
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            wanted.push(descriptor(layer)?);
        }
        let registry = dest.registry().to_owned();
        let mut blobs = Vec::new();
        for (digest, size) in &wanted {
            if !self.content().contains(digest).unwrap_or(false) {
                return Err(ImagesError::Content {
                    context: format!("push of {}", image.reference),
                    source: cairn_content::ContentError::NotFound(digest.clone()),
                });
            }
            blobs.push(PushBlob {
                digest: digest.clone(),
                size: *size,
                path: self.content().blob_path(digest),
                mount_from: self.blob_sources(digest, &registry)?,
            });
        }
        let report = self
            .inner
            .registry
            .push_image(&dest, &blobs, &manifest_bytes, &image.media_type)
            .await?;
        let digests: Vec<Digest> = wanted.into_iter().map(|(d, _)| d).collect();
        self.record_blob_sources(&registry, dest.repository(), &digests)?;
        Ok(report)
    }
}

/// The image config: the base image's platform and history, the spec's settings, and the
/// layers' diff ids.
fn build_config(layers: &[Layer], spec: &ImageSpec, base: Option<&Value>, created: i64) -> Value {
    let host = Platform::host();
    let field = |name: &str| base.and_then(|b| b[name].as_str()).map(str::to_owned);
    let mut config = serde_json::Map::new();
    if !spec.env.is_empty() {
        config.insert("Env".into(), json!(spec.env));
    }
    if let Some(w) = spec.workdir.as_ref().filter(|w| !w.is_empty()) {
        config.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = spec.user.as_ref().filter(|u| !u.is_empty()) {
        config.insert("User".into(), json!(u));
    }
    if let Some(e) = &spec.entrypoint {
        config.insert("Entrypoint".into(), json!(e));
    }
    if let Some(c) = &spec.cmd {
        config.insert("Cmd".into(), json!(c));
    }
    if !spec.labels.is_empty() {
        config.insert("Labels".into(), json!(spec.labels));
    }
    if !spec.exposed_ports.is_empty() {
        let ports: serde_json::Map<String, Value> = spec
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), json!({})))
            .collect();
        config.insert("ExposedPorts".into(), Value::Object(ports));
    }

    // History: the base image's, when it describes exactly the reused layers at the bottom;
    // then one entry per new layer.
    let reused_bottom = layers.iter().take_while(|l| l.reused).count();
    let base_history: Vec<Value> = base
        .and_then(|b| b["history"].as_array().cloned())
        .unwrap_or_default();
    let base_layers = base_history
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .count();
    let stamp = rfc3339(created);
    let (mut history, start) = if !base_history.is_empty() && base_layers == reused_bottom {
        (base_history, reused_bottom)
    } else {
        (Vec::new(), 0)
    };
    for layer in &layers[start..] {
        history.push(json!({
            "created": stamp,
            "created_by": format!("cairn: {}", layer.snapshot),
        }));
    }

    let mut out = serde_json::Map::new();
    out.insert("created".into(), json!(stamp));
    out.insert(
        "architecture".into(),
        json!(field("architecture").unwrap_or(host.architecture)),
    );
    out.insert("os".into(), json!(field("os").unwrap_or(host.os)));
    if let Some(v) = field("variant").or(host.variant.filter(|_| base.is_none())) {
        out.insert("variant".into(), json!(v));
    }
    out.insert("config".into(), Value::Object(config));
    out.insert(
        "rootfs".into(),
        json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.as_str()).collect::<Vec<_>>(),
        }),
    );
    out.insert("history".into(), Value::Array(history));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn config_keeps_base_history_for_reused_layers() {
        let d = |s: &[u8]| Digest::sha256_of(s);
        let layer = |n: &[u8], reused| Layer {
            digest: d(n),
            size: 1,
            diff_id: d(&[n, b"-diff"].concat()),
            media_type: media_type(LayerCompression::Gzip),
            snapshot: String::from_utf8_lossy(n).into_owned(),
            reused,
        };
        let layers = [layer(b"base", true), layer(b"exec-1", false)];
        let base = json!({
            "architecture": "arm64", "os": "linux", "variant": "v8",
            "history": [{"created_by": "ADD rootfs"}, {"created_by": "CMD sh", "empty_layer": true}],
        });
        let spec = ImageSpec {
            entrypoint: Some(vec!["/bin/hello".into()]),
            labels: BTreeMap::from([("a".into(), "b".into())]),
            exposed_ports: BTreeSet::from(["80/tcp".into()]),
            ..ImageSpec::default()
        };
        let config = build_config(&layers, &spec, Some(&base), 1_700_000_000);
        assert_eq!(config["architecture"], "arm64");
        assert_eq!(config["variant"], "v8");
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(config["config"]["Entrypoint"], json!(["/bin/hello"]));
        assert_eq!(config["config"]["Labels"], json!({"a": "b"}));
        assert_eq!(config["config"]["ExposedPorts"], json!({"80/tcp": {}}));
        assert_eq!(config["history"].as_array().unwrap().len(), 3);
        assert_eq!(config["history"][2]["created_by"], "cairn: exec-1");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([layers[0].diff_id.as_str(), layers[1].diff_id.as_str()])
        );
        // A base history that does not match the layers is replaced.
        let config = build_config(&layers[1..], &spec, Some(&base), 0);
        assert_eq!(config["history"].as_array().unwrap().len(), 1);
    }
}
