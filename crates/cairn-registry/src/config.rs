//! How a [`RegistryClient`](crate::RegistryClient) talks to registries.

use std::path::PathBuf;
use std::time::Duration;

use cairn_oci::{registry_is_loopback, Platform};

use crate::RetryPolicy;

/// The environment variable naming extra plain-HTTP registries, comma-separated.
pub const INSECURE_REGISTRIES_ENV: &str = "CAIRN_INSECURE_REGISTRIES";

/// Settings for a [`RegistryClient`](crate::RegistryClient).
///
/// [`RegistryConfig::default`] reads nothing from the environment: no credentials, HTTPS
/// everywhere but loopback. [`RegistryConfig::from_env`] is what a command-line tool wants.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries spoken to over plain HTTP, besides loopback ones (`localhost`, 127.0.0.0/8,
    /// `::1`), which always are. An entry is a host with port (`10.0.0.5:5000`) or a bare
    /// host, which then matches every port.
    pub insecure_registries: Vec<String>,
    /// The directory holding Docker's `config.json`, where credentials come from; `None` pulls
    /// anonymously from everywhere.
    pub docker_config_dir: Option<PathBuf>,
    /// The platform whose image is picked from multi-platform indexes.
    pub platform: Platform,
    /// Retrying of transient failures.
    pub retry: RetryPolicy,
    /// The `User-Agent` header.
    pub user_agent: &'static str,
    /// How long establishing a connection may take.
    pub connect_timeout: Duration,
    /// How long a read may wait for the next bytes of a response; a stalled blob download
    /// fails after this and is resumed.
    pub read_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure_registries: Vec::new(),
            docker_config_dir: None,
            platform: Platform::host(),
            retry: RetryPolicy::default(),
            user_agent: concat!("cairn/", env!("CARGO_PKG_VERSION")),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl RegistryConfig {
    /// The defaults, plus what the environment says: insecure registries from
    /// `CAIRN_INSECURE_REGISTRIES` (comma-separated), and the docker config directory from
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub fn from_env() -> Self {
        let insecure_registries = std::env::var(INSECURE_REGISTRIES_ENV)
            .map(|v| parse_list(&v))
            .unwrap_or_default();
        let docker_config_dir = std::env::var_os("DOCKER_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|home| PathBuf::from(home).join(".docker"))
            });
        RegistryConfig {
            insecure_registries,
            docker_config_dir,
            ..RegistryConfig::default()
        }
    }

    /// Whether `registry` (host with optional port) is spoken to over plain HTTP.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        registry_is_loopback(registry)
            || self.insecure_registries.iter().any(|entry| {
                entry == registry || (host_of(entry) == entry && host_of(registry) == entry)
            })
    }
}

/// The host part of `host[:port]` (IPv6 hosts keep their brackets).
fn host_of(registry: &str) -> &str {
    if registry.starts_with('[') {
        return registry
            .split_once(']')
            .map_or(registry, |(h, _)| &registry[..=h.len()]);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

fn parse_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_hosts() {
        let cfg = RegistryConfig {
            insecure_registries: parse_list(" registry.lan:5000, ,buildhost ,[fd00::1]"),
            ..RegistryConfig::default()
        };
        assert_eq!(
            cfg.insecure_registries,
            ["registry.lan:5000", "buildhost", "[fd00::1]"]
        );
        for (r, want) in [
            ("127.0.0.1:5117", true),
            ("localhost", true),
            ("registry.lan:5000", true),
            ("registry.lan:5001", false),
            ("registry.lan", false),
            ("buildhost:8080", true),
            ("buildhost", true),
            ("[fd00::1]:5000", true),
            ("docker.io", false),
        ] {
            assert_eq!(cfg.is_plain_http(r), want, "{r}");
        }
    }
}
