//! Function-level benchmarks of the pull path: verified blob ingest and layer unpacking.
//!
//! `cargo bench -p cairn-benches` — runs on a synthetic layer shaped like a distribution base
//! image (many small files, a few large ones), unpacked onto the filesystem of the temp dir.

use std::io::Write;
use std::path::PathBuf;

use cairn_oci::{Digest, LayerCompression};
use cairn_snapshot::apply::{apply_layer, ApplyOptions, OverlayXattrs};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// A layer of `files` small files in 50 directories plus four 2 MiB files.
fn layer(files: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut bytes = |n: usize| {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Text-like: compressible, as real files are.
                b"abcdefghij \n"[(seed % 12) as usize]
            })
            .collect::<Vec<u8>>()
    };
    for d in 0..50 {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, format!("usr/share/d{d}/"), &[][..])
            .unwrap();
    }
    for i in 0..files {
        let data = bytes(200 + (i * 37) % 8000);
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("usr/share/d{}/f{i}", i % 50), &data[..])
            .unwrap();
    }
    for i in 0..4 {
        let data = bytes(2 << 20);
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, format!("usr/lib/big{i}.so"), &data[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

fn compress(tar: &[u8], c: LayerCompression) -> Vec<u8> {
    match c {
        LayerCompression::None => tar.to_vec(),
        LayerCompression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        LayerCompression::Zstd => zstd::encode_all(tar, 3).unwrap(),
    }
}

fn unpack(c: &mut Criterion) {
    let tar = layer(3000);
    let mut group = c.benchmark_group("apply_layer");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(tar.len() as u64));
    for compression in [
        LayerCompression::None,
        LayerCompression::Gzip,
        LayerCompression::Zstd,
    ] {
        let blob = compress(&tar, compression);
        group.bench_function(format!("{compression:?}"), |b| {
            b.iter_batched(
                || tempfile::tempdir().unwrap(),
                |dir| {
                    let lowers: [PathBuf; 0] = [];
                    let opts = ApplyOptions {
                        xattrs: OverlayXattrs::Trusted,
                        lowers: &lowers,
                    };
                    apply_layer(&blob[..], compression, dir.path(), &opts).unwrap();
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn ingest(c: &mut Criterion) {
    let data = vec![7u8; 32 << 20];
    let digest = Digest::sha256_of(&data);
    let mut group = c.benchmark_group("content_ingest");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("32MiB_in_1MiB_chunks", |b| {
        b.iter_batched(
            || tempfile::tempdir().unwrap(),
            |dir| {
                let store = cairn_content::ContentStore::open(dir.path()).unwrap();
                let mut w = store.writer(&digest, data.len() as u64).unwrap();
                for chunk in data.chunks(1 << 20) {
                    w.write_chunk(chunk).unwrap();
                }
                w.commit().unwrap();
                dir
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, unpack, ingest);
criterion_main!(benches);
