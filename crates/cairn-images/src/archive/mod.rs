//! Image archives: writing a store image as an OCI image layout (a directory or a tar of one)
//! or as a `docker save` tar, and importing any of them back.
//!
//! Export copies blobs out of the content store byte for byte, checking each against its digest
//! on the way, so an exported OCI layout names the very manifest digest the registry served.
//! A docker-archive holds its layers as plain tars (the one form every `docker load` and
//! `podman load` accepts, and the one whose digest is the config's diff id), so there the
//! compressed blobs are decompressed, and the decompressed bytes are checked against the diff
//! ids instead. Everything is written under a temporary name beside the destination and renamed
//! into place at the end: a killed export leaves only a `.NAME.cairn-partial-PID` behind.
//!
//! Import reads members in place (see [`read`]), streams every blob into the content store,
//! which refuses bytes that do not match the digest they are stored under, and then unpacks the
//! layers with the same code a pull uses. The image is recorded last, so an import that fails
//! at any point leaves no image behind; blobs it verified stay for the next attempt.

mod read;

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};

use cairn_oci::media_types::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use cairn_oci::{
    valid_ref_name, Digest, ImageReference, ImageSource, LayerCompression, Platform, Sha256Writer,
};
use oci_spec::image::ImageManifest;
use serde::Deserialize;
use tracing::{debug, info_span, Instrument};

use self::read::{member_err, whole, ArchiveReader, MAX_JSON};
use crate::pull::{ImageParts, SkippedDevices};
use crate::{ImageRecord, ImagesError, PullProgress, Store};

/// What `cairn export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout directory.
    OciLayout,
    /// A tar of an OCI image layout.
    OciArchive,
    /// A `docker save` tar: `manifest.json`, the config and uncompressed layer tars.
    DockerArchive,
}

impl ArchiveFormat {
    /// The transport prefix that names this format in an image source.
    pub fn transport(self) -> &'static str {
        match self {
            ArchiveFormat::OciLayout => "oci",
            ArchiveFormat::OciArchive => "oci-archive",
            ArchiveFormat::DockerArchive => "docker-archive",
        }
    }

    /// Which format the archive at `path` is: a directory is an OCI layout; a tar with
    /// `index.json` an OCI archive (Docker 25 writes both files; the OCI view is preferred);
    /// a tar with only `manifest.json` a docker archive.
    pub fn detect(path: &Path) -> Result<ArchiveFormat, ImagesError> {
        let reader = ArchiveReader::open(path)?;
        detect_format(&reader)
    }
}

fn detect_format(reader: &ArchiveReader) -> Result<ArchiveFormat, ImagesError> {
    let oci = reader.contains("index.json");
    if reader.is_dir() {
        return if oci {
            Ok(ArchiveFormat::OciLayout)
        } else {
            Err(whole(
                reader.path(),
                "a directory without index.json is not an OCI image layout".into(),
            ))
        };
    }
    if oci {
        Ok(ArchiveFormat::OciArchive)
    } else if reader.contains("manifest.json") {
        Ok(ArchiveFormat::DockerArchive)
    } else {
        Err(whole(
            reader.path(),
            "neither an OCI archive (no index.json) nor a docker archive (no manifest.json)".into(),
        ))
    }
}

const OCI_LAYOUT_FILE: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
    #[serde(default)]
    platform: Option<EntryPlatform>,
}

#[derive(Deserialize, Clone)]
struct EntryPlatform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The manifest an archive's index or `manifest.json` selects, ready to import.
struct Selected {
    /// The name the archive gives the image, if it gives a usable one.
    name: Option<String>,
    manifest_digest: Digest,
    media_type: String,
    manifest_bytes: Vec<u8>,
    manifest: ImageManifest,
    config_bytes: Vec<u8>,
    /// Where each layer blob is in the archive.
    layer_members: Vec<String>,
}

fn blob_member(digest: &Digest) -> String {
    let (algorithm, hex) = digest
        .as_str()
        .split_once(':')
        .unwrap_or(("sha256", digest.hex()));
    format!("blobs/{algorithm}/{hex}")
}

/// Reads a JSON blob of an OCI layout, checking size and digest against its descriptor.
fn read_blob(
    reader: &ArchiveReader,
    digest: &Digest,
    size: u64,
    what: &str,
) -> Result<Vec<u8>, ImagesError> {
    let member = blob_member(digest);
    let bytes = reader
        .read_small(&member, MAX_JSON.min(size.max(1)))
        .map_err(|e| match e {
            ImagesError::ArchiveMember {
                archive,
                member,
                message,
            } => ImagesError::ArchiveMember {
                archive,
                member,
                message: format!("{what} {digest}: {message}"),
            },
            other => other,
        })?;
    let actual = Digest::sha256_of(&bytes);
    if &actual != digest || bytes.len() as u64 != size {
        return Err(member_err(
            reader.path(),
            &member,
            format!(
                "{what} is {} bytes with digest {actual}, but is named {digest} of {size} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

fn parse_digest(reader: &ArchiveReader, member: &str, text: &str) -> Result<Digest, ImagesError> {
    text.parse().map_err(|e| {
        member_err(
            reader.path(),
            member,
            format!("invalid digest {text:?}: {e}"),
        )
    })
}

/// Picks the index entry to import: the one named `tag`, or the only one; an entry that is
/// itself an index is resolved to this host's platform.
fn select_oci(reader: &ArchiveReader, tag: Option<&str>) -> Result<Selected, ImagesError> {
    let path = reader.path();
    let layout = reader.read_small("oci-layout", 4096)?;
    let layout: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| member_err(path, "oci-layout", format!("not JSON: {e}")))?;
    if layout.get("imageLayoutVersion").is_none() {
        return Err(member_err(
            path,
            "oci-layout",
            "has no imageLayoutVersion".into(),
        ));
    }
    let index_bytes = reader.read_small("index.json", MAX_JSON)?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| member_err(path, "index.json", format!("not an OCI index: {e}")))?;
    let entry_name = |e: &IndexEntry| e.annotations.get(REF_NAME).cloned();
    let entry = match tag {
        Some(tag) => {
            let exact: Vec<&IndexEntry> = index
                .manifests
                .iter()
                .filter(|e| entry_name(e).as_deref() == Some(tag))
                .collect();
            let found = if exact.is_empty() {
                // `:latest` also finds an entry named `registry/repo:latest`.
                index
                    .manifests
                    .iter()
                    .filter(|e| {
                        entry_name(e)
                            .and_then(|n| n.parse::<ImageReference>().ok())
                            .is_some_and(|r| r.tag() == Some(tag))
                    })
                    .collect()
            } else {
                exact
            };
            match found.as_slice() {
                [one] => (*one).clone(),
                [] => {
                    return Err(member_err(
                        path,
                        "index.json",
                        format!("no image named {tag:?}; it names {}", names(&index)),
                    ))
                }
                _ => {
                    return Err(member_err(
                        path,
                        "index.json",
                        format!("{} images are named {tag:?}", found.len()),
                    ))
                }
            }
        }
        None => match index.manifests.as_slice() {
            [one] => one.clone(),
            [] => return Err(member_err(path, "index.json", "names no image".into())),
            _ => {
                return Err(member_err(
                    path,
                    "index.json",
                    format!(
                        "holds {} images ({}); name one with :NAME after the path",
                        index.manifests.len(),
                        names(&index)
                    ),
                ))
            }
        },
    };
    let name = entry
        .annotations
        .get(CONTAINERD_NAME)
        .cloned()
        .or_else(|| entry_name(&entry));
    let mut entry = entry;
    // A nested index (skopeo copy --all, buildx): pick this host's platform.
    for _ in 0..4 {
        let media_type = entry.media_type.clone().unwrap_or_default();
        if media_type != OCI_INDEX && media_type != DOCKER_MANIFEST_LIST {
            break;
        }
        let digest = parse_digest(reader, "index.json", &entry.digest)?;
        let bytes = read_blob(reader, &digest, entry.size, "index")?;
        let nested: Index = serde_json::from_slice(&bytes).map_err(|e| {
            member_err(
                path,
                &blob_member(&digest),
                format!("not an OCI index: {e}"),
            )
        })?;
        let host = Platform::host();
        let best = nested
            .manifests
            .iter()
            .filter_map(|e| {
                let p = e.platform.as_ref()?;
                host.match_score(&p.os, &p.architecture, p.variant.as_deref())
                    .map(|s| (s, e))
            })
            .max_by_key(|(s, _)| *s);
        let Some((_, best)) = best else {
            return Err(member_err(
                path,
                &blob_member(&digest),
                format!("the index has no image for {host}"),
            ));
        };
        entry = best.clone();
    }
    let manifest_digest = parse_digest(reader, "index.json", &entry.digest)?;
    let manifest_bytes = read_blob(reader, &manifest_digest, entry.size, "manifest")?;
    let member = blob_member(&manifest_digest);
    let media_type = sniff_manifest_type(&manifest_bytes, entry.media_type.as_deref())
        .map_err(|m| member_err(path, &member, m))?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| member_err(path, &member, format!("not an image manifest: {e}")))?;
    let config_digest = parse_digest(reader, &member, manifest.config().digest().as_ref())?;
    let config_bytes = read_blob(reader, &config_digest, manifest.config().size(), "config")?;
    let mut layer_members = Vec::new();
    for layer in manifest.layers() {
        let digest = parse_digest(reader, &member, layer.digest().as_ref())?;
        layer_members.push(blob_member(&digest));
    }
    Ok(Selected {
        name,
        manifest_digest,
        media_type,
        manifest_bytes,
        manifest,
        config_bytes,
        layer_members,
    })
}

fn names(index: &Index) -> String {
    let names: Vec<String> = index
        .manifests
        .iter()
        .map(|e| {
            e.annotations
                .get(REF_NAME)
                .map_or_else(|| format!("unnamed {}", e.digest), |n| format!("{n:?}"))
        })
        .collect();
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

/// The manifest's media type: its own `mediaType`, else the descriptor's; only image manifests.
fn sniff_manifest_type(bytes: &[u8], descriptor: Option<&str>) -> Result<String, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let media_type = probe
        .media_type
        .or(descriptor.map(str::to_owned))
        .unwrap_or_else(|| OCI_MANIFEST.to_owned());
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(media_type),
        other => Err(format!("unsupported manifest media type {other:?}")),
    }
}

/// Picks the image of a docker archive and turns it into an OCI manifest over the same blobs:
/// the config's digest is computed, each layer's digest is hashed from the archive.
fn select_docker(reader: &ArchiveReader, reference: Option<&str>) -> Result<Selected, ImagesError> {
    let path = reader.path();
    let bytes = reader.read_small("manifest.json", MAX_JSON)?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&bytes).map_err(|e| {
        member_err(
            path,
            "manifest.json",
            format!("not a docker save manifest: {e}"),
        )
    })?;
    let normal = |tag: &str| tag.parse::<ImageReference>().ok().map(|r| r.to_string());
    let (entry, name) = match reference {
        Some(wanted) => {
            let wanted = normal(wanted);
            let found = entries.iter().find(|e| {
                e.repo_tags
                    .iter()
                    .flatten()
                    .any(|t| normal(t).is_some() && normal(t) == wanted)
            });
            match found {
                Some(e) => (e, wanted),
                None => {
                    return Err(member_err(
                        path,
                        "manifest.json",
                        format!("no image tagged {}", wanted.unwrap_or_default()),
                    ))
                }
            }
        }
        None => match entries.as_slice() {
            [one] => (one, one.repo_tags.iter().flatten().find_map(|t| normal(t))),
            [] => return Err(member_err(path, "manifest.json", "names no image".into())),
            _ => {
                return Err(member_err(
                    path,
                    "manifest.json",
                    format!(
                        "holds {} images; name one with :REPO:TAG after the path",
                        entries.len()
                    ),
                ))
            }
        },
    };
    let config_bytes = reader.read_small(&entry.config, MAX_JSON)?;
    let config_digest = Digest::sha256_of(&config_bytes);
    let mut layers = Vec::new();
    for member in &entry.layers {
        let (mut stream, size) = reader.open_member(member)?;
        let mut hasher = Sha256Writer::new();
        let mut magic = [0u8; 4];
        let mut head = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = stream
                .read(&mut buf)
                .map_err(|e| member_err(path, member, e.to_string()))?;
            if n == 0 {
                break;
            }
            if head < 4 {
                let take = (4 - head).min(n);
                magic[head..head + take].copy_from_slice(&buf[..take]);
                head += take;
            }
            hasher.update(&buf[..n]);
        }
        let media_type = match magic {
            [0x1f, 0x8b, _, _] => "application/vnd.oci.image.layer.v1.tar+gzip",
            [0x28, 0xb5, 0x2f, 0xfd] => "application/vnd.oci.image.layer.v1.tar+zstd",
            _ => "application/vnd.oci.image.layer.v1.tar",
        };
        layers.push(serde_json::json!({
            "mediaType": media_type,
            "digest": hasher.finish().to_string(),
            "size": size,
        }));
    }
    let manifest_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": config_digest.to_string(),
            "size": config_bytes.len(),
        },
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest_json).expect("JSON values serialise");
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        member_err(
            path,
            "manifest.json",
            format!("cannot form a manifest: {e}"),
        )
    })?;
    Ok(Selected {
        name,
        manifest_digest: Digest::sha256_of(&manifest_bytes),
        media_type: OCI_MANIFEST.to_owned(),
        manifest_bytes,
        manifest,
        config_bytes,
        layer_members: entry.layers.clone(),
    })
}

/// The name an imported image gets when the caller names none: the archive's own full
/// reference if it has one, else `localhost/<file stem>:<tag>` as podman does.
fn default_name(path: &Path, archive_name: Option<&str>) -> String {
    if let Some(name) = archive_name {
        if name.contains('/') || name.contains(':') {
            if let Ok(r) = name.parse::<ImageReference>() {
                return r.to_string();
            }
        }
    }
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".tar").unwrap_or(&stem);
    let mut repo: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    repo = repo.trim_matches('-').to_owned();
    if repo.is_empty() {
        repo = "image".into();
    }
    let tag = archive_name
        .filter(|n| valid_ref_name(n) && !n.contains('/') && !n.contains(':') && n.len() <= 128)
        .unwrap_or("latest");
    let name = format!("localhost/{repo}:{tag}");
    name.parse::<ImageReference>()
        .map_or_else(|_| "localhost/image:latest".to_owned(), |r| r.to_string())
}

/// Streams a member into the content store under `digest`; the store refuses it unless the
/// bytes match. A blob the store already holds is still read and checked, so an archive that
/// lacks a blob or carries a corrupt one is refused whatever the store holds.
fn ingest(
    store: &Store,
    reader: &ArchiveReader,
    member: &str,
    digest: &Digest,
    size: u64,
) -> Result<(), ImagesError> {
    let content = store.content();
    let (mut stream, actual_size) = reader.open_member(member)?;
    let err = |message: String| member_err(reader.path(), member, message);
    if actual_size != size {
        return Err(err(format!(
            "blob {digest} is {actual_size} bytes, but the manifest says {size}"
        )));
    }
    let mut writer = if content.contains(digest).unwrap_or(false) {
        None
    } else {
        Some(
            content
                .writer(digest, size)
                .map_err(|e| err(e.to_string()))?,
        )
    };
    let mut hasher = Sha256Writer::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = stream.read(&mut buf).map_err(|e| err(e.to_string()))?;
        if n == 0 {
            break;
        }
        match writer.as_mut() {
            Some(w) => w.write_chunk(&buf[..n]).map_err(|e| err(e.to_string()))?,
            None => hasher.update(&buf[..n]),
        }
    }
    match writer {
        Some(w) => w.commit().map_err(|e| err(e.to_string()))?,
        None => {
            let actual = hasher.finish();
            if &actual != digest {
                return Err(err(format!(
                    "blob {digest} has digest {actual}: content does not match its digest"
                )));
            }
        }
    }
    debug!(%digest, member, "imported blob");
    Ok(())
}

/// Everything import does before unpacking, on a blocking thread: select, verify, ingest.
fn ingest_archive(
    store: &Store,
    source: &ImageSource,
    name: Option<&str>,
) -> Result<(String, Selected, ImageParts), ImagesError> {
    let Some(path) = source.archive_path() else {
        return Err(ImagesError::ImageNotFound(source.to_string()));
    };
    let reader = ArchiveReader::open(path)?;
    let format = detect_format(&reader)?;
    let wrong = |expected: &str| {
        whole(
            path,
            format!("is an {} but was named as {expected}", format.transport()),
        )
    };
    let selected = match source {
        ImageSource::OciLayout { tag, .. } => {
            if format != ArchiveFormat::OciLayout {
                return Err(wrong("an OCI layout directory (oci:)"));
            }
            select_oci(&reader, tag.as_deref())?
        }
        ImageSource::OciArchive { tag, .. } => {
            if format != ArchiveFormat::OciArchive {
                return Err(wrong("an OCI archive (oci-archive:)"));
            }
            select_oci(&reader, tag.as_deref())?
        }
        ImageSource::DockerArchive { reference, .. } => {
            if reader.is_dir() || !reader.contains("manifest.json") {
                return Err(wrong("a docker archive (docker-archive:)"));
            }
            select_docker(&reader, reference.as_deref())?
        }
        other => return Err(whole(path, format!("{other} is not an archive source"))),
    };
    let name = match name {
        Some(n) => n.parse::<ImageReference>()?.to_string(),
        None => default_name(path, selected.name.as_deref()),
    };
    let parts = ImageParts::parse(
        &name,
        &selected.manifest_digest,
        &selected.manifest,
        &selected.config_bytes,
    )?;
    for ((digest, size, _), member) in parts.layers.iter().zip(&selected.layer_members) {
        ingest(store, &reader, member, digest, *size)?;
    }
    let content_err = |what: &'static str, digest: &Digest| {
        let member = blob_member(digest);
        move |e: cairn_content::ContentError| member_err(path, &member, format!("{what}: {e}"))
    };
    store
        .content()
        .write_blob(&parts.config_digest, &selected.config_bytes)
        .map_err(content_err("config", &parts.config_digest))?;
    store
        .content()
        .write_blob(&selected.manifest_digest, &selected.manifest_bytes)
        .map_err(content_err("manifest", &selected.manifest_digest))?;
    Ok((name, selected, parts))
}

impl Store {
    /// Imports an image archive (an OCI layout directory, an OCI archive or a docker archive,
    /// detected) and records it as `name`, or under the name the archive gives it.
    pub async fn import(
        &self,
        archive: &Path,
        name: Option<&str>,
        progress: &dyn PullProgress,
    ) -> Result<ImageRecord, ImagesError> {
        let format = {
            let archive = archive.to_owned();
            tokio::task::spawn_blocking(move || ArchiveFormat::detect(&archive))
                .await
                .map_err(|e| ImagesError::Helper(format!("import task failed: {e}")))??
        };
        let text = format!("{}:{}", format.transport(), archive.display());
        let source = match format {
            ArchiveFormat::OciLayout => ImageSource::OciLayout {
                path: archive.to_owned(),
                tag: None,
            },
            ArchiveFormat::OciArchive => ImageSource::OciArchive {
                path: archive.to_owned(),
                tag: None,
            },
            ArchiveFormat::DockerArchive => ImageSource::DockerArchive {
                path: archive.to_owned(),
                reference: None,
            },
        };
        debug!(source = %text, "detected archive format");
        self.import_source(&source, name, progress).await
    }

    /// Imports the image an archive source names (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`,
    /// `docker-archive:FILE[:REF]`) and records it as `name`, or under the name the archive
    /// gives it.
    pub async fn import_source(
        &self,
        source: &ImageSource,
        name: Option<&str>,
        progress: &dyn PullProgress,
    ) -> Result<ImageRecord, ImagesError> {
        let span = info_span!("import", source = %source);
        async {
            let (store, owned_source, owned_name) =
                (self.clone(), source.clone(), name.map(str::to_owned));
            let (name, selected, parts) = tokio::task::spawn_blocking(move || {
                ingest_archive(&store, &owned_source, owned_name.as_deref())
            })
            .await
            .map_err(|e| ImagesError::Helper(format!("import task failed: {e}")))??;
            let sizes: Vec<(Digest, u64)> = parts
                .layers
                .iter()
                .map(|(d, s, _)| (d.clone(), *s))
                .collect();
            progress.resolved(&name, &selected.manifest_digest, &sizes);
            let mut skipped = SkippedDevices::default();
            for i in 0..parts.layers.len() {
                self.unpack_layer_of(&name, &parts, i, progress, &mut skipped)
                    .await?;
            }
            self.finish_image(
                name,
                selected.manifest_digest,
                selected.media_type,
                selected.manifest_bytes.len() as u64,
                parts,
                skipped,
            )
        }
        .instrument(span)
        .await
    }

    /// The stored image an OCI layout or archive names, found by its manifest digest without
    /// importing anything; `ImageNotFound` when it has not been imported (a docker archive has
    /// no manifest digest of its own, so it is always imported).
    pub(crate) fn archive_image(&self, source: &ImageSource) -> Result<ImageRecord, ImagesError> {
        let not_found = || ImagesError::ImageNotFound(source.to_string());
        let tag = match source {
            ImageSource::OciLayout { tag, .. } | ImageSource::OciArchive { tag, .. } => tag,
            _ => return Err(not_found()),
        };
        let Some(path) = source.archive_path() else {
            return Err(not_found());
        };
        let reader = ArchiveReader::open(path)?;
        let selected = select_oci(&reader, tag.as_deref())?;
        self.image(selected.manifest_digest.as_str())
            .map_err(|e| match e {
                ImagesError::ImageNotFound(_) => not_found(),
                other => other,
            })
    }

    /// Writes image `name` to `dest` as an OCI layout, OCI archive or docker archive. The
    /// destination appears complete or not at all; an existing file is replaced, a directory
    /// is refused unless it is an empty one.
    pub async fn export_archive(
        &self,
        name: &str,
        format: ArchiveFormat,
        dest: &Path,
    ) -> Result<ImageRecord, ImagesError> {
        let image = self.image(name)?;
        let span = info_span!("export", image = %image.reference, format = format.transport());
        let (store, record, dest_owned) = (self.clone(), image.clone(), dest.to_owned());
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            write_archive(&store, &record, format, &dest_owned)
        })
        .await
        .map_err(|e| ImagesError::Helper(format!("export task failed: {e}")))??;
        Ok(image)
    }
}

/// A destination being filled: a directory tree or a tar stream.
trait LayoutSink {
    /// A small file.
    fn file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// `size` bytes read from `source`.
    fn stream(&mut self, name: &str, size: u64, source: &mut dyn Read) -> io::Result<()>;
    /// Makes everything durable.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct DirSink {
    root: PathBuf,
}

impl LayoutSink for DirSink {
    fn file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.stream(name, bytes.len() as u64, &mut &bytes[..])
    }

    fn stream(&mut self, name: &str, size: u64, source: &mut dyn Read) -> io::Result<()> {
        let path = self.root.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = BufWriter::new(File::create(&path)?);
        let copied = io::copy(&mut source.take(size), &mut out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: {copied} of {size} bytes"),
            ));
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        for dir in ["blobs/sha256", "blobs", ""] {
            if let Ok(d) = File::open(self.root.join(dir)) {
                d.sync_all()?;
            }
        }
        Ok(())
    }
}

struct TarSink {
    builder: tar::Builder<BufWriter<File>>,
    dirs: std::collections::BTreeSet<String>,
}

impl TarSink {
    fn header(size: u64, kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_size(size);
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header
    }

    fn parents(&mut self, name: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let components: Vec<&str> = name.split('/').collect();
        for component in &components[..components.len() - 1] {
            prefix.push_str(component);
            prefix.push('/');
            if self.dirs.insert(prefix.clone()) {
                let mut header = Self::header(0, tar::EntryType::Directory, 0o755);
                self.builder
                    .append_data(&mut header, &prefix, io::empty())?;
            }
        }
        Ok(())
    }
}

impl LayoutSink for TarSink {
    fn file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.stream(name, bytes.len() as u64, &mut &bytes[..])
    }

    fn stream(&mut self, name: &str, size: u64, source: &mut dyn Read) -> io::Result<()> {
        self.parents(name)?;
        let mut header = Self::header(size, tar::EntryType::Regular, 0o644);
        self.builder
            .append_data(&mut header, name, source.take(size))
    }

    fn finish(self: Box<Self>) -> io::Result<()> {
        let out = self.builder.into_inner()?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}

/// Hashes what passes through, so a blob is checked while it is copied.
struct Hashing<R> {
    inner: R,
    hasher: Sha256Writer,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Removes the temporary destination unless disarmed.
struct Partial {
    path: PathBuf,
    armed: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path).or_else(|_| fs::remove_file(&self.path));
        }
    }
}

fn write_archive(
    store: &Store,
    image: &ImageRecord,
    format: ArchiveFormat,
    dest: &Path,
) -> Result<(), ImagesError> {
    let export_err = |message: String| ImagesError::Export {
        image: image.reference.clone(),
        dest: dest.to_owned(),
        message,
    };
    let io_err = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| export_err(format!("{what}: {e}"))
    };
    match fs::symlink_metadata(dest) {
        Ok(meta) if meta.is_dir() => {
            let empty = fs::read_dir(dest)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if format != ArchiveFormat::OciLayout || !empty {
                return Err(export_err(
                    "destination is a directory (only an empty one is replaced, by an OCI layout)"
                        .into(),
                ));
            }
        }
        Ok(meta) if format == ArchiveFormat::OciLayout || !meta.is_file() => {
            return Err(export_err(
                "destination exists and is not a directory".into(),
            ));
        }
        _ => {}
    }
    let file_name = dest
        .file_name()
        .ok_or_else(|| export_err("destination has no file name".into()))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = parent.join(format!(
        ".{}.cairn-partial-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&temp).or_else(|_| fs::remove_file(&temp));
    let mut partial = Partial {
        path: temp.clone(),
        armed: true,
    };
    let mut sink: Box<dyn LayoutSink> = match format {
        ArchiveFormat::OciLayout => {
            fs::create_dir(&temp).map_err(io_err("create temporary directory"))?;
            Box::new(DirSink { root: temp.clone() })
        }
        _ => {
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io_err("create temporary file"))?;
            Box::new(TarSink {
                builder: tar::Builder::new(BufWriter::with_capacity(1 << 20, file)),
                dirs: Default::default(),
            })
        }
    };
    let content = store.content();
    let content_err =
        |what: String| move |e: cairn_content::ContentError| export_err(format!("{what}: {e}"));
    let manifest_bytes = content
        .read_blob(&image.digest)
        .map_err(content_err("manifest".into()))?;
    if Digest::sha256_of(&manifest_bytes) != image.digest {
        return Err(export_err(format!(
            "the stored manifest {} does not match its digest",
            image.digest
        )));
    }
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes).map_err(|e| {
        export_err(format!(
            "stored manifest {} is unreadable: {e}",
            image.digest
        ))
    })?;
    let config_bytes = content
        .read_blob(&image.config)
        .map_err(content_err("config".into()))?;
    if Digest::sha256_of(&config_bytes) != image.config {
        return Err(export_err(format!(
            "the stored config {} does not match its digest",
            image.config
        )));
    }
    let parts = ImageParts::parse(&image.reference, &image.digest, &manifest, &config_bytes)?;

    match format {
        ArchiveFormat::OciLayout | ArchiveFormat::OciArchive => {
            sink.file("oci-layout", OCI_LAYOUT_FILE.as_bytes())
                .map_err(io_err("oci-layout"))?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{
                    "mediaType": image.media_type,
                    "digest": image.digest.to_string(),
                    "size": manifest_bytes.len(),
                    "annotations": {
                        REF_NAME: image.reference,
                        CONTAINERD_NAME: image.reference,
                    },
                }],
            });
            sink.file(
                "index.json",
                &serde_json::to_vec(&index).expect("JSON values serialise"),
            )
            .map_err(io_err("index.json"))?;
            sink.file(&blob_member(&image.digest), &manifest_bytes)
                .map_err(io_err("manifest"))?;
            sink.file(&blob_member(&image.config), &config_bytes)
                .map_err(io_err("config"))?;
            let mut written = std::collections::HashSet::new();
            for (digest, size, _) in &parts.layers {
                if !written.insert(digest.clone()) {
                    continue;
                }
                let blob = content
                    .open_blob(digest)
                    .map_err(content_err(format!("layer {digest}")))?;
                let mut hashing = Hashing {
                    inner: io::BufReader::with_capacity(1 << 20, blob),
                    hasher: Sha256Writer::new(),
                };
                sink.stream(&blob_member(digest), *size, &mut hashing)
                    .map_err(io_err(&format!("layer {digest}")))?;
                let actual = hashing.hasher.finish();
                if &actual != digest {
                    return Err(export_err(format!(
                        "stored layer {digest} has digest {actual}; the store is corrupt"
                    )));
                }
            }
        }
        ArchiveFormat::DockerArchive => {
            let config_member = blob_member(&image.config);
            sink.file(&config_member, &config_bytes)
                .map_err(io_err("config"))?;
            let mut layer_members = Vec::new();
            let mut written = std::collections::HashSet::new();
            for ((digest, _, compression), diff_id) in parts.layers.iter().zip(&parts.diff_ids) {
                let member = blob_member(diff_id);
                layer_members.push(member.clone());
                if !written.insert(diff_id.clone()) {
                    continue;
                }
                let open = || -> Result<Box<dyn Read>, ImagesError> {
                    let blob = content
                        .open_blob(digest)
                        .map_err(content_err(format!("layer {digest}")))?;
                    let blob = io::BufReader::with_capacity(1 << 20, blob);
                    Ok(match compression {
                        LayerCompression::None => Box::new(blob),
                        LayerCompression::Gzip => Box::new(flate2::read::GzDecoder::new(blob)),
                        LayerCompression::Zstd => Box::new(
                            zstd::stream::read::Decoder::with_buffer(blob)
                                .map_err(io_err(&format!("layer {digest}")))?,
                        ),
                    })
                };
                // The tar header needs the size first: one pass counts (and checks the
                // diff id), the second copies.
                let mut counting = Hashing {
                    inner: open()?,
                    hasher: Sha256Writer::new(),
                };
                io::copy(&mut counting, &mut io::sink())
                    .map_err(io_err(&format!("decompress layer {digest}")))?;
                let size = counting.hasher.written();
                if &counting.hasher.finish() != diff_id {
                    return Err(export_err(format!(
                        "stored layer {digest} does not decompress to its diff id {diff_id}"
                    )));
                }
                let mut hashing = Hashing {
                    inner: open()?,
                    hasher: Sha256Writer::new(),
                };
                sink.stream(&member, size, &mut hashing)
                    .map_err(io_err(&format!("layer {digest}")))?;
                if &hashing.hasher.finish() != diff_id {
                    return Err(export_err(format!(
                        "stored layer {digest} changed while it was exported"
                    )));
                }
            }
            let manifest = serde_json::json!([{
                "Config": config_member,
                "RepoTags": [docker_tag(&image.reference)],
                "Layers": layer_members,
            }]);
            sink.file(
                "manifest.json",
                &serde_json::to_vec(&manifest).expect("JSON values serialise"),
            )
            .map_err(io_err("manifest.json"))?;
        }
    }
    sink.finish().map_err(io_err("finish"))?;
    // rename(2) replaces a file, or an empty directory with a directory.
    fs::rename(&temp, dest).map_err(io_err("rename into place"))?;
    partial.armed = false;
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    debug!(dest = %dest.display(), "exported");
    Ok(())
}

/// The `RepoTags` form of a reference: `repo:tag`, as docker writes it (a digest-only
/// reference keeps its full form).
fn docker_tag(reference: &str) -> String {
    reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        let p = Path::new("/x/My Image.tar");
        assert_eq!(
            default_name(p, Some("127.0.0.1:5117/fixtures/busybox:latest")),
            "127.0.0.1:5117/fixtures/busybox:latest"
        );
        assert_eq!(default_name(p, Some("v1")), "localhost/my-image:v1");
        assert_eq!(default_name(p, None), "localhost/my-image:latest");
        assert_eq!(
            default_name(Path::new("/x/__"), None),
            "localhost/image:latest"
        );
        assert_eq!(
            default_name(p, Some("busybox:1")),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn docker_tags_drop_the_default_registry() {
        assert_eq!(
            docker_tag("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(docker_tag("127.0.0.1:5117/a/b:c"), "127.0.0.1:5117/a/b:c");
    }

    #[test]
    fn manifest_types() {
        assert_eq!(
            sniff_manifest_type(br#"{"schemaVersion":2}"#, None).unwrap(),
            OCI_MANIFEST
        );
        assert!(sniff_manifest_type(
            br#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
            None
        )
        .is_err());
    }
}
