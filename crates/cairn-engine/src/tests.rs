//! What cache keys are made of: secret values and cache volume contents stay out, everything
//! that changes a command's result goes in.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_oci::Digest;
use cairn_solver::{CacheDescription, CacheKey, KeyRecipe};

use crate::ops::{ExecSpec, SecretValue};

fn secret(v: &str) -> SecretValue {
    SecretValue(Arc::new(v.as_bytes().to_vec()))
}

fn spec() -> ExecSpec {
    ExecSpec {
        label: "build".into(),
        args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
        env: BTreeMap::from([("CC".into(), "gcc".into())]),
        workdir: Some("/src".into()),
        caches: vec![("/cache".into(), "cargo".into())],
        secret_env: vec![("TOKEN".into(), "token".into(), secret("hunter2-value"))],
        secret_files: vec![("/run/key".into(), "key".into(), secret("file-secret-value"))],
        ..ExecSpec::default()
    }
}

/// The key of an exec over a fixed parent, as the solver computes it.
fn key(spec: &ExecSpec) -> CacheKey {
    let parent = KeyRecipe::new(CacheDescription::new("from").field("ref", "busybox"))
        .content(Some(Digest::sha256_of(b"manifest")))
        .key();
    KeyRecipe::new(spec.describe()).input(parent, 0).key()
}

fn described_bytes(spec: &ExecSpec) -> Vec<u8> {
    let d = spec.describe();
    d.fields()
        .flat_map(|(n, v)| [n.as_bytes(), v].concat())
        .collect()
}

#[test]
fn secret_values_are_not_in_the_key() {
    let mut other = spec();
    other.secret_env[0].2 = secret("another-value");
    other.secret_files[0].2 = secret("another-file-value");
    assert_eq!(key(&spec()), key(&other));
    let bytes = String::from_utf8_lossy(&described_bytes(&spec())).into_owned();
    assert!(
        !bytes.contains("hunter2-value") && !bytes.contains("file-secret-value"),
        "{bytes}"
    );
    // The secret's name and where it goes are in the key.
    let mut renamed = spec();
    renamed.secret_env[0].1 = "other-token".into();
    assert_ne!(key(&spec()), key(&renamed));
    let mut moved = spec();
    moved.secret_files[0].0 = "/run/other".into();
    assert_ne!(key(&spec()), key(&moved));
}

#[test]
fn cache_volumes_are_keyed_by_name_not_content() {
    // The description holds the volume's name and mount point, nothing read from the volume:
    // the key is the same whatever the volume holds (the spec has no access to its content).
    let bytes = String::from_utf8_lossy(&described_bytes(&spec())).into_owned();
    assert!(
        bytes.contains("cargo") && bytes.contains("/cache"),
        "{bytes}"
    );
    assert_eq!(key(&spec()), key(&spec()));
    let mut renamed = spec();
    renamed.caches[0].1 = "npm".into();
    assert_ne!(key(&spec()), key(&renamed));
}

#[test]
fn env_workdir_user_network_and_args_change_the_key() {
    let base = key(&spec());
    let mut env = spec();
    env.env.insert("CC".into(), "clang".into());
    assert_ne!(base, key(&env));
    let mut added = spec();
    added.env.insert("V".into(), "1".into());
    assert_ne!(base, key(&added));
    let mut workdir = spec();
    workdir.workdir = Some("/".into());
    assert_ne!(base, key(&workdir));
    let mut user = spec();
    user.user = Some("1000".into());
    assert_ne!(base, key(&user));
    let mut network = spec();
    network.network = cairn_runtime::Network::None;
    assert_ne!(base, key(&network));
    let mut args = spec();
    args.args.push("x".into());
    assert_ne!(base, key(&args));
    // The step's label is a progress name, not part of the key.
    let mut label = spec();
    label.label = "renamed".into();
    assert_eq!(base, key(&label));
}

#[test]
fn output_masks_secret_values() {
    let r = spec().redactor();
    assert_eq!(r.mask("token is hunter2-value!\n"), "token is ***!\n");
}

#[test]
fn mounts_enter_the_key_and_their_absence_keeps_old_keys() {
    use crate::files::Mounted;
    // Without mounts the description has no mount field: keys of existing execs stay.
    assert!(spec().describe().fields().all(|(n, _)| n != "mounts"));
    let base = key(&spec());
    let mut temp = spec();
    temp.mounts.push(("/tmp".into(), Mounted::Temp));
    assert_ne!(base, key(&temp));
    let mut elsewhere = spec();
    elsewhere.mounts.push(("/scratch".into(), Mounted::Temp));
    assert_ne!(key(&temp), key(&elsewhere));
}
