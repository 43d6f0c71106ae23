use std::fmt;

/// An image platform: operating system, architecture and optional variant, in OCI spelling
/// (`linux`, `amd64`, `arm64`/`v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, …
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub architecture: String,
    /// `v7`, `v8`, … where the architecture has variants.
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            "x86" => ("386", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" => ("ppc64le", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// How well an index entry's platform serves this one: `None` if it cannot run here, a
    /// higher score for a closer match (an exact variant beats an entry that names none).
    pub fn match_score(&self, os: &str, architecture: &str, variant: Option<&str>) -> Option<u8> {
        if os != self.os || architecture != self.architecture {
            return None;
        }
        match (self.variant.as_deref(), variant) {
            (Some(want), Some(have)) if want == have => Some(2),
            (_, None) => Some(1),
            // arm64 images rarely name a variant; "v8" is the only one in use.
            (None, Some(_)) => Some(0),
            (Some(_), Some(_)) => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores() {
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into()),
        };
        assert_eq!(arm.match_score("linux", "arm64", Some("v8")), Some(2));
        assert_eq!(arm.match_score("linux", "arm64", None), Some(1));
        assert_eq!(arm.match_score("linux", "amd64", None), None);
        assert_eq!(arm.match_score("windows", "arm64", None), None);
        let host = Platform::host();
        assert_eq!(host.os, "linux");
    }
}
