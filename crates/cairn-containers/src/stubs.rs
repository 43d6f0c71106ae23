//! Mount points the image lacks, made once per store rather than in every container.
//!
//! A bind mount needs a file to mount on. When the image has none at `/etc/hosts` or
//! `/etc/resolv.conf` (a host-network container gets the host's), libcontainer used to create
//! one in the container's writable layer: overlayfs copied `/etc` up, two empty files were
//! made, and all of it was deleted again after the run, on every `cairn exec`; and a pipeline
//! step's result kept the empty files (BuildKit removes such stubs after each step).
//!
//! Instead, the missing mount points come from a small directory that is never written,
//! placed as the topmost lower layer of the container's root: one per store for each set of
//! names (and owner and mode of the image's `/etc`, which the merged `/etc` takes from it).
//! Only files directly under an `/etc` that is a directory in the image are handled; any
//! other mount point is still made by libcontainer, in the writable layer.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::user::find_in_layers;
use crate::{changed_before, io_err, ContainersError, DEBRIS_GRACE};

/// The lower directory that supplies the files `names` (single components) under `/etc`
/// where the image, `layers` bottom first, has none; `None` when nothing is missing or the
/// image's `/etc` is not a plain directory. Made under `stubs_root` on first use.
pub(crate) fn lower_for<'a>(
    stubs_root: &Path,
    layers: &[PathBuf],
    names: impl IntoIterator<Item = &'a str>,
) -> Result<Option<PathBuf>, ContainersError> {
    let Some(etc) = image_etc(layers) else {
        return Ok(None);
    };
    let mut missing: Vec<&str> = names
        .into_iter()
        .filter(|name| is_plain_name(name) && !in_image(layers, name))
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(None);
    }
    let (mode, uid, gid) = etc.unwrap_or((
        0o755,
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    ));
    let key = format!("{mode:o} {uid} {gid} {}", missing.join("/"));
    let digest = Sha256::digest(key.as_bytes());
    let dir = stubs_root.join(hex::encode(&digest[..8]));
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    std::fs::create_dir_all(stubs_root).map_err(io_err("create", stubs_root))?;
    // Built under a temporary name and renamed: a directory under the final name is whole.
    let temp = stubs_root.join(format!(
        ".new-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let built = build(&temp, &missing, mode, uid, gid);
    let renamed = built.and_then(|()| match std::fs::rename(&temp, &dir) {
        Ok(()) => Ok(()),
        // Another process built the same one first.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&temp);
            Ok(())
        }
        Err(e) => Err(io_err("rename", &dir)(e)),
    });
    if let Err(e) = renamed {
        let _ = std::fs::remove_dir_all(&temp);
        return Err(e);
    }
    Ok(Some(dir))
}

fn build(
    temp: &Path,
    names: &[&str],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), ContainersError> {
    let etc = temp.join("etc");
    std::fs::create_dir_all(&etc).map_err(io_err("create", &etc))?;
    for name in names {
        let file = etc.join(name);
        std::fs::File::create(&file).map_err(io_err("create", &file))?;
    }
    if (uid, gid)
        != (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    {
        std::os::unix::fs::chown(&etc, Some(uid), Some(gid)).map_err(io_err("chown", &etc))?;
    }
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", &etc))?;
    // The files are only mounted on; the directory is never written again.
    std::fs::set_permissions(temp, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", temp))
}

/// Owner and mode of the image's `/etc`: `Some(None)` when the image has none (the stub makes
/// it, as libcontainer would), `None` when it is anything but a directory.
fn image_etc(layers: &[PathBuf]) -> Option<Option<(u32, u32, u32)>> {
    match find_in_layers(layers, "etc") {
        None => Some(None),
        Some((_, meta)) if meta.is_dir() => {
            Some(Some((meta.mode() & 0o7777, meta.uid(), meta.gid())))
        }
        // A file or a symlink: leave it to libcontainer.
        Some(_) => None,
    }
}

/// Whether the image has `/etc/NAME`. A name that an opaque `/etc` in a higher layer hides
/// is taken as present, and libcontainer makes the mount point.
fn in_image(layers: &[PathBuf], name: &str) -> bool {
    find_in_layers(layers, &format!("etc/{name}")).is_some()
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', ':', ','])
}

/// Deletes half-built stub directories of killed processes.
pub(crate) fn remove_stale(stubs_root: &Path) {
    let Ok(entries) = std::fs::read_dir(stubs_root) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".new-")
            && changed_before(&entry, DEBRIS_GRACE)
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(root: &Path, name: &str, files: &[&str]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        for f in files {
            std::fs::write(dir.join("etc").join(f), "x").unwrap();
        }
        dir
    }

    #[test]
    fn only_missing_names_get_a_stub_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(tmp.path(), "base", &["passwd", "hosts"]);
        let stubs = tmp.path().join("stubs");
        let layers = vec![base.clone()];
        let dir = lower_for(&stubs, &layers, ["hosts", "resolv.conf"])
            .unwrap()
            .expect("resolv.conf is missing");
        let mut made: Vec<_> = std::fs::read_dir(dir.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        made.sort();
        assert_eq!(made, ["resolv.conf"]);
        // The same set again is the same directory; nothing missing is no directory.
        let again = lower_for(&stubs, &layers, ["resolv.conf", "hosts"]).unwrap();
        assert_eq!(again.as_deref(), Some(dir.as_path()));
        assert_eq!(
            lower_for(&stubs, &layers, ["hosts", "passwd"]).unwrap(),
            None
        );
        assert_eq!(std::fs::read_dir(&stubs).unwrap().count(), 1);
    }

    #[test]
    fn the_stub_etc_takes_the_images_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let base = layer(tmp.path(), "base", &[]);
        std::fs::set_permissions(base.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
        let dir = lower_for(&tmp.path().join("stubs"), &[base], ["hosts"])
            .unwrap()
            .unwrap();
        let mode = std::fs::metadata(dir.join("etc")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o750);
    }

    #[test]
    fn deleted_files_are_missing_and_odd_etcs_are_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let stubs = tmp.path().join("stubs");
        let base = layer(tmp.path(), "base", &["hosts"]);
        // A later layer deletes /etc/hosts with a whiteout, where the test may make one.
        let upper = layer(tmp.path(), "upper", &[]);
        let whiteout = nix::sys::stat::mknod(
            &upper.join("etc/hosts"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        );
        if whiteout.is_ok() {
            let dir = lower_for(&stubs, &[base.clone(), upper], ["hosts"]).unwrap();
            assert!(dir.is_some(), "a deleted /etc/hosts is missing");
        }
        // /etc as a symlink, or no names worth a stub: no stub directory.
        let linked = tmp.path().join("linked");
        std::fs::create_dir_all(&linked).unwrap();
        std::os::unix::fs::symlink("usr/etc", linked.join("etc")).unwrap();
        assert_eq!(
            lower_for(&stubs, &[base.clone(), linked], ["hosts"]).unwrap(),
            None
        );
        assert_eq!(
            lower_for(&stubs, &[base], ["../x", "a/b", ""]).unwrap(),
            None
        );
    }
}
