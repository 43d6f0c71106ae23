//! Where an image comes from: a registry, or an archive on disk named with a transport prefix
//! (`oci:DIR[:TAG]`, `oci-archive:FILE[:TAG]`, `docker-archive:FILE[:REF]`), the forms skopeo
//! and podman accept.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::{ImageReference, ReferenceError};

/// An image source as a user writes it wherever an image reference is accepted.
///
/// The path ends at the first `:` after the transport, as in containers/image: paths with a
/// colon cannot be named this way (rename or link them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImageSource {
    /// A registry reference, `[registry/]repository[:tag][@digest]`.
    Registry(ImageReference),
    /// An OCI image layout directory; `tag` picks an entry of its index by
    /// `org.opencontainers.image.ref.name`.
    OciLayout {
        /// The layout directory.
        path: PathBuf,
        /// The ref name of the index entry, if the index holds more than one.
        tag: Option<String>,
    },
    /// A tar of an OCI image layout.
    OciArchive {
        /// The tar file.
        path: PathBuf,
        /// The ref name of the index entry, if the index holds more than one.
        tag: Option<String>,
    },
    /// A `docker save` tar; `reference` picks an image by its `RepoTags`.
    DockerArchive {
        /// The tar file.
        path: PathBuf,
        /// The repository tag of the image, if the archive holds more than one.
        reference: Option<String>,
    },
}

impl ImageSource {
    /// Whether the image comes from an archive on disk rather than a registry.
    pub fn is_archive(&self) -> bool {
        !matches!(self, ImageSource::Registry(_))
    }

    /// The archive's path, for archive sources.
    pub fn archive_path(&self) -> Option<&std::path::Path> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciLayout { path, .. }
            | ImageSource::OciArchive { path, .. }
            | ImageSource::DockerArchive { path, .. } => Some(path),
        }
    }

    /// The transport prefix (`oci`, `oci-archive`, `docker-archive`), `None` for a registry.
    pub fn transport(&self) -> Option<&'static str> {
        match self {
            ImageSource::Registry(_) => None,
            ImageSource::OciLayout { .. } => Some(OCI),
            ImageSource::OciArchive { .. } => Some(OCI_ARCHIVE),
            ImageSource::DockerArchive { .. } => Some(DOCKER_ARCHIVE),
        }
    }
}

const OCI: &str = "oci";
const OCI_ARCHIVE: &str = "oci-archive";
const DOCKER_ARCHIVE: &str = "docker-archive";

impl FromStr for ImageSource {
    type Err = ReferenceError;

    /// Parses by hand: a known transport prefix selects an archive; `docker://` is stripped;
    /// anything else must be a registry reference.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = s.strip_prefix("docker://") {
            return rest.parse().map(ImageSource::Registry);
        }
        let Some((transport, rest)) = s.split_once(':') else {
            return s.parse().map(ImageSource::Registry);
        };
        if ![OCI, OCI_ARCHIVE, DOCKER_ARCHIVE].contains(&transport) {
            return s.parse().map(ImageSource::Registry);
        }
        let (path, selector) = match rest.split_once(':') {
            Some((path, selector)) => (path, Some(selector)),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(invalid("the archive path is empty"));
        }
        if path.contains('\0') {
            return Err(invalid("the archive path contains a NUL byte"));
        }
        let selector = match selector {
            None => None,
            Some("") => return Err(invalid("the name after the archive path is empty")),
            Some(sel) if transport == DOCKER_ARCHIVE => {
                // Validate now so a typo fails before the archive is read.
                sel.parse::<ImageReference>()
                    .map_err(|e| invalid(&format!("the image named in the archive: {e}")))?;
                Some(sel.to_owned())
            }
            Some(sel) => {
                if !valid_ref_name(sel) {
                    return Err(invalid(
                        "the ref name must be components of [A-Za-z0-9] joined by one of -._:@+ or /",
                    ));
                }
                Some(sel.to_owned())
            }
        };
        let path = PathBuf::from(path);
        Ok(match transport {
            OCI => ImageSource::OciLayout {
                path,
                tag: selector,
            },
            OCI_ARCHIVE => ImageSource::OciArchive {
                path,
                tag: selector,
            },
            _ => ImageSource::DockerArchive {
                path,
                reference: selector,
            },
        })
    }
}

/// The grammar of `org.opencontainers.image.ref.name` in the image-layout spec: components
/// of alphanumerics separated by `/`, each component alphanumerics joined by `-._:@+` (or `--`).
pub fn valid_ref_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 1024
        && name.split('/').all(|component| {
            let bytes = component.as_bytes();
            let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
                return false;
            };
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._:@+".contains(b))
        })
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Registry(r) => write!(f, "{r}"),
            ImageSource::OciLayout { path, tag }
            | ImageSource::OciArchive { path, tag }
            | ImageSource::DockerArchive {
                path,
                reference: tag,
            } => {
                write!(
                    f,
                    "{}:{}",
                    self.transport().unwrap_or_default(),
                    path.display()
                )?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageSource {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn plain_references_are_registry_sources() {
        let ImageSource::Registry(r) = parse("busybox") else {
            panic!("not a registry source")
        };
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let ImageSource::Registry(r) = parse("127.0.0.1:5117/fixtures/busybox:latest") else {
            panic!("not a registry source")
        };
        assert_eq!(r.registry(), "127.0.0.1:5117");
        let ImageSource::Registry(r) = parse("docker://127.0.0.1:5117/a/b:c") else {
            panic!("not a registry source")
        };
        assert_eq!(r.tag(), Some("c"));
        // `oci` as a repository name with a tag is shadowed by the transport, as in skopeo;
        // other names that merely start with it are not.
        assert!(parse("ocifoo:1").archive_path().is_none());
        assert!(parse("docker.io/library/oci:1").archive_path().is_none());
    }

    #[test]
    fn transports_split_at_the_first_colon() {
        assert_eq!(
            parse("oci:/tmp/layout"),
            ImageSource::OciLayout {
                path: "/tmp/layout".into(),
                tag: None
            }
        );
        assert_eq!(
            parse("oci:/tmp/layout:v1"),
            ImageSource::OciLayout {
                path: "/tmp/layout".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse("oci-archive:img.tar:127.0.0.1:5117/fixtures/busybox:latest"),
            ImageSource::OciArchive {
                path: "img.tar".into(),
                tag: Some("127.0.0.1:5117/fixtures/busybox:latest".into())
            }
        );
        assert_eq!(
            parse("docker-archive:/x/save.tar:busybox:latest"),
            ImageSource::DockerArchive {
                path: "/x/save.tar".into(),
                reference: Some("busybox:latest".into())
            }
        );
        assert_eq!(
            parse("oci-archive:/a.tar:v2").to_string(),
            "oci-archive:/a.tar:v2"
        );
        assert!(parse("oci:dir").is_archive());
    }

    #[test]
    fn malformed_sources_are_refused() {
        for bad in [
            "oci:",
            "oci-archive::tag",
            "oci:/dir:",
            "oci:/dir:-bad",
            "oci:/dir:a b",
            "oci:/dir:a//b",
            "docker-archive:/f.tar:UPPER",
        ] {
            let err = bad.parse::<ImageSource>().expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn ref_names_follow_the_layout_grammar() {
        assert!(valid_ref_name("latest"));
        assert!(valid_ref_name("127.0.0.1:5117/fixtures/busybox:latest"));
        assert!(valid_ref_name("v1.0--rc"));
        assert!(!valid_ref_name(""));
        assert!(!valid_ref_name(".hidden"));
        assert!(!valid_ref_name("a/"));
        assert!(!valid_ref_name("a b"));
    }
}
