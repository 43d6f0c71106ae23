use std::fmt;
use std::path::Path;

use crate::RuntimeError;

/// A contiguous run of ids: `count` ids from `host` on the host appear from `inside` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub host: u32,
    /// How many ids.
    pub count: u32,
}

/// How a plain user's ids appear inside a user namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum IdMapping {
    /// Only the user: root inside is the user outside; any other owner cannot exist.
    Single {
        /// The user's uid.
        uid: u32,
        /// The user's gid.
        gid: u32,
    },
    /// The user as root plus a subordinate range from `/etc/subuid` and `/etc/subgid` for ids
    /// 1 and up, installed with the setuid `newuidmap`/`newgidmap`.
    Full {
        /// uid ranges, the user's own first.
        uids: Vec<IdRange>,
        /// gid ranges, the user's own first.
        gids: Vec<IdRange>,
    },
}

impl IdMapping {
    /// The best mapping this user can have: the full one when `/etc/subuid` and `/etc/subgid`
    /// grant ranges and `newuidmap`/`newgidmap` are installed, else the single one.
    pub fn detect() -> IdMapping {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let name = nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name);
        let tools = ["newuidmap", "newgidmap"]
            .iter()
            .all(|t| find_in_path(t).is_some());
        let sub = |file: &str| -> Option<(u32, u32)> {
            let text = std::fs::read_to_string(file).ok()?;
            subordinate_range(&text, name.as_deref(), uid)
        };
        match (tools, sub("/etc/subuid"), sub("/etc/subgid")) {
            (true, Some((us, uc)), Some((gs, gc))) => IdMapping::Full {
                uids: vec![
                    IdRange {
                        inside: 0,
                        host: uid,
                        count: 1,
                    },
                    IdRange {
                        inside: 1,
                        host: us,
                        count: uc,
                    },
                ],
                gids: vec![
                    IdRange {
                        inside: 0,
                        host: gid,
                        count: 1,
                    },
                    IdRange {
                        inside: 1,
                        host: gs,
                        count: gc,
                    },
                ],
            },
            _ => IdMapping::Single { uid, gid },
        }
    }

    /// Whether ids other than root can exist inside.
    pub fn is_full(&self) -> bool {
        matches!(self, IdMapping::Full { .. })
    }

    /// Writes this mapping for the process `pid`, which has just entered a new user namespace.
    /// Refusals of `newuidmap`/`newgidmap` are errors here: libcontainer and others ignore them,
    /// which only shows much later as an unexplained `EINVAL`.
    pub fn apply_to(&self, pid: u32) -> Result<(), RuntimeError> {
        match self {
            IdMapping::Single { uid, gid } => {
                let proc = Path::new("/proc").join(pid.to_string());
                let write = |file: &str, text: String| {
                    let path = proc.join(file);
                    std::fs::write(&path, text).map_err(|source| RuntimeError::Io {
                        action: "write",
                        path,
                        source,
                    })
                };
                write("uid_map", format!("0 {uid} 1\n"))?;
                // An unprivileged writer may map a gid only with setgroups disabled.
                write("setgroups", "deny\n".into())?;
                write("gid_map", format!("0 {gid} 1\n"))
            }
            IdMapping::Full { uids, gids } => {
                // The two tools write different files; run them side by side (each is a
                // setuid program start, a few milliseconds here).
                let uid_tool = start_map_tool("newuidmap", pid, uids)?;
                let gid_tool = start_map_tool("newgidmap", pid, gids);
                let uid_result = uid_tool.finish();
                gid_tool?.finish()?;
                uid_result
            }
        }
    }
}

impl fmt::Display for IdMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdMapping::Single { uid, gid } => write!(f, "single id {uid}:{gid}"),
            IdMapping::Full { uids, gids } => {
                write!(f, "uids")?;
                for r in uids {
                    write!(f, " {}->{}+{}", r.inside, r.host, r.count)?;
                }
                write!(f, ", gids")?;
                for r in gids {
                    write!(f, " {}->{}+{}", r.inside, r.host, r.count)?;
                }
                Ok(())
            }
        }
    }
}

/// A running `newuidmap` or `newgidmap`.
struct MapTool {
    tool: &'static str,
    pid: u32,
    mapping: String,
    child: std::process::Child,
}

fn start_map_tool(
    tool: &'static str,
    pid: u32,
    ranges: &[IdRange],
) -> Result<MapTool, RuntimeError> {
    let mut args = vec![pid.to_string()];
    for r in ranges {
        args.extend([
            r.inside.to_string(),
            r.host.to_string(),
            r.count.to_string(),
        ]);
    }
    let child = std::process::Command::new(tool)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| RuntimeError::Spawn {
            program: tool.to_owned(),
            source,
        })?;
    Ok(MapTool {
        tool,
        pid,
        mapping: args[1..].join(" "),
        child,
    })
}

impl MapTool {
    /// Waits for the tool; its own verdict, not just that it ran.
    fn finish(self) -> Result<(), RuntimeError> {
        let out = self
            .child
            .wait_with_output()
            .map_err(|source| RuntimeError::Spawn {
                program: self.tool.to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::MapRefused {
                tool: self.tool,
                pid: self.pid,
                mapping: self.mapping,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The first range `/etc/subuid`-style `text` grants to the user `name` or `uid`.
fn subordinate_range(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut parts = line.trim().split(':');
        let (who, start, count) = (parts.next()?, parts.next()?, parts.next()?);
        if Some(who) != name && who != uid.to_string() {
            return None;
        }
        let (start, count) = (start.parse().ok()?, count.parse().ok()?);
        (count > 0).then_some((start, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subordinate_ranges_by_name_or_uid() {
        let text = "alice:100000:65536\n# comment\n1001:200000:1000\nbob:0:0\n";
        assert_eq!(
            subordinate_range(text, Some("alice"), 1000),
            Some((100000, 65536))
        );
        assert_eq!(
            subordinate_range(text, Some("carol"), 1001),
            Some((200000, 1000))
        );
        assert_eq!(subordinate_range(text, Some("bob"), 1002), None);
        assert_eq!(subordinate_range(text, None, 4), None);
    }

    #[test]
    fn displays_mappings() {
        let m = IdMapping::Full {
            uids: vec![IdRange {
                inside: 0,
                host: 1000,
                count: 1,
            }],
            gids: vec![IdRange {
                inside: 0,
                host: 1000,
                count: 1,
            }],
        };
        assert_eq!(m.to_string(), "uids 0->1000+1, gids 0->1000+1");
    }
}
