//! Resolving `-u/--user` (and the image's `User`) to numeric ids, from the image's own
//! `/etc/passwd` and `/etc/group`, as Docker does.

use std::path::{Path, PathBuf};

use cairn_runtime::ProcessUser;

/// The entry at `rel` (relative to `/`) in the merged view of `layers` (bottom first),
/// without mounting: the topmost layer that has the path decides; an overlay whiteout (a 0/0
/// character device) there means it was deleted. Opaque directories above are not looked
/// for.
pub(crate) fn find_in_layers(
    layers: &[PathBuf],
    rel: &str,
) -> Option<(PathBuf, std::fs::Metadata)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in layers.iter().rev() {
        let path = layer.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            return None;
        }
        return Some((path, meta));
    }
    None
}

/// Reads the file at `rel` from the merged view of `layers` (see [`find_in_layers`]).
pub(crate) fn read_from_layers(layers: &[PathBuf], rel: &str) -> Option<String> {
    match find_in_layers(layers, rel)? {
        (path, meta) if meta.is_file() => std::fs::read_to_string(path).ok(),
        _ => None,
    }
}

/// Resolves a Docker-style user spec (`name`, `uid`, `name:group`, `uid:gid`, empty for root)
/// against the image's `passwd` and `group` files.
pub(crate) fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ProcessUser, String> {
    if spec.is_empty() {
        return Ok(ProcessUser::default());
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect();
    let (uid, default_gid, name) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let entry = passwd_entries
                .iter()
                .find(|f| f[2].parse::<u32>().ok() == Some(uid));
            (
                uid,
                entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
                entry.map(|f| f[0].to_owned()),
            )
        }
        Err(_) => {
            let entry = passwd_entries
                .iter()
                .find(|f| f[0] == user_part)
                .ok_or_else(|| {
                    format!("user {user_part:?} not found in the image's /etc/passwd")
                })?;
            let uid = entry[2].parse().map_err(|_| {
                format!("user {user_part:?}: bad uid {:?} in /etc/passwd", entry[2])
            })?;
            let gid = entry[3].parse().map_err(|_| {
                format!("user {user_part:?}: bad gid {:?} in /etc/passwd", entry[3])
            })?;
            (uid, gid, Some(user_part.to_owned()))
        }
    };
    let gid = match group_part {
        None => default_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("group {g:?} not found in the image's /etc/group"))?,
        },
    };
    let mut additional_gids: Vec<u32> = match &name {
        Some(name) if group_part.is_none() => group_entries
            .iter()
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ProcessUser {
        uid,
        gid,
        additional_gids,
    })
}

/// Whether `path` is absolute and free of `..`.
pub(crate) fn is_clean_absolute(path: &str) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && !p
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:100::/:/bin/false\n";
    const GROUP: &str = "root:x:0:\nusers:x:100:alice\nalice:x:1000:\nwheel:x:10:alice,bob\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let r = |s| resolve_user(s, Some(PASSWD), Some(GROUP));
        assert_eq!(r("").unwrap(), ProcessUser::default());
        let alice = r("alice").unwrap();
        assert_eq!((alice.uid, alice.gid), (1000, 1000));
        assert_eq!(alice.additional_gids, vec![10, 100]);
        let bob = r("1001").unwrap();
        assert_eq!(
            (bob.uid, bob.gid, bob.additional_gids),
            (1001, 100, vec![10])
        );
        let odd = r("4242").unwrap();
        assert_eq!((odd.uid, odd.gid), (4242, 0));
        let pair = r("alice:wheel").unwrap();
        assert_eq!((pair.uid, pair.gid), (1000, 10));
        assert!(pair.additional_gids.is_empty());
        assert_eq!(r("5:6").unwrap().gid, 6);
        assert!(r("carol").unwrap_err().contains("carol"));
        assert!(r("alice:nogroup").unwrap_err().contains("nogroup"));
    }

    #[test]
    fn reads_topmost_layer_and_honours_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let (low, high) = (dir.path().join("low"), dir.path().join("high"));
        std::fs::create_dir_all(low.join("etc")).unwrap();
        std::fs::create_dir_all(high.join("etc")).unwrap();
        std::fs::write(low.join("etc/passwd"), "low").unwrap();
        std::fs::write(low.join("etc/group"), "low").unwrap();
        std::fs::write(high.join("etc/passwd"), "high").unwrap();
        let layers = vec![low, high];
        assert_eq!(
            read_from_layers(&layers, "etc/passwd").as_deref(),
            Some("high")
        );
        assert_eq!(
            read_from_layers(&layers, "etc/group").as_deref(),
            Some("low")
        );
        assert_eq!(read_from_layers(&layers, "etc/shadow"), None);
    }

    #[test]
    fn clean_absolute_paths() {
        assert!(is_clean_absolute("/work"));
        assert!(!is_clean_absolute("work"));
        assert!(!is_clean_absolute("/a/../b"));
    }
}
