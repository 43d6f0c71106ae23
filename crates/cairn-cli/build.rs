//! Links `cairn` as a position-dependent executable.
//!
//! A position-independent one is relocated by the dynamic loader at every start: about 38,000
//! pointers written into its data, each first write to a page a copy-on-write page fault.
//! Measured on this project's virtual machines a fault costs several microseconds, and those
//! relocations were two thirds of the faults of starting `cairn` — a millisecond or more on
//! every `cairn exec`. Rust compiles position-independent code either way; linked with
//! `-no-pie` the linker resolves those pointers once, at build time.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
