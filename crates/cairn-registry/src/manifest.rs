//! Reading manifests and indexes: what kind a document is, which index entry serves a
//! platform, and whether an image manifest is one cairn can pull. No I/O.

use cairn_oci::{media_types, Digest, LayerCompression, ManifestKind, Platform};
use oci_spec::image::ImageManifest;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::RegistryError;

/// The Docker schema-1 media type, named in the error when one is served.
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// Image config media types cairn understands.
const CONFIG_MEDIA_TYPES: [&str; 2] = [
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// Just enough of any manifest-like document to tell what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
}

/// What a manifest document is, and its media type (from its `mediaType` field, or inferred
/// from its shape for OCI documents that omit it).
pub(crate) fn sniff(
    bytes: &[u8],
    reference: &str,
) -> Result<(ManifestKind, String), RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        reference: reference.to_owned(),
        reason,
    };
    let unsupported = |media_type: &str| RegistryError::UnsupportedMediaType {
        reference: reference.to_owned(),
        media_type: media_type.to_owned(),
    };
    let doc: Sniff = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    if doc.schema_version == Some(1) {
        return Err(unsupported(
            doc.media_type.as_deref().unwrap_or(DOCKER_SCHEMA1),
        ));
    }
    let media_type = match doc.media_type {
        Some(mt) => mt,
        None if doc.manifests.is_some() => media_types::OCI_INDEX.to_owned(),
        None if doc.config.is_some() => media_types::OCI_MANIFEST.to_owned(),
        None => {
            return Err(invalid(
                "neither mediaType nor config nor manifests".to_owned(),
            ))
        }
    };
    let kind = ManifestKind::from_media_type(&media_type).map_err(|_| unsupported(&media_type))?;
    if doc.schema_version != Some(2) {
        return Err(invalid(format!(
            "schemaVersion is {:?}, expected 2",
            doc.schema_version
        )));
    }
    Ok((kind, media_type))
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<IndexEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    media_type: Option<String>,
    digest: String,
    platform: Option<EntryPlatform>,
}

#[derive(Deserialize)]
struct EntryPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl EntryPlatform {
    fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

/// The index entry chosen for a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Selected {
    pub(crate) digest: Digest,
    pub(crate) platform: Platform,
}

/// Picks the entry of an index (OCI index or Docker manifest list) that best serves `want`,
/// by [`Platform::match_score`]; the first of equally good entries wins.
pub(crate) fn select_platform(
    bytes: &[u8],
    want: &Platform,
    reference: &str,
) -> Result<Selected, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        reference: reference.to_owned(),
        reason,
    };
    let index: Index = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let mut best: Option<(u8, &IndexEntry, Platform)> = None;
    for entry in &index.manifests {
        let Some(p) = &entry.platform else { continue };
        let Some(score) = want.match_score(&p.os, &p.architecture, p.variant.as_deref()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, entry, p.to_platform()));
        }
    }
    let Some((_, entry, platform)) = best else {
        let mut available: Vec<String> = index
            .manifests
            .iter()
            .filter_map(|e| e.platform.as_ref())
            // buildx attaches provenance manifests as "unknown/unknown": not images.
            .filter(|p| p.os != "unknown")
            .map(|p| p.to_platform().to_string())
            .collect();
        available.dedup();
        return Err(RegistryError::NoMatchingPlatform {
            reference: reference.to_owned(),
            platform: want.to_string(),
            available,
        });
    };
    if let Some(mt) = &entry.media_type {
        if ManifestKind::from_media_type(mt) != Ok(ManifestKind::Image) {
            return Err(RegistryError::UnsupportedMediaType {
                reference: format!("{reference} ({platform})"),
                media_type: mt.clone(),
            });
        }
    }
    let digest = entry
        .digest
        .parse()
        .map_err(|e| invalid(format!("entry for {platform}: {e}")))?;
    Ok(Selected { digest, platform })
}

/// Parses an image manifest (OCI or Docker schema 2, which has the same shape) and checks that
/// cairn can pull it: an image config, sha256 digests, and layers it knows how to unpack.
pub(crate) fn parse_image(bytes: &[u8], reference: &str) -> Result<ImageManifest, RegistryError> {
    let invalid = |reason: String| RegistryError::InvalidManifest {
        reference: reference.to_owned(),
        reason,
    };
    let manifest: ImageManifest =
        serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let config_type = manifest.config().media_type().as_ref();
    if !CONFIG_MEDIA_TYPES.contains(&config_type) {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_owned(),
            media_type: config_type.to_owned(),
        });
    }
    let sha256 = |what: &str, d: &oci_spec::image::Digest| -> Result<Digest, RegistryError> {
        d.as_ref()
            .parse()
            .map_err(|e| invalid(format!("{what}: {e}")))
    };
    sha256("config", manifest.config().digest())?;
    for layer in manifest.layers() {
        let digest = sha256("layer", layer.digest())?;
        let media_type = layer.media_type().as_ref();
        if LayerCompression::from_media_type(media_type).is_err() {
            return Err(RegistryError::UnsupportedLayer {
                reference: reference.to_owned(),
                layer: digest,
                media_type: media_type.to_owned(),
            });
        }
    }
    Ok(manifest)
}

/// The platform fields of an image config.
#[derive(Deserialize)]
struct ConfigPlatform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

/// Reads the platform an image config states and checks that it serves `want`.
pub(crate) fn check_config_platform(
    config: &[u8],
    want: &Platform,
    reference: &str,
) -> Result<Platform, RegistryError> {
    let c: ConfigPlatform =
        serde_json::from_slice(config).map_err(|e| RegistryError::InvalidManifest {
            reference: reference.to_owned(),
            reason: format!("image config: {e}"),
        })?;
    let have = Platform {
        os: c.os,
        architecture: c.architecture,
        variant: c.variant.filter(|v| !v.is_empty()),
    };
    match want.match_score(&have.os, &have.architecture, have.variant.as_deref()) {
        Some(_) => Ok(have),
        None => Err(RegistryError::NoMatchingPlatform {
            reference: reference.to_owned(),
            platform: want.to_string(),
            available: vec![have.to_string()],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: &str = "127.0.0.1:5117/fixtures/busybox:multi";

    fn d(s: &str) -> Digest {
        Digest::sha256_of(s.as_bytes())
    }

    fn platform(os: &str, arch: &str, variant: Option<&str>) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    fn index(entries: &[(&str, &str, Option<&str>, &str)]) -> Vec<u8> {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(os, arch, variant, name)| {
                let mut p = serde_json::json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    p["variant"] = (*v).into();
                }
                serde_json::json!({
                    "mediaType": media_types::OCI_MANIFEST,
                    "digest": d(name).to_string(),
                    "size": 100,
                    "platform": p,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_INDEX,
            "manifests": manifests,
        }))
        .unwrap()
    }

    #[test]
    fn picks_the_best_platform() {
        let idx = index(&[
            ("linux", "amd64", None, "amd64"),
            ("linux", "arm64", None, "arm64-plain"),
            ("linux", "arm64", Some("v8"), "arm64-v8"),
            ("linux", "arm", Some("v7"), "armv7"),
            ("unknown", "unknown", None, "attestation"),
        ]);
        let amd = select_platform(&idx, &platform("linux", "amd64", None), R).unwrap();
        assert_eq!(amd.digest, d("amd64"));
        assert_eq!(amd.platform.to_string(), "linux/amd64");
        // An exact variant beats an entry that names none, whatever the order.
        let arm = select_platform(&idx, &platform("linux", "arm64", Some("v8")), R).unwrap();
        assert_eq!(arm.digest, d("arm64-v8"));
        let armv7 = select_platform(&idx, &platform("linux", "arm", Some("v7")), R).unwrap();
        assert_eq!(armv7.digest, d("armv7"));
        let armv6 = select_platform(&idx, &platform("linux", "arm", Some("v6")), R).unwrap_err();
        match &armv6 {
            RegistryError::NoMatchingPlatform {
                available,
                platform,
                ..
            } => {
                assert_eq!(platform, "linux/arm/v6");
                assert_eq!(
                    available,
                    &[
                        "linux/amd64",
                        "linux/arm64",
                        "linux/arm64/v8",
                        "linux/arm/v7"
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            armv6.to_string(),
            format!(
                "{R} has no image for platform linux/arm/v6 \
                 (available: linux/amd64, linux/arm64, linux/arm64/v8, linux/arm/v7)"
            )
        );
        let host = select_platform(&idx, &Platform::host(), R);
        assert!(host.is_ok() || std::env::consts::ARCH == "s390x");
    }

    #[test]
    fn docker_manifest_list_and_nested_index() {
        let list = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::DOCKER_MANIFEST_LIST,
            "manifests": [
                {"mediaType": media_types::DOCKER_MANIFEST, "size": 1, "digest": d("a").to_string(),
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": media_types::OCI_INDEX, "size": 1, "digest": d("b").to_string(),
                 "platform": {"architecture": "s390x", "os": "linux"}},
            ]
        });
        let bytes = serde_json::to_vec(&list).unwrap();
        assert_eq!(
            sniff(&bytes, R).unwrap(),
            (
                ManifestKind::Index,
                media_types::DOCKER_MANIFEST_LIST.to_owned()
            )
        );
        let sel = select_platform(&bytes, &platform("linux", "amd64", None), R).unwrap();
        assert_eq!(sel.digest, d("a"));
        let err = select_platform(&bytes, &platform("linux", "s390x", None), R).unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedMediaType { .. }),
            "{err}"
        );
    }

    #[test]
    fn sniffing() {
        let schema1 = br#"{"schemaVersion": 1, "name": "x", "tag": "latest", "fsLayers": []}"#;
        let err = sniff(schema1, R).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{R} has unsupported media type \"{DOCKER_SCHEMA1}\"")
        );
        assert_eq!(err.kind(), crate::ErrorKind::Unsupported);
        let bare_oci = br#"{"schemaVersion": 2, "config": {}, "layers": []}"#;
        assert_eq!(
            sniff(bare_oci, R).unwrap(),
            (ManifestKind::Image, media_types::OCI_MANIFEST.to_owned())
        );
        let bare_index = br#"{"schemaVersion": 2, "manifests": []}"#;
        assert_eq!(sniff(bare_index, R).unwrap().0, ManifestKind::Index);
        let artifact = br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.artifact.manifest.v1+json"}"#;
        assert!(matches!(
            sniff(artifact, R),
            Err(RegistryError::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            sniff(b"<html>", R),
            Err(RegistryError::InvalidManifest { .. })
        ));
    }

    #[test]
    fn config_platform() {
        let cfg = br#"{"architecture": "arm64", "os": "linux", "variant": "v8", "rootfs": {}}"#;
        let arm = check_config_platform(cfg, &platform("linux", "arm64", Some("v8")), R).unwrap();
        assert_eq!(arm, platform("linux", "arm64", Some("v8")));
        let err = check_config_platform(cfg, &platform("linux", "amd64", None), R).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{R} has no image for platform linux/amd64 (available: linux/arm64/v8)")
        );
        let err = check_config_platform(b"{}", &platform("linux", "amd64", None), R).unwrap_err();
        assert!(
            matches!(err, RegistryError::InvalidManifest { .. }),
            "{err}"
        );
    }

    fn image(config_type: &str, layer_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_types::DOCKER_MANIFEST,
            "config": {"mediaType": config_type, "size": 10, "digest": d("config").to_string()},
            "layers": [{"mediaType": layer_type, "size": 20, "digest": d("layer").to_string()}],
        }))
        .unwrap()
    }

    #[test]
    fn docker_schema2_parses_and_layers_are_checked() {
        let m = parse_image(
            &image(
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ),
            R,
        )
        .unwrap();
        assert_eq!(m.layers().len(), 1);
        assert_eq!(m.config().size(), 10);

        let err = parse_image(
            &image(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+bz2",
            ),
            R,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{R} has layer {} with unsupported media type \
                 \"application/vnd.oci.image.layer.v1.tar+bz2\"",
                d("layer")
            )
        );
        let err = parse_image(
            &image(
                "application/vnd.cncf.helm.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar",
            ),
            R,
        )
        .unwrap_err();
        assert!(
            matches!(err, RegistryError::UnsupportedMediaType { .. }),
            "{err}"
        );
    }
}
