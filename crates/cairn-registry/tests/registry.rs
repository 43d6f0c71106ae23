//! End-to-end tests against the real registries `rootfs-fixtures/` starts on 127.0.0.1.
//!
//! They need `.fixtures/env` at the workspace root (or its variables in the environment) and
//! fail, loudly, without it: `.ci/run` sets the fixtures up before running them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_oci::{media_types, Digest, ImageReference, LayerCompression, Platform};
use cairn_registry::{
    ErrorKind, RegistryClient, RegistryConfig, RegistryError, ResolvedImage, RetryPolicy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The registries and user the fixtures provide.
struct Fixtures {
    /// Anonymous registry with every fixture image.
    registry: String,
    /// Registry behind htpasswd basic auth.
    basic: String,
    /// Registry behind bearer-token auth.
    token: String,
    user: String,
    password: String,
    /// Registry serving `fixtures/corrupt:latest` and `:uncompressed`, whose layers include
    /// corrupted blobs.
    corrupt: String,
    /// The digests of the corrupted blobs.
    corrupt_blobs: Vec<Digest>,
}

fn env_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.fixtures/env")
}

/// `KEY=value` lines (optionally `export`ed, optionally quoted), `#` comments.
fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

fn fixtures() -> Fixtures {
    // Logs (retry warnings) go to the test's captured output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "cairn_registry=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let file = std::fs::read_to_string(env_file())
        .map(|t| parse_env(&t))
        .unwrap_or_default();
    let get = |key: &str| -> String {
        std::env::var(key)
            .ok()
            .or_else(|| file.get(key).cloned())
            .unwrap_or_else(|| {
                panic!(
                    "test registry not set up: {key} is neither in the environment nor in {} \
                 (build and start the fixtures with rootfs-fixtures/ first, as .ci/run does)",
                    env_file().display()
                )
            })
    };
    Fixtures {
        registry: get("CAIRN_TEST_REGISTRY"),
        basic: get("CAIRN_TEST_REGISTRY_BASIC"),
        token: get("CAIRN_TEST_REGISTRY_TOKEN"),
        user: get("CAIRN_TEST_REGISTRY_USER"),
        password: get("CAIRN_TEST_REGISTRY_PASSWORD"),
        corrupt: get("CAIRN_TEST_REGISTRY_CORRUPT"),
        corrupt_blobs: [
            "CAIRN_TEST_CORRUPT_GZIP_BLOB",
            "CAIRN_TEST_CORRUPT_TAR_BLOB",
        ]
        .map(|k| get(k).parse().unwrap())
        .to_vec(),
    }
}

fn reference(registry: &str, name: &str) -> ImageReference {
    format!("{registry}/{name}").parse().unwrap()
}

fn platform(arch: &str, variant: Option<&str>) -> Platform {
    Platform {
        os: "linux".into(),
        architecture: arch.into(),
        variant: variant.map(Into::into),
    }
}

/// Anonymous, amd64, with quick retries.
fn config() -> RegistryConfig {
    RegistryConfig {
        platform: platform("amd64", None),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
        },
        ..RegistryConfig::default()
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(config())
}

/// A client whose docker config holds `user:password` for `registry`.
fn client_with_login(
    registry: &str,
    user: &str,
    password: &str,
) -> (tempfile::TempDir, RegistryClient) {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.path().join("config.json"),
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let client = RegistryClient::new(RegistryConfig {
        docker_config_dir: Some(dir.path().to_owned()),
        ..config()
    });
    (dir, client)
}

fn digest_of(d: &oci_spec::image::Digest) -> Digest {
    d.as_ref().parse().unwrap()
}

/// The `architecture` of the resolved image's config, checking that it is the config the
/// manifest names and that fetching it on its own gives the same bytes.
async fn config_architecture(client: &RegistryClient, image: &ResolvedImage) -> String {
    let c = image.manifest.config();
    assert_eq!(
        Digest::sha256_of(&image.config_bytes),
        digest_of(c.digest())
    );
    let bytes = client
        .fetch_blob_bytes(&image.reference, &digest_of(c.digest()), c.size())
        .await
        .unwrap();
    assert_eq!(bytes, image.config_bytes);
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let arch = json["architecture"].as_str().unwrap().to_owned();
    assert_eq!(arch, image.platform.architecture);
    arch
}

/// Fetches every layer of `m` and checks size, digest and progress reports.
async fn fetch_layers(
    client: &RegistryClient,
    r: &ImageReference,
    m: &oci_spec::image::ImageManifest,
) {
    for layer in m.layers() {
        let digest = digest_of(layer.digest());
        let mut data = Vec::new();
        let last = AtomicU64::new(0);
        client
            .fetch_blob(r, &digest, layer.size(), &mut data, &|n| {
                assert!(
                    n >= last.swap(n, Ordering::SeqCst),
                    "progress went backwards"
                );
            })
            .await
            .unwrap_or_else(|e| panic!("{r} layer {digest}: {e}"));
        assert_eq!(data.len() as u64, layer.size());
        assert_eq!(Digest::sha256_of(&data), digest);
        assert_eq!(last.load(Ordering::SeqCst), layer.size());
    }
}

#[tokio::test]
async fn resolves_every_fixture_image() {
    let f = fixtures();
    let client = client();
    for (name, media_type, is_index) in [
        ("fixtures/busybox:latest", None, false),
        (
            "fixtures/busybox:docker",
            Some(media_types::DOCKER_MANIFEST),
            false,
        ),
        ("fixtures/busybox:multi", None, true),
        (
            "fixtures/busybox:multi-docker",
            Some(media_types::DOCKER_MANIFEST),
            true,
        ),
        ("fixtures/busybox:uncompressed", None, false),
        ("fixtures/busybox:config", None, false),
        ("fixtures/layers:latest", None, false),
        ("fixtures/layers:zstd", None, false),
        ("fixtures/debian:bookworm", None, false),
    ] {
        let r = reference(&f.registry, name);
        let image = client
            .resolve(&r)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(image.reference, r);
        assert_eq!(
            Digest::sha256_of(&image.manifest_bytes),
            image.manifest_digest,
            "{name}"
        );
        if let Some(mt) = media_type {
            assert_eq!(image.manifest_media_type, mt, "{name}");
        }
        assert!(!image.manifest.layers().is_empty(), "{name}");
        match (&image.index, is_index) {
            (Some((digest, bytes)), true) => {
                assert_eq!(Digest::sha256_of(bytes), *digest, "{name}");
            }
            (None, false) => {}
            (index, _) => panic!("{name}: index {index:?}"),
        }
        assert_eq!(image.platform, platform("amd64", None), "{name}");
        assert_eq!(
            config_architecture(&client, &image).await,
            "amd64",
            "{name}"
        );
        // Pinning the resolved digest resolves to the same manifest.
        let pinned = r.with_digest(
            image
                .index
                .as_ref()
                .map_or(&image.manifest_digest, |(d, _)| d),
        );
        let again = client
            .resolve(&pinned)
            .await
            .unwrap_or_else(|e| panic!("{pinned}: {e}"));
        assert_eq!(again.manifest_digest, image.manifest_digest, "{name}");
    }
    let zstd = client
        .resolve(&reference(&f.registry, "fixtures/layers:zstd"))
        .await
        .unwrap();
    assert!(
        zstd.manifest
            .layers()
            .iter()
            .any(
                |l| LayerCompression::from_media_type(l.media_type().as_ref())
                    == Ok(LayerCompression::Zstd)
            ),
        "layers:zstd has no zstd layer"
    );
}

#[tokio::test]
async fn index_picks_the_configured_platform() {
    let f = fixtures();
    for name in ["fixtures/busybox:multi", "fixtures/busybox:multi-docker"] {
        let r = reference(&f.registry, name);
        let amd = RegistryClient::new(config());
        let arm = RegistryClient::new(RegistryConfig {
            platform: platform("arm64", Some("v8")),
            ..config()
        });
        let a = amd.resolve(&r).await.unwrap();
        let b = arm.resolve(&r).await.unwrap();
        assert_eq!(
            a.index.as_ref().unwrap().0,
            b.index.as_ref().unwrap().0,
            "{name}: same index"
        );
        assert_ne!(a.manifest_digest, b.manifest_digest, "{name}");
        assert_ne!(
            a.manifest.config().digest(),
            b.manifest.config().digest(),
            "{name}"
        );
        assert_eq!(b.platform, platform("arm64", Some("v8")));
        assert_eq!(config_architecture(&amd, &a).await, "amd64");
        assert_eq!(config_architecture(&arm, &b).await, "arm64");

        let s390 = RegistryClient::new(RegistryConfig {
            platform: platform("s390x", None),
            ..config()
        });
        let err = s390.resolve(&r).await.unwrap_err();
        match &err {
            RegistryError::NoMatchingPlatform { available, .. } => {
                assert!(available.iter().any(|p| p == "linux/amd64"), "{err}");
                assert!(
                    available.iter().any(|p| p.starts_with("linux/arm64")),
                    "{err}"
                );
            }
            other => panic!("{name}: {other}"),
        }
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
}

#[tokio::test]
async fn single_platform_image_for_another_platform_is_refused() {
    let f = fixtures();
    let r = reference(&f.registry, "fixtures/busybox:arm64-only");
    let err = client().resolve(&r).await.unwrap_err();
    match &err {
        RegistryError::NoMatchingPlatform {
            platform,
            available,
            ..
        } => {
            assert_eq!(platform, "linux/amd64");
            assert_eq!(available, &["linux/arm64/v8"]);
        }
        other => panic!("{other}"),
    }
    let arm = RegistryClient::new(RegistryConfig {
        platform: platform("arm64", Some("v8")),
        ..config()
    });
    let image = arm.resolve(&r).await.unwrap();
    assert!(image.index.is_none());
    assert_eq!(image.platform, platform("arm64", Some("v8")));
}

#[tokio::test]
async fn fetches_blobs() {
    let f = fixtures();
    let client = client();
    for name in [
        "fixtures/busybox:latest",
        "fixtures/busybox:docker",
        "fixtures/layers:latest",
        "fixtures/layers:zstd",
    ] {
        let r = reference(&f.registry, name);
        let image = client.resolve(&r).await.unwrap();
        fetch_layers(&client, &r, &image.manifest).await;
    }
}

#[tokio::test]
async fn refuses_a_blob_bigger_than_its_descriptor() {
    let f = fixtures();
    let client = client();
    let r = reference(&f.registry, "fixtures/busybox:latest");
    let image = client.resolve(&r).await.unwrap();
    let layer = &image.manifest.layers()[0];
    let mut data = Vec::new();
    let err = client
        .fetch_blob(
            &r,
            &digest_of(layer.digest()),
            layer.size() - 1,
            &mut data,
            &|_| {},
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
    assert!((data.len() as u64) < layer.size());
    let c = image.manifest.config();
    let err = client
        .fetch_blob_bytes(&r, &digest_of(c.digest()), c.size() + 10)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err}");
}

#[tokio::test]
async fn basic_and_token_auth() {
    let f = fixtures();
    for registry in [&f.basic, &f.token] {
        let r = reference(registry, "fixtures/busybox:latest");
        let (_dir, login) = client_with_login(registry, &f.user, &f.password);
        let image = login
            .resolve(&r)
            .await
            .unwrap_or_else(|e| panic!("{registry}: {e}"));
        fetch_layers(&login, &r, &image.manifest).await;

        let (_dir, wrong) = client_with_login(registry, &f.user, "wrong-password");
        let err = wrong.resolve(&r).await.unwrap_err();
        assert!(
            matches!(&err, RegistryError::AuthRefused { registry: reg, with_credentials: true, .. } if reg == registry),
            "{registry}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        assert!(err.to_string().contains(registry.as_str()), "{err}");

        let err = client().resolve(&r).await.unwrap_err();
        assert!(
            matches!(
                &err,
                RegistryError::AuthRefused {
                    with_credentials: false,
                    ..
                }
            ),
            "{registry}: {err}"
        );
    }
}

#[tokio::test]
async fn corrupt_blob_is_a_digest_mismatch() {
    let f = fixtures();
    let client = client();
    let mut seen = Vec::new();
    for name in ["fixtures/corrupt:latest", "fixtures/corrupt:uncompressed"] {
        let r = reference(&f.corrupt, name);
        let image = client
            .resolve(&r)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        for layer in image.manifest.layers() {
            let digest = digest_of(layer.digest());
            let mut data = Vec::new();
            let result = client
                .fetch_blob(&r, &digest, layer.size(), &mut data, &|_| {})
                .await;
            if !f.corrupt_blobs.contains(&digest) {
                result.unwrap_or_else(|e| panic!("{name}: intact layer {digest}: {e}"));
                continue;
            }
            seen.push(digest.clone());
            let err = result.expect_err("corrupt blob accepted");
            match &err {
                RegistryError::DigestMismatch {
                    registry,
                    digest: d,
                    actual,
                    ..
                } => {
                    assert_eq!(registry, &f.corrupt);
                    assert_eq!(d, &digest);
                    assert_eq!(actual, &Digest::sha256_of(&data));
                }
                other => panic!("{name}: {other}"),
            }
            assert_eq!(err.kind(), ErrorKind::Corrupt);
            assert_eq!(
                err.to_string(),
                format!(
                    "registry {} served blob {digest} with digest {} (corrupt or lying registry)",
                    f.corrupt,
                    Digest::sha256_of(&data)
                )
            );
        }
    }
    seen.sort();
    let mut want = f.corrupt_blobs.clone();
    want.sort();
    assert_eq!(
        seen, want,
        "every corrupted blob is a layer of a corrupt image"
    );
}

#[tokio::test]
async fn unknown_tag_repository_and_blob_are_not_found() {
    let f = fixtures();
    let client = client();
    for name in [
        "fixtures/busybox:no-such-tag",
        "fixtures/no-such-repo:latest",
    ] {
        let r = reference(&f.registry, name);
        let err = client.resolve(&r).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::NotFound { .. }),
            "{name}: {err}"
        );
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            format!("registry {} has no manifest for {r}", f.registry)
        );
    }
    let r = reference(&f.registry, "fixtures/busybox:latest");
    let missing = Digest::sha256_of(b"no such blob");
    let err = client.fetch_blob_bytes(&r, &missing, 12).await.unwrap_err();
    assert!(matches!(err, RegistryError::BlobNotFound { .. }), "{err}");
    let pinned = r.with_digest(&missing);
    let err = client.resolve(&pinned).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn closed_port_is_unreachable_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let registry = format!("127.0.0.1:{port}");
    let client = RegistryClient::new(RegistryConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
        ..config()
    });
    let err = client
        .resolve(&reference(&registry, "fixtures/busybox:latest"))
        .await
        .unwrap_err();
    match &err {
        RegistryError::Unreachable {
            registry: r,
            attempts,
            ..
        } => {
            assert_eq!(r, &registry);
            assert_eq!(*attempts, 3);
        }
        other => panic!("{other}"),
    }
    assert_eq!(err.kind(), ErrorKind::Transient);
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "registry {registry} unreachable after 3 attempt(s): "
        )),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// A TCP proxy in front of a registry that records the requests passing, can answer the first
/// connections with `503 Service Unavailable`, can cut the response to the first blob request
/// after `cut_after` bytes, and can strip `Range` headers so the registry answers every
/// resumption with the whole blob.
struct Proxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
}

struct ProxyState {
    upstream: String,
    cut_after: u64,
    strip_range: bool,
    /// Connections still to be answered with a 503.
    fail_connections: AtomicU64,
    /// Whether the one cut is still to be made.
    cut_pending: AtomicBool,
    cuts: AtomicU64,
    /// Requests seen: the request line and the `Range` header, if any.
    requests: Mutex<Vec<(String, Option<String>)>>,
}

impl Proxy {
    async fn start(
        upstream: &str,
        cut_after: u64,
        strip_range: bool,
        fail_connections: u64,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            cut_after,
            strip_range,
            fail_connections: AtomicU64::new(fail_connections),
            cut_pending: AtomicBool::new(true),
            cuts: AtomicU64::new(0),
            requests: Mutex::default(),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Proxy::connection(conn, s.clone()));
            }
        });
        Proxy { addr, state }
    }

    /// The requests seen whose line contains `pattern`.
    fn requests(&self, pattern: &str) -> Vec<(String, Option<String>)> {
        let requests = self.state.requests.lock().unwrap();
        requests
            .iter()
            .filter(|(line, _)| line.contains(pattern))
            .cloned()
            .collect()
    }

    async fn connection(mut client: TcpStream, state: Arc<ProxyState>) {
        let fail = state
            .fail_connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if client.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            let line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            state.requests.lock().unwrap().push((line, None));
            let _ = client
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            return;
        }
        let Ok(server) = TcpStream::connect(&state.upstream).await else {
            return;
        };
        let (mut client_read, mut client_write) = client.into_split();
        let (mut server_read, mut server_write) = server.into_split();
        // Response bytes passed so far, and the count at which to cut (u64::MAX: never).
        let passed = Arc::new(AtomicU64::new(0));
        let cut_at = Arc::new(AtomicU64::new(u64::MAX));
        let requests = {
            let (state, passed, cut_at) = (state.clone(), passed.clone(), cut_at.clone());
            async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let n = client_read.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // GET requests have no body: the stream is a sequence of heads.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let mut lines = head.split("\r\n");
                        let request_line = lines.next().unwrap_or_default().to_owned();
                        let range = lines
                            .clone()
                            .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                            .map(|l| l["range:".len()..].trim().to_owned());
                        let mut forwarded = head.clone();
                        if state.strip_range {
                            forwarded = head
                                .split("\r\n")
                                .filter(|l| !l.to_ascii_lowercase().starts_with("range:"))
                                .collect::<Vec<_>>()
                                .join("\r\n");
                        }
                        let is_blob = request_line.contains("/blobs/");
                        state.requests.lock().unwrap().push((request_line, range));
                        if is_blob && state.cut_pending.swap(false, Ordering::SeqCst) {
                            // Responses are sequential: every byte from here on belongs to
                            // this request's response.
                            cut_at.store(
                                passed
                                    .load(Ordering::SeqCst)
                                    .saturating_add(state.cut_after),
                                Ordering::SeqCst,
                            );
                        }
                        if server_write.write_all(forwarded.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        let responses = async move {
            let mut chunk = [0u8; 8192];
            loop {
                let n = server_read.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                let before = passed.load(Ordering::SeqCst);
                let limit = cut_at.load(Ordering::SeqCst);
                if before + n as u64 >= limit {
                    let keep = (limit - before) as usize;
                    let _ = client_write.write_all(&chunk[..keep]).await;
                    let _ = client_write.shutdown().await;
                    state.cuts.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                if client_write.write_all(&chunk[..n]).await.is_err() {
                    return;
                }
                passed.fetch_add(n as u64, Ordering::SeqCst);
            }
        };
        // Whichever direction ends first ends the connection: dropping both halves of both
        // sockets closes them.
        tokio::select! {
            _ = requests => {}
            _ = responses => {}
        }
    }
}

/// The biggest layer of the fixture `debian:bookworm`, resolved directly.
async fn biggest_layer(f: &Fixtures) -> (Digest, u64) {
    let r = reference(&f.registry, "fixtures/debian:bookworm");
    let image = client().resolve(&r).await.unwrap();
    let layer = image
        .manifest
        .layers()
        .iter()
        .max_by_key(|l| l.size())
        .unwrap();
    (digest_of(layer.digest()), layer.size())
}

async fn fetch_through_cutting_proxy(strip_range: bool) {
    let f = fixtures();
    let (digest, size) = biggest_layer(&f).await;
    let cut_after = 256 * 1024;
    assert!(
        size > 2 * cut_after,
        "fixture layer too small to cut: {size} bytes"
    );
    let proxy = Proxy::start(&f.registry, cut_after, strip_range, 0).await;
    let r = reference(&proxy.addr.to_string(), "fixtures/debian:bookworm");
    let client = client();
    let reports = Mutex::new(Vec::new());
    let mut data = Vec::new();
    client
        .fetch_blob(&r, &digest, size, &mut data, &|n| {
            reports.lock().unwrap().push(n)
        })
        .await
        .unwrap();
    assert_eq!(data.len() as u64, size);
    assert_eq!(Digest::sha256_of(&data), digest);
    assert_eq!(proxy.state.cuts.load(Ordering::SeqCst), 1);
    let requests = proxy.requests("/blobs/");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].1, None, "first request asks for the whole blob");
    let resumed_at: u64 = requests[1]
        .1
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("second request has no open Range: {requests:?}"));
    assert!(
        resumed_at > 0 && resumed_at < cut_after,
        "resumed at {resumed_at}"
    );
    let reports = reports.into_inner().unwrap();
    assert!(
        reports.windows(2).all(|w| w[0] < w[1]),
        "progress not strictly increasing"
    );
    assert!(
        reports.contains(&resumed_at),
        "progress never reported the cut point {resumed_at}"
    );
    assert_eq!(reports.last(), Some(&size));
}

#[tokio::test]
async fn resumes_a_cut_blob_with_a_range_request() {
    fetch_through_cutting_proxy(false).await;
}

#[tokio::test]
async fn resumes_a_cut_blob_when_the_registry_ignores_range() {
    fetch_through_cutting_proxy(true).await;
}

#[tokio::test]
async fn retries_server_errors_but_not_client_errors() {
    let f = fixtures();
    // Two 503s, then the registry. oci-client probes `/v2/` before each request to an
    // anonymous registry and ignores the probe's failure, so the first 503 may go to the
    // probe rather than the manifest request.
    let proxy = Proxy::start(&f.registry, u64::MAX, false, 2).await;
    let r = reference(&proxy.addr.to_string(), "fixtures/busybox:latest");
    let image = client().resolve(&r).await.unwrap();
    assert_eq!(proxy.state.fail_connections.load(Ordering::SeqCst), 0);
    let asked = proxy.requests("/manifests/latest").len();
    assert!((2..=3).contains(&asked), "{asked} manifest requests");
    fetch_layers(&client(), &r, &image.manifest).await;

    // Only 503s: the retries run out.
    let proxy = Proxy::start(&f.registry, u64::MAX, false, 100).await;
    let r = reference(&proxy.addr.to_string(), "fixtures/busybox:latest");
    let err = client().resolve(&r).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { attempts: 4, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    assert_eq!(proxy.requests("/manifests/latest").len(), 4);

    // A 404 is an answer, asked once.
    let proxy = Proxy::start(&f.registry, u64::MAX, false, 0).await;
    let r = reference(&proxy.addr.to_string(), "fixtures/busybox:no-such-tag");
    let err = client().resolve(&r).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert_eq!(proxy.requests("/manifests/").len(), 1);
}
