/// How a layer blob is compressed, read off its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar stream.
    None,
    /// gzip, the default of Docker and most registries.
    Gzip,
    /// zstd, OCI's `+zstd` layers.
    Zstd,
}

/// What a manifest-like document is, read off its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// A single-platform image manifest (OCI or Docker schema 2).
    Image,
    /// A list of manifests, one per platform (OCI index or Docker manifest list).
    Index,
}

/// A media type cairn does not know how to use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unsupported media type {0:?}")]
pub struct MediaTypeError(pub String);

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema-2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

impl ManifestKind {
    /// Every manifest media type cairn asks a registry for, most preferred first.
    pub const ACCEPTED: [&'static str; 4] = [
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
        OCI_MANIFEST,
        DOCKER_MANIFEST,
    ];

    /// The kind of a manifest media type.
    pub fn from_media_type(media_type: &str) -> Result<Self, MediaTypeError> {
        match media_type {
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(ManifestKind::Image),
            OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
            other => Err(MediaTypeError(other.to_owned())),
        }
    }
}

impl LayerCompression {
    /// The compression of a layer media type, OCI or Docker. Non-distributable ("foreign")
    /// layers are the same tar formats and are accepted; anything else is an error.
    pub fn from_media_type(media_type: &str) -> Result<Self, MediaTypeError> {
        let oci = media_type
            .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
            .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.v1."));
        match oci {
            Some("tar") => return Ok(LayerCompression::None),
            Some("tar+gzip") => return Ok(LayerCompression::Gzip),
            Some("tar+zstd") => return Ok(LayerCompression::Zstd),
            _ => {}
        }
        match media_type {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Ok(LayerCompression::Gzip)
            }
            "application/vnd.docker.image.rootfs.diff.tar" => Ok(LayerCompression::None),
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(LayerCompression::Zstd),
            other => Err(MediaTypeError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types() {
        use LayerCompression::*;
        for (mt, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
        ] {
            assert_eq!(LayerCompression::from_media_type(mt), Ok(c), "{mt}");
        }
        assert!(LayerCompression::from_media_type("application/wasm").is_err());
        assert!(
            LayerCompression::from_media_type("application/vnd.oci.image.layer.v1.tar+bz2")
                .is_err()
        );
    }

    #[test]
    fn manifest_media_types() {
        assert_eq!(
            ManifestKind::from_media_type(DOCKER_MANIFEST_LIST),
            Ok(ManifestKind::Index)
        );
        assert_eq!(
            ManifestKind::from_media_type(OCI_MANIFEST),
            Ok(ManifestKind::Image)
        );
        assert!(ManifestKind::from_media_type(
            "application/vnd.docker.distribution.manifest.v1+prettyjws"
        )
        .is_err());
    }
}
