//! Credentials from Docker's `config.json`, the file `docker login` writes.
//!
//! For a registry host cairn looks, in this order, at
//! 1. `credHelpers[host]`: runs `docker-credential-<name> get` with the server URL on stdin;
//! 2. `auths[host]`: `auth` (base64 of `user:password`), `username`/`password`,
//!    `identitytoken` or `registrytoken`;
//! 3. `credsStore`: the default helper, run as in 1.
//!
//! and pulls anonymously when none of them has anything. Docker Hub's key is
//! `https://index.docker.io/v1/`; other keys match on their host part, so `https://ghcr.io` and
//! `ghcr.io` are the same entry.
//!
//! The credentials go to `oci-client` as HTTP basic credentials, which it sends either directly
//! (registries that answer with a `Basic` challenge) or to the token service of a `Bearer`
//! challenge. Identity tokens (OAuth refresh tokens) are passed the same way, as the password of
//! the `<token>` user; registries that only take them through the OAuth `refresh_token` grant are
//! not supported yet.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::RegistryError;

/// The key Docker files Docker Hub credentials under.
pub(crate) const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";

/// Host names that all mean Docker Hub.
const DOCKER_HUB_HOSTS: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// How long a credential helper may take (it may be waiting on a keyring).
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// A user name and password.
    Basic { username: String, password: String },
    /// An OAuth refresh token, as `docker login` stores for some registries.
    IdentityToken {
        username: Option<String>,
        token: String,
    },
    /// A bearer token for the registry itself.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken { .. } => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The form `oci-client` takes.
    pub(crate) fn to_registry_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::IdentityToken { username, token } => RegistryAuth::Basic(
                username.clone().unwrap_or_else(|| "<token>".to_owned()),
                token.clone(),
            ),
            Credentials::RegistryToken(token) => RegistryAuth::Bearer(token.clone()),
        }
    }
}

/// The parts of `config.json` that concern credentials.
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// What a credential helper prints for `get`.
#[derive(Deserialize)]
struct HelperOutput {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// A loaded docker `config.json`.
#[derive(Debug, Default)]
pub(crate) struct DockerConfig {
    path: PathBuf,
    file: ConfigFile,
}

/// Where credential helpers are looked for: `$PATH`, or one directory (tests).
#[derive(Debug, Default, Clone)]
pub(crate) struct HelperRunner {
    dir: Option<PathBuf>,
}

impl DockerConfig {
    /// Reads `dir/config.json`; a missing file is an empty config.
    pub(crate) fn load(dir: &Path) -> Result<DockerConfig, RegistryError> {
        let path = dir.join("config.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DockerConfig {
                    path,
                    file: ConfigFile::default(),
                })
            }
            Err(e) => {
                return Err(RegistryError::DockerConfig {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let file = serde_json::from_slice(&bytes).map_err(|e| RegistryError::DockerConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(DockerConfig { path, file })
    }

    /// The credentials for `registry` (a host with optional port, as in an image reference),
    /// or `None` to pull anonymously.
    pub(crate) async fn credentials_for(
        &self,
        registry: &str,
        helpers: &HelperRunner,
    ) -> Result<Option<Credentials>, RegistryError> {
        if let Some(helper) = self.lookup(&self.file.cred_helpers, registry) {
            return helpers.get(helper, registry).await;
        }
        if let Some(entry) = self.lookup(&self.file.auths, registry) {
            if let Some(creds) = self.entry_credentials(entry, registry)? {
                return Ok(Some(creds));
            }
        }
        match &self.file.creds_store {
            Some(helper) if !helper.is_empty() => helpers.get(helper, registry).await,
            _ => Ok(None),
        }
    }

    /// The entry of `map` for `registry`: its exact key first, then any key with the same
    /// host, with Docker Hub's aliases folded together.
    fn lookup<'a, T>(&self, map: &'a HashMap<String, T>, registry: &str) -> Option<&'a T> {
        let exact = if is_docker_hub(registry) {
            DOCKER_HUB_KEY
        } else {
            registry
        };
        if let Some(v) = map.get(exact) {
            return Some(v);
        }
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort(); // deterministic when two keys name the same host
        keys.into_iter()
            .find(|k| same_host(&key_host(k), registry))
            .and_then(|k| map.get(k))
    }

    fn entry_credentials(
        &self,
        entry: &AuthEntry,
        registry: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let nonempty =
            |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(token) = nonempty(&entry.registrytoken) {
            return Ok(Some(Credentials::RegistryToken(token)));
        }
        let (mut username, mut password) = (nonempty(&entry.username), nonempty(&entry.password));
        if let Some(auth) = nonempty(&entry.auth) {
            let invalid = || RegistryError::DockerConfig {
                path: self.path.clone(),
                reason: format!(
                    "auths entry for {registry}: \"auth\" is not base64 of user:password"
                ),
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| invalid())?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
            let (user, pass) = decoded.split_once(':').ok_or_else(invalid)?;
            username = Some(user.to_owned());
            password = Some(pass.to_owned());
        }
        if let Some(token) = nonempty(&entry.identitytoken) {
            return Ok(Some(Credentials::IdentityToken { username, token }));
        }
        match (username, password) {
            (Some(username), Some(password)) => Ok(Some(Credentials::Basic { username, password })),
            _ => Ok(None),
        }
    }
}

impl HelperRunner {
    /// Helpers looked up in `dir` instead of `$PATH`.
    #[cfg(test)]
    pub(crate) fn in_dir(dir: &Path) -> HelperRunner {
        HelperRunner {
            dir: Some(dir.to_owned()),
        }
    }

    /// Runs `docker-credential-<helper> get` for `registry`.
    async fn get(
        &self,
        helper: &str,
        registry: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let fail = |reason: String| RegistryError::Credentials {
            registry: registry.to_owned(),
            helper: helper.to_owned(),
            reason,
        };
        if helper.is_empty()
            || !helper
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(fail("invalid helper name".to_owned()));
        }
        let program = format!("docker-credential-{helper}");
        let program = match &self.dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        };
        let server_url = if is_docker_hub(registry) {
            DOCKER_HUB_KEY
        } else {
            registry
        };
        tracing::debug!(helper, registry, "asking credential helper");
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("cannot run {}: {e}", program.display())))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        // A helper that exits without reading its input breaks the pipe: its exit status
        // is what tells what happened, so a write error is not reported on its own.
        let _ = stdin.write_all(server_url.as_bytes()).await;
        drop(stdin);
        let output = tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| fail(format!("no answer within {} s", HELPER_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            // The protocol's "not found" answer, printed by every helper of docker's
            // credential-helpers family: pull anonymously.
            if stdout.contains("credentials not found") || stderr.contains("credentials not found")
            {
                return Ok(None);
            }
            let said = [stderr.trim(), stdout.trim()]
                .into_iter()
                .find(|s| !s.is_empty())
                .map(|s| s.lines().next().unwrap_or_default().to_owned());
            return Err(fail(match said {
                Some(said) => format!("{}: {said}", output.status),
                None => output.status.to_string(),
            }));
        }
        let parsed: HelperOutput = serde_json::from_str(stdout.trim())
            .map_err(|e| fail(format!("unreadable answer: {e}")))?;
        if parsed.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if parsed.username == "<token>" {
            Credentials::IdentityToken {
                username: None,
                token: parsed.secret,
            }
        } else {
            Credentials::Basic {
                username: parsed.username,
                password: parsed.secret,
            }
        }))
    }
}

/// Whether a registry host is Docker Hub.
fn is_docker_hub(registry: &str) -> bool {
    DOCKER_HUB_HOSTS.contains(&registry)
}

/// The host part of a `config.json` key, which may be a bare host or a URL.
fn key_host(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest).to_ascii_lowercase()
}

fn same_host(key_host: &str, registry: &str) -> bool {
    key_host == registry.to_ascii_lowercase()
        || (is_docker_hub(key_host) && is_docker_hub(registry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> (tempfile::TempDir, DockerConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let cfg = DockerConfig::load(dir.path()).unwrap();
        (dir, cfg)
    }

    fn basic(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials::Basic {
            username: u.into(),
            password: p.into(),
        })
    }

    /// Writes an executable `docker-credential-<name>` shell script into `dir`.
    fn helper(dir: &Path, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(format!("docker-credential-{name}"));
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[tokio::test]
    async fn auths_entries() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons");
        let (_d, cfg) = config(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{b64}"}},
                "https://registry.example.com/v2/": {{"username": "bob", "password": "pw"}},
                "127.0.0.1:5118": {{"auth": "{b64}"}},
                "token.example.com": {{"username": "u", "identitytoken": "refresh"}},
                "bearer.example.com": {{"registrytoken": "tok"}},
                "empty.example.com": {{}}
            }}}}"#
        ));
        let h = HelperRunner::default();
        assert_eq!(
            cfg.credentials_for("docker.io", &h).await.unwrap(),
            basic("alice", "s3cret:with:colons")
        );
        assert_eq!(
            cfg.credentials_for("registry-1.docker.io", &h)
                .await
                .unwrap(),
            basic("alice", "s3cret:with:colons")
        );
        assert_eq!(
            cfg.credentials_for("registry.example.com", &h)
                .await
                .unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(
            cfg.credentials_for("127.0.0.1:5118", &h).await.unwrap(),
            basic("alice", "s3cret:with:colons")
        );
        assert_eq!(
            cfg.credentials_for("127.0.0.1:5117", &h).await.unwrap(),
            None
        );
        let id = cfg
            .credentials_for("token.example.com", &h)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            id,
            Credentials::IdentityToken {
                username: Some("u".into()),
                token: "refresh".into()
            }
        );
        assert_eq!(
            id.to_registry_auth(),
            RegistryAuth::Basic("u".into(), "refresh".into())
        );
        assert_eq!(
            cfg.credentials_for("bearer.example.com", &h)
                .await
                .unwrap()
                .unwrap()
                .to_registry_auth(),
            RegistryAuth::Bearer("tok".into())
        );
        assert_eq!(
            cfg.credentials_for("empty.example.com", &h).await.unwrap(),
            None
        );
        assert_eq!(cfg.credentials_for("ghcr.io", &h).await.unwrap(), None);
    }

    #[tokio::test]
    async fn missing_and_malformed_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DockerConfig::load(dir.path()).unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io", &HelperRunner::default())
                .await
                .unwrap(),
            None
        );

        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        let err = DockerConfig::load(dir.path()).unwrap_err();
        assert!(matches!(err, RegistryError::DockerConfig { .. }), "{err}");
        assert!(
            err.to_string().starts_with("cannot use docker config "),
            "{err}"
        );

        let (_d, cfg) = config(r#"{"auths": {"r.example.com": {"auth": "!!!"}}}"#);
        let err = cfg
            .credentials_for("r.example.com", &HelperRunner::default())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("auths entry for r.example.com"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn cred_helpers_and_store() {
        let bin = tempfile::tempdir().unwrap();
        // Echoes the server URL it was asked about back as the user name.
        helper(
            bin.path(),
            "fake",
            r#"[ "$1" = get ] || exit 2
read -r url
printf '{"ServerURL":"%s","Username":"%s","Secret":"pw-%s"}' "$url" "$url" "$url""#,
        );
        helper(
            bin.path(),
            "token",
            r#"cat >/dev/null; echo '{"Username":"<token>","Secret":"refresh"}'"#,
        );
        helper(
            bin.path(),
            "store",
            r#"read -r url; printf '{"Username":"store","Secret":"%s"}' "$url""#,
        );
        helper(
            bin.path(),
            "missing",
            "cat >/dev/null; echo 'credentials not found in native keychain'; exit 1",
        );
        helper(
            bin.path(),
            "broken",
            "echo 'gpg: decryption failed: No secret key' >&2; exit 1",
        );
        let (_d, cfg) = config(
            r#"{
              "auths": {"inline.example.com": {"username": "i", "password": "p"},
                        "helped.example.com": {"username": "not", "password": "used"}},
              "credHelpers": {"helped.example.com": "fake", "docker.io": "fake",
                              "tok.example.com": "token", "none.example.com": "missing",
                              "bad.example.com": "broken", "absent.example.com": "nosuchhelper",
                              "evil.example.com": "../../bin/sh"},
              "credsStore": "store"
            }"#,
        );
        let h = HelperRunner::in_dir(bin.path());
        assert_eq!(
            cfg.credentials_for("helped.example.com", &h).await.unwrap(),
            basic("helped.example.com", "pw-helped.example.com")
        );
        assert_eq!(
            cfg.credentials_for("docker.io", &h).await.unwrap(),
            basic(DOCKER_HUB_KEY, &format!("pw-{DOCKER_HUB_KEY}"))
        );
        assert_eq!(
            cfg.credentials_for("tok.example.com", &h).await.unwrap(),
            Some(Credentials::IdentityToken {
                username: None,
                token: "refresh".into()
            })
        );
        assert_eq!(
            cfg.credentials_for("none.example.com", &h).await.unwrap(),
            None
        );
        // Inline auths win over the default store; the store is the fallback.
        assert_eq!(
            cfg.credentials_for("inline.example.com", &h).await.unwrap(),
            basic("i", "p")
        );
        assert_eq!(
            cfg.credentials_for("other.example.com:5000", &h)
                .await
                .unwrap(),
            basic("store", "other.example.com:5000")
        );

        let err = cfg
            .credentials_for("bad.example.com", &h)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "credential helper docker-credential-broken failed for registry bad.example.com: \
             exit status: 1: gpg: decryption failed: No secret key"
        );
        assert_eq!(err.kind(), crate::ErrorKind::Unauthorized);
        let err = cfg
            .credentials_for("absent.example.com", &h)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RegistryError::Credentials { helper, .. } if helper == "nosuchhelper"),
            "{err}"
        );
        assert!(err.to_string().contains("cannot run"), "{err}");
        let err = cfg
            .credentials_for("evil.example.com", &h)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid helper name"), "{err}");
    }

    #[test]
    fn key_hosts() {
        assert_eq!(key_host("https://index.docker.io/v1/"), "index.docker.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("Ghcr.io"), "ghcr.io");
        assert!(same_host("index.docker.io", "docker.io"));
        assert!(!same_host("ghcr.io", "docker.io"));
    }
}
