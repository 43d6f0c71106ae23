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

    /// Parses by hand, following the distribution project's reference grammar: the regular
    /// expression `oci-spec` compiles for the same job costs about 100 ms on first use, which
    /// every `cairn exec` would pay.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ReferenceError::Invalid {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (
                rest,
                Some(d.parse::<Digest>().map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/' (a ':' before it is a
        // registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(invalid(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        if name.is_empty() {
            return Err(invalid("repository name is empty"));
        }
        if name.len() > 255 {
            return Err(invalid("repository name is longer than 255 characters"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !valid_domain(first) {
                    return Err(invalid("registry host is malformed"));
                }
                (first.to_owned(), path.to_owned())
            }
            _ => ("docker.io".to_owned(), name.to_owned()),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("repository name must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(invalid(
                "repository path components are [a-z0-9] runs joined by '.', '_', '__' or dashes",
            ));
        }
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let inner = match (tag, &digest) {
            (Some(tag), Some(d)) => {
                Reference::with_tag_and_digest(registry, repository, tag.to_owned(), d.to_string())
            }
            (None, Some(d)) => Reference::with_digest(registry, repository, d.to_string()),
            (tag, None) => {
                Reference::with_tag(registry, repository, tag.unwrap_or("latest").to_owned())
            }
        };
        Ok(ImageReference { inner, digest })
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]`: dot-separated labels of `[A-Za-z0-9-]` (not starting or ending with `-`),
/// an IPv4 address, or a bracketed IPv6 address.
fn valid_domain(domain: &str) -> bool {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if after.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.split('.').all(|label| {
        let b = label.as_bytes();
        !b.is_empty()
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    }) || domain.starts_with('[')
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
            "a//b",
            "a/-b",
            "a/b_",
            "host:port/x",
            "reg.io:99999999/x",
            "x:-tag",
        ] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_shapes_docker_accepts() {
        for (text, registry, repository, tag) in [
            ("busybox:1.36", "docker.io", "library/busybox", Some("1.36")),
            ("user/app", "docker.io", "user/app", Some("latest")),
            ("localhost/app:v1", "localhost", "app", Some("v1")),
            (
                "localhost:5000/a/b/c",
                "localhost:5000",
                "a/b/c",
                Some("latest"),
            ),
            (
                "[::1]:5000/x_y.z__w--v:T_1",
                "[::1]:5000",
                "x_y.z__w--v",
                Some("T_1"),
            ),
            ("quay.io/org/img", "quay.io", "org/img", Some("latest")),
        ] {
            let r: ImageReference = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (r.registry(), r.repository(), r.tag()),
                (registry, repository, tag),
                "{text}"
            );
        }
        let d = Digest::sha256_of(b"y");
        let r: ImageReference = format!("127.0.0.1:5117/f/b@{d}").parse().unwrap();
        assert_eq!((r.tag(), r.digest()), (None, Some(&d)));
        assert_eq!(r.to_string(), format!("127.0.0.1:5117/f/b@{d}"));
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
