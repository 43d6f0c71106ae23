//! Nothing here: the benchmarks are `benches/unpack.rs` (criterion) and the scripts beside it.
