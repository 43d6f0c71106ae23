//! The one error type of this crate, and how `oci-client` failures are sorted into it.

use cairn_oci::Digest;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// An error from any source, kept as the cause of a [`RegistryError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong talking to a registry. Every variant names the registry host and the
/// reference or digest at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry could not be reached, or kept failing with transient errors (connection
    /// refused or reset, timeouts, 5xx, 429) until the retries ran out.
    #[error("registry {registry} unreachable after {attempts} attempt(s): {}", chain(&**source))]
    Unreachable {
        /// The registry host.
        registry: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: BoxError,
    },
    /// The registry answered 401 or 403.
    #[error(
        "registry {registry} refused {} access to {reference}{}",
        if *.with_credentials { "authenticated" } else { "anonymous" },
        if *.with_credentials {
            " (check the credentials in the docker config)"
        } else {
            " (no credentials for it in the docker config)"
        }
    )]
    AuthRefused {
        /// The registry host.
        registry: String,
        /// The reference asked for.
        reference: String,
        /// Whether credentials were sent (`false`: the pull was anonymous).
        with_credentials: bool,
    },
    /// The registry has no such repository, tag or manifest.
    #[error("registry {registry} has no manifest for {reference}")]
    NotFound {
        /// The registry host.
        registry: String,
        /// The reference asked for.
        reference: String,
    },
    /// The registry has no such blob in the repository.
    #[error("registry {registry} has no blob {digest} in {repository}")]
    BlobNotFound {
        /// The registry host.
        registry: String,
        /// The repository asked.
        repository: String,
        /// The blob asked for.
        digest: Digest,
    },
    /// The manifest (or its config) has a media type cairn does not handle: schema 1,
    /// artifacts that are not images, nested indexes.
    #[error("{reference} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The reference resolved.
        reference: String,
        /// The media type found.
        media_type: String,
    },
    /// A layer of the manifest has a media type cairn cannot unpack.
    #[error("{reference} has layer {layer} with unsupported media type {media_type:?}")]
    UnsupportedLayer {
        /// The reference resolved.
        reference: String,
        /// The layer's digest.
        layer: Digest,
        /// The layer's media type.
        media_type: String,
    },
    /// The reference names an index with no entry for the wanted platform.
    #[error(
        "{reference} has no image for platform {platform} (available: {})",
        if available.is_empty() { "none".to_owned() } else { available.join(", ") }
    )]
    NoMatchingPlatform {
        /// The reference resolved.
        reference: String,
        /// The platform wanted.
        platform: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// Content did not hash to the digest it was asked for by.
    #[error("registry {registry} served {what} {digest} with digest {actual} (corrupt or lying registry)")]
    DigestMismatch {
        /// The registry host.
        registry: String,
        /// `blob` or `manifest`.
        what: &'static str,
        /// The digest asked for.
        digest: Digest,
        /// The digest of what was received.
        actual: Digest,
    },
    /// A blob ended before its descriptor's size.
    #[error("registry {registry} served {actual} bytes of blob {digest}, expected {expected}")]
    SizeMismatch {
        /// The registry host.
        registry: String,
        /// The blob.
        digest: Digest,
        /// The size in the descriptor.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// A manifest or blob exceeded the size cairn accepts for it.
    #[error("registry {registry} served more than {limit} bytes for {what}")]
    TooLarge {
        /// The registry host.
        registry: String,
        /// `blob sha256:…` or `manifest <reference>`.
        what: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// A manifest or index that is not valid JSON of its kind.
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest {
        /// The reference (pinned to the manifest's digest where known).
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A docker credential helper failed.
    #[error(
        "credential helper docker-credential-{helper} failed for registry {registry}: {reason}"
    )]
    Credentials {
        /// The registry host.
        registry: String,
        /// The helper name (`pass`, `desktop`, …).
        helper: String,
        /// What went wrong.
        reason: String,
    },
    /// The docker config file could not be read or parsed.
    #[error("cannot use docker config {}: {reason}", path.display())]
    DockerConfig {
        /// The `config.json` path.
        path: std::path::PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The registry rejected a request or broke the protocol in a way retrying will not fix.
    #[error("registry {registry} failed the request for {reference}: {}", chain(&**source))]
    Rejected {
        /// The registry host.
        registry: String,
        /// The reference or blob asked for.
        reference: String,
        /// What the registry (or the client library) reported.
        #[source]
        source: BoxError,
    },
    /// The HTTP client for a registry could not be set up (TLS backend, proxy settings).
    #[error("cannot set up a client for registry {registry}: {}", chain(&**source))]
    HttpClient {
        /// The registry host.
        registry: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The [`BlobSink`](crate::BlobSink) refused the blob's bytes.
    #[error("cannot store blob {digest}: {source}")]
    Sink {
        /// The blob.
        digest: Digest,
        /// The sink's error.
        #[source]
        source: std::io::Error,
    },
    /// A blob to push could not be read from its local file.
    #[error("cannot read blob {digest} from {}: {source}", path.display())]
    PushSource {
        /// The blob.
        digest: Digest,
        /// The file it was read from.
        path: std::path::PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
}

/// The category of a [`RegistryError`], for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The manifest, tag, repository or blob does not exist.
    NotFound,
    /// Credentials are missing, wrong, or could not be obtained.
    Unauthorized,
    /// The request or configuration was malformed.
    InvalidInput,
    /// The content exists but cairn cannot use it (media type, platform).
    Unsupported,
    /// Worth trying again later: the registry was unreachable or overloaded.
    Transient,
    /// The registry served content that fails verification.
    Corrupt,
    /// A local failure: storing what was received.
    Io,
}

impl RegistryError {
    /// The category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::Unreachable { .. } => ErrorKind::Transient,
            RegistryError::AuthRefused { .. } | RegistryError::Credentials { .. } => {
                ErrorKind::Unauthorized
            }
            RegistryError::NotFound { .. } | RegistryError::BlobNotFound { .. } => {
                ErrorKind::NotFound
            }
            RegistryError::UnsupportedMediaType { .. }
            | RegistryError::UnsupportedLayer { .. }
            | RegistryError::NoMatchingPlatform { .. } => ErrorKind::Unsupported,
            RegistryError::DigestMismatch { .. }
            | RegistryError::SizeMismatch { .. }
            | RegistryError::TooLarge { .. }
            | RegistryError::InvalidManifest { .. } => ErrorKind::Corrupt,
            RegistryError::DockerConfig { .. }
            | RegistryError::Rejected { .. }
            | RegistryError::HttpClient { .. } => ErrorKind::InvalidInput,
            RegistryError::Sink { .. } | RegistryError::PushSource { .. } => ErrorKind::Io,
        }
    }
}

/// An error and its causes on one line, `outer: inner: root`, skipping causes whose text the
/// outer message already contains (many libraries repeat their source's message).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// How one failed request is to be handled: retried, or turned into a final error.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Worth another attempt; becomes [`RegistryError::Unreachable`] once attempts run out.
    Transient(BoxError),
    /// Final.
    Fatal(RegistryError),
}

/// What was being asked for when an `oci-client` call failed, so the error can name it.
pub(crate) enum Target<'a> {
    /// A manifest, by tag or digest.
    Manifest(&'a cairn_oci::ImageReference),
    /// A blob in the repository of the reference.
    Blob(&'a cairn_oci::ImageReference, &'a Digest),
}

impl Target<'_> {
    fn reference(&self) -> String {
        match self {
            Target::Manifest(r) => r.to_string(),
            Target::Blob(r, d) => format!("{}/{}@{d}", r.registry(), r.repository()),
        }
    }

    fn registry(&self) -> &str {
        match self {
            Target::Manifest(r) | Target::Blob(r, _) => r.registry(),
        }
    }

    fn not_found(&self) -> RegistryError {
        match self {
            Target::Manifest(r) => RegistryError::NotFound {
                registry: r.registry().to_owned(),
                reference: r.to_string(),
            },
            Target::Blob(r, d) => RegistryError::BlobNotFound {
                registry: r.registry().to_owned(),
                repository: r.repository().to_owned(),
                digest: (*d).clone(),
            },
        }
    }
}

/// HTTP statuses worth retrying: request timeout, too many requests, and server errors.
pub(crate) fn status_is_transient(code: u16) -> bool {
    code == 408 || code == 429 || (500..=599).contains(&code)
}

/// Sorts an `oci-client` failure into transient or final, naming `target` in the final error.
/// `with_credentials` says whether the request carried credentials (for the 401/403 message).
pub(crate) fn classify(
    err: OciDistributionError,
    target: &Target<'_>,
    with_credentials: bool,
) -> Failure {
    let auth_refused = || RegistryError::AuthRefused {
        registry: target.registry().to_owned(),
        reference: target.reference(),
        with_credentials,
    };
    let rejected = |source: BoxError| RegistryError::Rejected {
        registry: target.registry().to_owned(),
        reference: target.reference(),
        source,
    };
    match err {
        OciDistributionError::RequestError(e) => {
            // Builder and redirect-loop errors are ours or the registry's to fix; everything
            // else reqwest reports (connect, timeout, reset, broken or undecodable body) is the
            // network's.
            if e.is_builder() || e.is_redirect() {
                Failure::Fatal(rejected(Box::new(e)))
            } else {
                Failure::Transient(Box::new(e))
            }
        }
        OciDistributionError::IoError(e) => Failure::Transient(Box::new(e)),
        OciDistributionError::UnauthorizedError { .. } => Failure::Fatal(auth_refused()),
        OciDistributionError::ServerError { code, .. } if status_is_transient(code) => {
            Failure::Transient(Box::new(err))
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        } => Failure::Fatal(auth_refused()),
        OciDistributionError::ServerError { code: 404, .. } => Failure::Fatal(target.not_found()),
        OciDistributionError::RegistryError { ref envelope, .. } => {
            let codes = envelope.errors.iter().map(|e| &e.code);
            let mut transient = false;
            let mut not_found = false;
            let mut denied = false;
            for code in codes {
                match code {
                    OciErrorCode::Toomanyrequests => transient = true,
                    OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound => not_found = true,
                    OciErrorCode::Unauthorized | OciErrorCode::Denied => denied = true,
                    _ => {}
                }
            }
            if transient {
                Failure::Transient(Box::new(err))
            } else if denied {
                Failure::Fatal(auth_refused())
            } else if not_found {
                Failure::Fatal(target.not_found())
            } else {
                Failure::Fatal(rejected(Box::new(err)))
            }
        }
        other => Failure::Fatal(rejected(Box::new(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_oci::ImageReference;
    use oci_client::errors::{OciEnvelope, OciError};

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://127.0.0.1:5117/v2/x/manifests/latest".to_owned(),
        }
    }

    fn server(code: u16) -> OciDistributionError {
        OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5117/v2/".to_owned(),
            message: String::new(),
        }
    }

    #[test]
    fn retry_classification() {
        let r: ImageReference = "127.0.0.1:5117/fixtures/busybox:latest".parse().unwrap();
        let t = Target::Manifest(&r);
        for code in [500, 502, 503, 504, 429, 408] {
            assert!(
                matches!(classify(server(code), &t, false), Failure::Transient(_)),
                "{code}"
            );
        }
        for code in [400, 405, 409, 416] {
            assert!(
                matches!(
                    classify(server(code), &t, false),
                    Failure::Fatal(RegistryError::Rejected { .. })
                ),
                "{code}"
            );
        }
        assert!(matches!(
            classify(server(404), &t, false),
            Failure::Fatal(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            classify(server(403), &t, true),
            Failure::Fatal(RegistryError::AuthRefused {
                with_credentials: true,
                ..
            })
        ));
        assert!(matches!(
            classify(envelope(OciErrorCode::Toomanyrequests), &t, false),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(envelope(OciErrorCode::ManifestUnknown), &t, false),
            Failure::Fatal(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            classify(envelope(OciErrorCode::Denied), &t, false),
            Failure::Fatal(RegistryError::AuthRefused {
                with_credentials: false,
                ..
            })
        ));
        assert!(matches!(
            classify(
                OciDistributionError::UnauthorizedError { url: String::new() },
                &t,
                false
            ),
            Failure::Fatal(RegistryError::AuthRefused { .. })
        ));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            classify(OciDistributionError::IoError(io), &t, false),
            Failure::Transient(_)
        ));
        let d = Digest::sha256_of(b"x");
        let b = Target::Blob(&r, &d);
        match classify(envelope(OciErrorCode::BlobUnknown), &b, false) {
            Failure::Fatal(e @ RegistryError::BlobNotFound { .. }) => {
                assert_eq!(e.kind(), ErrorKind::NotFound);
                assert_eq!(
                    e.to_string(),
                    format!("registry 127.0.0.1:5117 has no blob {d} in fixtures/busybox")
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn messages_are_one_lowercase_line() {
        let d = Digest::sha256_of(b"a");
        let a = Digest::sha256_of(b"b");
        let errors = [
            RegistryError::DigestMismatch {
                registry: "127.0.0.1:5117".into(),
                what: "blob",
                digest: d.clone(),
                actual: a.clone(),
            },
            RegistryError::AuthRefused {
                registry: "127.0.0.1:5118".into(),
                reference: "127.0.0.1:5118/fixtures/busybox:latest".into(),
                with_credentials: true,
            },
            RegistryError::NoMatchingPlatform {
                reference: "r".into(),
                platform: "linux/s390x".into(),
                available: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
            },
            RegistryError::Unreachable {
                registry: "127.0.0.1:1".into(),
                attempts: 3,
                source: "connection refused".into(),
            },
            RegistryError::Credentials {
                registry: "ghcr.io".into(),
                helper: "pass".into(),
                reason: "exit status 1: gpg failed".into(),
            },
        ];
        for e in &errors {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.ends_with('.'), "{msg}");
            assert!(msg.starts_with(|c: char| !c.is_uppercase()), "{msg}");
        }
        assert_eq!(
            errors[0].to_string(),
            format!(
                "registry 127.0.0.1:5117 served blob {d} with digest {a} (corrupt or lying registry)"
            )
        );
        assert_eq!(
            errors[1].to_string(),
            "registry 127.0.0.1:5118 refused authenticated access to \
             127.0.0.1:5118/fixtures/busybox:latest (check the credentials in the docker config)"
        );
        assert_eq!(
            errors[2].to_string(),
            "r has no image for platform linux/s390x (available: linux/amd64, linux/arm64/v8)"
        );
        assert_eq!(
            errors[3].to_string(),
            "registry 127.0.0.1:1 unreachable after 3 attempt(s): connection refused"
        );
        assert_eq!(
            errors[4].to_string(),
            "credential helper docker-credential-pass failed for registry ghcr.io: exit status 1: gpg failed"
        );
        assert_eq!(errors[0].kind(), ErrorKind::Corrupt);
        assert_eq!(errors[1].kind(), ErrorKind::Unauthorized);
        assert_eq!(errors[2].kind(), ErrorKind::Unsupported);
        assert_eq!(errors[3].kind(), ErrorKind::Transient);
    }
}
