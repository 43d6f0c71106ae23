use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use oci_spec::distribution::Reference;

use crate::Digest;

/// An image reference, `[registry/]repository[:tag][@digest]`, normalised the way Docker does it
/// (`busybox` is `docker.io/library/busybox:latest`).
#[derive(Clone, PartialEq, Eq)]
pub struct ImageReference {
    inner: Reference,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The string does not follow the reference grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The text given.
        reference: String,
        /// What the grammar objected to.
        reason: String,
    },
}

impl ImageReference {
    /// The registry host, with port if one was given (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The repository path within the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// The tag, `latest` when neither tag nor digest was given.
    pub fn tag(&self) -> Option<&str> {
        self.inner.tag()
    }

    /// The pinned digest, if the reference has one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The `oci-spec` form, which `oci-client` takes.
    pub fn as_distribution_reference(&self) -> &Reference {
        &self.inner
    }

    /// This reference pinned to `digest`, keeping registry, repository and tag.
    pub fn with_digest(&self, digest: &Digest) -> ImageReference {
        let inner = match self.inner.tag() {
            Some(tag) => Reference::with_tag_and_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                tag.to_owned(),
                digest.to_string(),
            ),
            None => Reference::with_digest(
                self.registry().to_owned(),
                self.repository().to_owned(),
                digest.to_string(),
            ),
        };
        ImageReference {
            inner,
            digest: Some(digest.clone()),
        }
    }

    /// Whether the registry is on this machine (`localhost`, 127.0.0.0/8, `::1`): such registries
    /// are spoken to over plain HTTP, as Docker and containerd do.
    pub fn is_loopback_registry(&self) -> bool {
        registry_is_loopback(self.registry())
    }
}

/// Whether a registry host (with optional port) names this machine.
pub fn registry_is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for ImageReference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason,
        };
        let inner = Reference::try_from(s).map_err(|e| invalid(e.to_string()))?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase".to_owned()));
        }
        let digest = match inner.digest() {
            Some(d) => Some(d.parse::<Digest>().map_err(|e| invalid(e.to_string()))?),
            None => None,
        };
        Ok(ImageReference { inner, digest })
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner)
    }
}

impl fmt::Debug for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageReference({})", self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r: ImageReference = "busybox".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r: ImageReference = "127.0.0.1:5000/fixtures/debian:bookworm".parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "fixtures/debian");
        assert!(r.is_loopback_registry());
        let d = Digest::sha256_of(b"x");
        let pinned = r.with_digest(&d);
        assert_eq!(pinned.digest(), Some(&d));
        assert_eq!(
            pinned.to_string(),
            format!("127.0.0.1:5000/fixtures/debian:bookworm@{d}")
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "UPPER/case",
            "a:b:c",
            "busybox@sha256:123",
            "busybox@md5:abcd",
            "-x",
        ] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_detection() {
        for (r, want) in [
            ("localhost:5000", true),
            ("127.0.0.2:80", true),
            ("[::1]:5000", true),
            ("docker.io", false),
            ("10.0.0.1:5000", false),
        ] {
            assert_eq!(registry_is_loopback(r), want, "{r}");
        }
    }
}
