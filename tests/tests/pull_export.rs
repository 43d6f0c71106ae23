//! Pull each fixture image, export it, and compare the tree with `umoci unpack` of the same
//! image: path, type, mode, size, content, link target, xattrs and ownership — as root, as a
//! user with subordinate ids and as a user without.

use cairn_e2e::{diff_trees, fixtures, umoci_unpack, Cairn, Who};

/// Pulls `name` as every identity, exports it and compares with umoci's unpack of the layout
/// `compare_with` (the same image; umoci cannot read indexes or zstd layers).
fn pull_export_matches_umoci(name: &str, compare_with: &str) {
    let fx = fixtures();
    let reference = fx.image(name);
    let layout = fx.fixture(&fx.image(compare_with)).clone();
    for who in Who::all() {
        let cairn = Cairn::new(who);
        let digest = cairn.pull(&reference);
        let dest = cairn.dir("export");
        cairn.ok(&["export", &reference, dest.to_str().unwrap()]);
        let expected = umoci_unpack(&layout, who, &cairn.scratch.path);
        let diffs = diff_trees(&expected, &dest);
        assert!(
            diffs.is_empty(),
            "{name} as {}: cairn export differs from umoci unpack in {} place(s):\n{}",
            who.label(),
            diffs.len(),
            diffs
                .iter()
                .take(40)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        // The listing knows the image, by digest, in both formats.
        let json = cairn.ok(&["images", "--format", "json"]);
        let line: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
        assert_eq!(line["reference"], reference.as_str());
        assert_eq!(line["digest"], digest.as_str());
        assert!(line["size"].as_u64().unwrap() > 0);
        assert!(cairn.ok(&["images"]).contains(&digest));
    }
}

#[test]
fn busybox_oci() {
    pull_export_matches_umoci("busybox:latest", "busybox:latest");
}

#[test]
fn busybox_docker_schema2() {
    pull_export_matches_umoci("busybox:docker", "busybox:latest");
}

#[test]
fn busybox_index_picks_host_platform() {
    pull_export_matches_umoci("busybox:multi", "busybox:latest");
}

#[test]
fn busybox_docker_manifest_list_picks_host_platform() {
    pull_export_matches_umoci("busybox:multi-docker", "busybox:latest");
}

#[test]
fn debian_minbase() {
    pull_export_matches_umoci("debian:bookworm", "debian:bookworm");
}

#[test]
fn many_layers_with_whiteouts() {
    pull_export_matches_umoci("layers:latest", "layers:latest");
}

#[test]
fn many_layers_zstd() {
    pull_export_matches_umoci("layers:zstd", "layers:latest");
}

#[test]
fn rmi_forgets_the_reference_and_a_second_pull_downloads_nothing() {
    let fx = fixtures();
    let reference = fx.image("busybox:latest");
    let cairn = Cairn::new(Who::Root);
    let digest = cairn.pull(&reference);
    let blobs = std::fs::read_dir(cairn.root.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(cairn.ok(&["rmi", &reference]).trim(), reference);
    assert!(!cairn.ok(&["images"]).contains(&digest));
    let err = cairn.fails(&["export", &reference, cairn.dir("x").to_str().unwrap()]);
    assert!(err.contains("not in the store"), "{err}");
    // Layers stay until garbage collection, so pulling again fetches no blob.
    assert_eq!(cairn.pull(&reference), digest);
    assert_eq!(
        std::fs::read_dir(cairn.root.join("blobs/sha256"))
            .unwrap()
            .count(),
        blobs
    );
}

#[test]
fn busybox_uncompressed_layer() {
    pull_export_matches_umoci("busybox:uncompressed", "busybox:uncompressed");
}
