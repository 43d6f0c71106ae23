//! Two `cairn pull` processes of overlapping images on one store at the same time.

use cairn_e2e::{diff_trees, fixtures, umoci_unpack, Cairn, Who};

fn pull_pairs_at_once(who: Who, pairs: &[(&str, &str, &str)]) {
    let fx = fixtures();
    let cairn = Cairn::new(who);
    let children: Vec<_> = pairs
        .iter()
        .map(|(name, _, _)| {
            let mut c = cairn.command(&["pull", &fx.image(name)]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (name, c.spawn().unwrap())
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for (name, compare, label) in pairs {
        let reference = fx.image(name);
        let dest = cairn.dir(&format!("export-{label}"));
        cairn.ok(&["export", &reference, dest.to_str().unwrap()]);
        let scratch = cairn.dir(&format!("umoci-{label}"));
        std::fs::create_dir_all(&scratch).unwrap();
        who.own(&scratch);
        let expected = umoci_unpack(fx.fixture(&fx.image(compare)), who, &scratch);
        let diffs = diff_trees(&expected, &dest);
        assert!(diffs.is_empty(), "{name}:\n{}", diffs.join("\n"));
    }
}

#[test]
fn overlapping_pulls_at_once_as_root() {
    // busybox:latest and busybox:docker share their layer blob; layers:latest and layers:zstd
    // share every chain id (the same tars, compressed differently).
    pull_pairs_at_once(
        Who::Root,
        &[
            ("busybox:latest", "busybox:latest", "a"),
            ("busybox:docker", "busybox:latest", "b"),
            ("layers:latest", "layers:latest", "c"),
            ("layers:zstd", "layers:latest", "d"),
        ],
    );
}

#[test]
fn overlapping_pulls_at_once_rootless() {
    pull_pairs_at_once(
        Who::User(cairn_e2e::user_with_subids()),
        &[
            ("layers:latest", "layers:latest", "a"),
            ("layers:zstd", "layers:latest", "b"),
        ],
    );
}
