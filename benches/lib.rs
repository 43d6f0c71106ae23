//! Nothing here: the benchmarks are `benches/unpack.rs` and `benches/hashtree.rs` (criterion) and the scripts beside it.
