//! Hashing host directory trees: a 100k-file, ~1 GiB tree (nested directories, sizes from
//! 100 bytes to 4 MiB), hashed with no records at all, with an empty record table (the first
//! run on a store: every file read, every digest recorded), and again unchanged (every file's
//! record holds: nothing read).
//!
//! `cargo bench -p cairn-benches --bench hashtree` — the tree is built once in `$TMPDIR` (it
//! needs 1.1 GB there); the page cache is warm, as it is for a checkout that was just built.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use cairn_engine::TreeHasher;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const FILES: usize = 100_000;

/// Builds the tree: `d{0..40}/e{0..25}/f{i}`, 100 files a leaf directory; every thousandth
/// file is 4 MiB, the others 100 B – 12 KB. Returns its size in bytes.
fn build_tree(root: &Path) -> u64 {
    let mut seed = 0x2545F4914F6CDD1Du64;
    let noise: Vec<u8> = (0..(8 << 20))
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    let mut total = 0;
    for i in 0..FILES {
        let dir = root.join(format!("d{}/e{}", i % 40, (i / 40) % 25));
        if i < 1000 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        let size = if i % 1000 == 0 {
            4 << 20
        } else {
            100 + (i * 7919) % 12_000
        };
        let start = (i * 4099) % (noise.len() - size);
        let mut f = std::fs::File::create(dir.join(format!("f{i}"))).unwrap();
        f.write_all(&noise[start..start + size]).unwrap();
        total += size as u64;
    }
    total
}

fn hash_tree(c: &mut Criterion) {
    let tree = tempfile::tempdir().unwrap();
    let bytes = build_tree(tree.path());
    eprintln!(
        "tree: {FILES} files, {:.2} GiB, in {}",
        bytes as f64 / (1u64 << 30) as f64,
        tree.path().display()
    );
    // Let the newest files age past the racy margin, so their records are trusted.
    std::thread::sleep(Duration::from_secs(1));

    let mut group = c.benchmark_group("hash_tree_100k_files_1GiB");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(20));

    group.bench_function("no_records", |b| {
        let hasher = TreeHasher::uncached();
        b.iter(|| hasher.digest(tree.path(), &[], &[]).unwrap())
    });
    group.bench_function("cold_records", |b| {
        b.iter_batched(
            || {
                let db = tempfile::tempdir().unwrap();
                let hasher = TreeHasher::open(db.path().join("metadata.db")).unwrap();
                (db, hasher)
            },
            |(db, hasher)| {
                let t = hasher.digest(tree.path(), &[], &[]).unwrap();
                assert_eq!(t.stats.files_read, FILES as u64);
                (db, hasher)
            },
            BatchSize::PerIteration,
        )
    });
    let db = tempfile::tempdir().unwrap();
    let hasher = TreeHasher::open(db.path().join("metadata.db")).unwrap();
    hasher.digest(tree.path(), &[], &[]).unwrap();
    group.bench_function("warm_unchanged", |b| {
        b.iter(|| {
            let t = hasher.digest(tree.path(), &[], &[]).unwrap();
            assert_eq!(t.stats.cache_hits, FILES as u64);
            t
        })
    });
    // A fresh hasher (a new process) on the recorded store: opening the database included.
    group.bench_function("warm_unchanged_new_process", |b| {
        b.iter(|| {
            let hasher = TreeHasher::open(db.path().join("metadata.db")).unwrap();
            let t = hasher.digest(tree.path(), &[], &[]).unwrap();
            assert_eq!(t.stats.cache_hits, FILES as u64);
            t
        })
    });
    group.finish();
}

criterion_group!(benches, hash_tree);
criterion_main!(benches);
