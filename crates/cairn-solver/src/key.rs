//! Vertex digests and cache keys: a versioned, canonical, length-prefixed encoding under sha256.
//!
//! Every string or byte string enters the hash as its length (a big-endian `u64`) followed by its
//! bytes, every list as its count followed by its items, so two different inputs never encode
//! alike: `("ab", "c")` and `("a", "bc")` differ. The encoding opens with a version tag. Change the
//! encoding only together with its tag ([`CACHE_KEY_VERSION`]): keys written by an older cairn then
//! miss instead of meaning something else, and no "old buggy encoding" special cases pile up.

use std::collections::BTreeMap;
use std::fmt;

use cairn_oci::Digest;
use sha2::{Digest as _, Sha256};

/// The tag that opens every cache-key encoding.
pub const CACHE_KEY_VERSION: &str = "cairn-cache-v1";

/// The tag that opens every vertex-digest encoding.
pub const VERTEX_DIGEST_VERSION: &str = "cairn-vertex-v1";

/// The stable part of an op: its kind and named fields, hashed into both the vertex digest and
/// the cache key.
///
/// Fields are kept sorted by name, so the order an op inserts them in does not matter. Put in
/// everything that changes the result (command, image reference, environment, working directory,
/// user, mount layout) and leave out what must not be recorded or must not miss the cache: a
/// secret's value, an environment variable the pipeline marked volatile, a progress label. What is
/// left out can never cause a miss, and two vertices that differ only in it are the same vertex.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheDescription {
    op: String,
    fields: BTreeMap<String, Vec<u8>>,
}

impl CacheDescription {
    /// An empty description for an op of kind `op` (`"exec"`, `"pull"` …).
    pub fn new(op: impl Into<String>) -> Self {
        CacheDescription {
            op: op.into(),
            fields: BTreeMap::new(),
        }
    }

    /// This description with the field `name` set to `value` (replacing an earlier value).
    pub fn field(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Self {
        self.set(name, value);
        self
    }

    /// Sets the field `name` to `value`, replacing an earlier value.
    pub fn set(&mut self, name: impl Into<String>, value: impl AsRef<[u8]>) {
        self.fields.insert(name.into(), value.as_ref().to_vec());
    }

    /// The op kind.
    pub fn op(&self) -> &str {
        &self.op
    }

    /// The fields, sorted by name.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

/// The identity of a vertex's result: the hash of its [`KeyRecipe`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Digest);

impl CacheKey {
    /// A key read back from storage.
    pub fn from_digest(digest: Digest) -> Self {
        CacheKey(digest)
    }

    /// The key as a digest (`sha256:…`).
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", self.0)
    }
}

/// Everything a cache key is computed from, kept so the key can be explained.
///
/// The solver builds one per vertex once its inputs are solved: the op's description, the cache
/// keys (not digests) of its inputs with the output each one names, and the content digest the
/// op reported at solve time, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecipe {
    description: CacheDescription,
    inputs: Vec<(CacheKey, usize)>,
    content: Option<Digest>,
}

/// One named part of a cache key and the digest of its value, as [`KeyRecipe::explain`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyComponent {
    /// `version`, `op`, `field:NAME`, `input:N` or `content`.
    pub name: String,
    /// The digest of the component's value.
    pub value: Digest,
}

/// The components of a cache key, in encoding order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation(pub Vec<KeyComponent>);

impl KeyRecipe {
    /// A recipe with no inputs and no content digest.
    pub fn new(description: CacheDescription) -> Self {
        KeyRecipe {
            description,
            inputs: Vec::new(),
            content: None,
        }
    }

    /// This recipe with one more input: the cache key of the input vertex and the output used.
    pub fn input(mut self, key: CacheKey, output: usize) -> Self {
        self.inputs.push((key, output));
        self
    }

    /// This recipe with a solve-time content digest.
    pub fn content(mut self, digest: Option<Digest>) -> Self {
        self.content = digest;
        self
    }

    /// The op's description.
    pub fn description(&self) -> &CacheDescription {
        &self.description
    }

    /// The inputs: each input vertex's cache key and the output used.
    pub fn inputs(&self) -> &[(CacheKey, usize)] {
        &self.inputs
    }

    /// The solve-time content digest, if the op reported one.
    pub fn content_digest(&self) -> Option<&Digest> {
        self.content.as_ref()
    }

    /// The cache key.
    pub fn key(&self) -> CacheKey {
        let mut e = Encoder::new(CACHE_KEY_VERSION);
        e.description(&self.description);
        e.u64(self.inputs.len() as u64);
        for (key, output) in &self.inputs {
            e.bytes(key.0.as_str().as_bytes());
            e.u64(*output as u64);
        }
        match &self.content {
            None => e.u64(0),
            Some(d) => {
                e.u64(1);
                e.bytes(d.as_str().as_bytes());
            }
        }
        CacheKey(e.finish())
    }

    /// The key's components, each with a digest of its value: store it next to a cache record,
    /// and [`Explanation::changed`] says which component made a later key differ.
    pub fn explain(&self) -> Explanation {
        let sha = |b: &[u8]| Digest::sha256_of(b);
        let mut out = vec![
            KeyComponent {
                name: "version".into(),
                value: sha(CACHE_KEY_VERSION.as_bytes()),
            },
            KeyComponent {
                name: "op".into(),
                value: sha(self.description.op.as_bytes()),
            },
        ];
        out.extend(self.description.fields().map(|(name, value)| KeyComponent {
            name: format!("field:{name}"),
            value: sha(value),
        }));
        out.extend(
            self.inputs
                .iter()
                .enumerate()
                .map(|(i, (key, output))| KeyComponent {
                    name: format!("input:{i}"),
                    value: sha(format!("{key}#{output}").as_bytes()),
                }),
        );
        out.extend(self.content.iter().map(|d| KeyComponent {
            name: "content".into(),
            value: d.clone(),
        }));
        Explanation(out)
    }
}

impl Explanation {
    /// The names of the components whose value differs from `earlier`'s, or that only one of the
    /// two has.
    pub fn changed<'a>(&'a self, earlier: &'a Explanation) -> Vec<&'a str> {
        let find = |list: &'a [KeyComponent], name: &str| {
            list.iter().find(|c| c.name == name).map(|c| &c.value)
        };
        let mut names: Vec<&str> = self
            .0
            .iter()
            .filter(|c| find(&earlier.0, &c.name) != Some(&c.value))
            .map(|c| c.name.as_str())
            .collect();
        names.extend(
            earlier
                .0
                .iter()
                .filter(|c| find(&self.0, &c.name).is_none())
                .map(|c| c.name.as_str()),
        );
        names
    }
}

/// The digest of a vertex: its op's description and, per input, the input vertex's digest and the
/// output used. A vertex's digest covers all its ancestors, so equal digests mean equal subgraphs.
pub(crate) fn vertex_digest<'a>(
    description: &CacheDescription,
    inputs: impl ExactSizeIterator<Item = (&'a Digest, usize)>,
) -> Digest {
    let mut e = Encoder::new(VERTEX_DIGEST_VERSION);
    e.description(description);
    e.u64(inputs.len() as u64);
    for (digest, output) in inputs {
        e.bytes(digest.as_str().as_bytes());
        e.u64(output as u64);
    }
    e.finish()
}

struct Encoder(Sha256);

impl Encoder {
    fn new(version: &str) -> Self {
        let mut e = Encoder(Sha256::new());
        e.bytes(version.as_bytes());
        e
    }

    fn u64(&mut self, n: u64) {
        self.0.update(n.to_be_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }

    fn description(&mut self, d: &CacheDescription) {
        self.bytes(d.op.as_bytes());
        self.u64(d.fields.len() as u64);
        for (name, value) in &d.fields {
            self.bytes(name.as_bytes());
            self.bytes(value);
        }
    }

    fn finish(self) -> Digest {
        Digest::from_sha256_bytes(&self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> CacheDescription {
        CacheDescription::new("exec")
            .field("args", "make\0test")
            .field("cwd", "/src")
    }

    #[test]
    fn key_is_stable() {
        // An accidental change to the encoding must fail here; a deliberate one bumps the version.
        let recipe = KeyRecipe::new(exec())
            .input(KeyRecipe::new(CacheDescription::new("pull")).key(), 0)
            .content(Some(Digest::sha256_of(b"tree")));
        // Checked against an independent encoder (a few lines of Python's hashlib and struct).
        let golden = "sha256:831de3875d361ebb4cce7cd6d84225ae48676db6630a74931c75cb2b2bd36088";
        assert_eq!(recipe.key().digest().as_str(), golden);
    }

    #[test]
    fn key_ignores_field_insertion_order() {
        let mut other = CacheDescription::new("exec");
        other.set("cwd", "/src");
        other.set("args", "make\0test");
        assert_eq!(KeyRecipe::new(other).key(), KeyRecipe::new(exec()).key());
        assert_ne!(
            KeyRecipe::new(exec().field("cwd", "/")).key(),
            KeyRecipe::new(exec()).key()
        );
    }

    #[test]
    fn encoding_is_unambiguous() {
        let a = CacheDescription::new("x").field("ab", "c");
        let b = CacheDescription::new("x").field("a", "bc");
        assert_ne!(KeyRecipe::new(a).key(), KeyRecipe::new(b).key());
    }

    #[test]
    fn explain_names_the_changed_component() {
        let base = KeyRecipe::new(exec());
        let leaf = KeyRecipe::new(CacheDescription::new("local"));
        let before = base.clone().input(leaf.clone().key(), 0);
        let after = base
            .clone()
            .input(leaf.content(Some(Digest::sha256_of(b"edited"))).key(), 0);
        assert_eq!(after.explain().changed(&before.explain()), ["input:0"]);
        let cwd = KeyRecipe::new(exec().field("cwd", "/"));
        assert_eq!(cwd.explain().changed(&base.explain()), ["field:cwd"]);
        let env = KeyRecipe::new(exec().field("env", "A=1"));
        assert_eq!(base.explain().changed(&env.explain()), ["field:env"]);
        assert!(base.explain().changed(&base.explain()).is_empty());
    }
}
