//! Why a step ran: fingerprints of what a step's result was made of, kept per step from one run
//! to the next, and compared in words.
//!
//! The solver sends every vertex's [`KeyRecipe`] as an [`EventKind::Keyed`] event. A
//! [`KeyLog`] collects them; [`KeyLog::fingerprint`] walks from a container's last vertex back
//! through the vertices that carry the same step name and turns the recipes into named parts:
//! `command`, `env:NAME` (one per variable, so the variable that changed can be named),
//! `workdir`, `user`, `network`, `caches`, `secrets`, `image`, one `input:PATH` per directory
//! copied in (a host directory — with a stat list of its files when [`KeyLog::list_files`]
//! asks and the tree is small — or a directory of another step), `from:STEP` for the step it
//! starts from. Each part holds a digest, never a value: a fingerprint says *that* an
//! environment variable changed, not what it was.
//!
//! [`StepHistory`] keeps the last successful run's fingerprint of each step in the store's
//! `metadata.db` (table `step_history`), per *scope* — the pipeline file — so two pipelines
//! with steps of the same name do not mix. [`StepFingerprint::changes`] compares two.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_oci::Digest;
use cairn_solver::{CacheKey, Event, EventKind, KeyRecipe, VertexId};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::fs::{walk, Filter, Kind};
use crate::{Container, Engine};

/// A host directory with more entries than this gets no per-file list: naming the changed files
/// must stay cheap next to hashing them.
const MAX_LISTED_FILES: usize = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS step_history (
    scope TEXT NOT NULL,
    step TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated INTEGER NOT NULL,
    PRIMARY KEY (scope, step)
);
";

/// What a step's result was made of: named parts, each a digest of its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFingerprint {
    parts: BTreeMap<String, Part>,
}

/// One part of a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Part {
    /// A digest of the part's value.
    value: String,
    /// What the part is, in words (`host directory src`, `step deps's /out`, the image
    /// reference); empty when the part's name says it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    what: String,
    /// For a host directory: a digest of each file's type, mode, size and modification time,
    /// by relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<BTreeMap<String, String>>,
}

impl Part {
    fn new(value: impl Into<String>) -> Self {
        Part {
            value: value.into(),
            what: String::new(),
            files: None,
        }
    }

    fn what(mut self, what: impl Into<String>) -> Self {
        self.what = what.into();
        self
    }
}

impl StepFingerprint {
    /// What differs from `earlier` (the step's last successful run), in words, one entry per
    /// kind of change: `command changed`, `env changed (CC, CFLAGS)`, `host directory src
    /// changed (a.txt)`, `input from step deps changed`, `image changed (REF)` …; `never ran
    /// before` without an earlier fingerprint. Empty when nothing differs.
    pub fn changes(&self, earlier: Option<&StepFingerprint>) -> Vec<String> {
        let Some(earlier) = earlier else {
            return vec!["never ran before".into()];
        };
        let names: BTreeSet<&String> = self.parts.keys().chain(earlier.parts.keys()).collect();
        let mut env = Vec::new();
        let mut out = Vec::new();
        for name in names {
            let (now, then) = (self.parts.get(name), earlier.parts.get(name));
            // The value decides; a file list is only there when the run asked for one.
            if now.map(|p| &p.value) == then.map(|p| &p.value) {
                continue;
            }
            if let Some(var) = name.strip_prefix("env:") {
                env.push(var.to_owned());
                continue;
            }
            out.push(match (now, then) {
                (Some(now), Some(then)) => changed(name, now, then),
                (Some(now), None) => format!("{} added", describe(name, now)),
                (None, Some(then)) => format!("{} removed", describe(name, then)),
                (None, None) => continue,
            });
        }
        if !env.is_empty() {
            out.insert(0, format!("env changed ({})", env.join(", ")));
        }
        out
    }
}

/// A part in words.
fn describe(name: &str, part: &Part) -> String {
    if let Some(step) = name.strip_prefix("from:") {
        return format!("base step {step}");
    }
    if let Some(path) = name.strip_prefix("input:") {
        return match part.what.is_empty() {
            true => format!("input {path}"),
            false => format!("input {path} ({})", part.what),
        };
    }
    match part.what.is_empty() {
        true => name.to_owned(),
        false => format!("{name} {}", part.what),
    }
}

/// A changed part in words.
fn changed(name: &str, now: &Part, then: &Part) -> String {
    if let Some(step) = name.strip_prefix("from:") {
        return format!("base step {step} changed");
    }
    if name.starts_with("input:") {
        if let Some(step) = now.what.strip_prefix("step ") {
            let step = step.split("'s ").next().unwrap_or(step);
            return format!("input from step {step} changed");
        }
        if now.what.starts_with("host directory") {
            let files = changed_files(now.files.as_ref(), then.files.as_ref());
            return match files.is_empty() {
                true => format!("{} changed", now.what),
                false => format!("{} changed ({})", now.what, files),
            };
        }
        return format!("{} changed", describe(name, now));
    }
    if name == "image" {
        return match now.what == then.what {
            true => format!("image {} changed (the tag moved)", now.what),
            false => format!("image changed ({} -> {})", then.what, now.what),
        };
    }
    format!("{name} changed")
}

/// Up to five changed, added or removed files, and how many more.
fn changed_files(
    now: Option<&BTreeMap<String, String>>,
    then: Option<&BTreeMap<String, String>>,
) -> String {
    let (Some(now), Some(then)) = (now, then) else {
        return String::new();
    };
    let mut names: Vec<String> = Vec::new();
    for (path, digest) in now {
        match then.get(path) {
            Some(d) if d == digest => {}
            Some(_) => names.push(path.clone()),
            None => names.push(format!("{path} added")),
        }
    }
    names.extend(
        then.keys()
            .filter(|p| !now.contains_key(*p))
            .map(|p| format!("{p} removed")),
    );
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        let _ = write!(text, " and {} more", names.len() - 5);
    }
    text
}

/// The key recipes of one solve's vertices, gathered from its [`EventKind::Keyed`] events.
#[derive(Default)]
pub struct KeyLog {
    by_digest: HashMap<Digest, (VertexId, KeyRecipe)>,
    by_key: HashMap<CacheKey, Digest>,
    list_files: bool,
}

impl KeyLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether fingerprints list the files of host directories (a walk of each tree, up to
    /// 10 000 entries), so that a later comparison can name the changed files. Off by default:
    /// the walk costs time on every run, not only on those that explain.
    pub fn list_files(mut self, yes: bool) -> Self {
        self.list_files = yes;
        self
    }

    /// Records the recipe if `event` carries one; returns whether it did.
    pub fn observe(&mut self, event: &Event) -> bool {
        let EventKind::Keyed { recipe } = &event.kind else {
            return false;
        };
        let digest = event.vertex.digest().clone();
        self.by_key.insert(recipe.key(), digest.clone());
        self.by_digest
            .insert(digest, (event.vertex.clone(), recipe.clone()));
        true
    }

    fn by_key(&self, key: &CacheKey) -> Option<&(VertexId, KeyRecipe)> {
        self.by_digest.get(self.by_key.get(key)?)
    }

    /// The fingerprint of the step whose result is `container` (built with
    /// [`Container::with_name`]`(step)`), once its vertices are keyed; host directory paths are
    /// named relative to `base` when inside it. `None` while its last vertex has no key yet.
    pub fn fingerprint(
        &self,
        step: &str,
        container: &Container,
        base: &Path,
    ) -> Option<StepFingerprint> {
        let top = container.vertex.as_ref()?;
        let (_, recipe) = self.by_digest.get(top.digest())?;
        let mut parts = BTreeMap::new();
        let mut next = Some(recipe);
        let mut execs = 0;
        let mut others = 0;
        while let Some(recipe) = next.take() {
            let description = recipe.description();
            let fields: HashMap<&str, &[u8]> = description.fields().collect();
            let text =
                |name: &str| String::from_utf8_lossy(fields.get(name).copied().unwrap_or(b""));
            let inputs = recipe.inputs();
            match description.op() {
                "exec" if execs == 0 => {
                    execs += 1;
                    for name in ["workdir", "user", "network", "caches", "secrets"] {
                        let value = Digest::sha256_of(text(name).as_bytes());
                        parts.insert(name.into(), Part::new(value.as_str()));
                    }
                    let args = Digest::sha256_of(text("args").as_bytes());
                    parts.insert("command".into(), Part::new(args.as_str()));
                    let env: BTreeMap<String, String> =
                        serde_json::from_str(&text("env")).unwrap_or_default();
                    for (var, value) in env {
                        let digest = Digest::sha256_of(value.as_bytes());
                        parts.insert(format!("env:{var}"), Part::new(digest.as_str()));
                    }
                    next = self.parent(step, inputs.first(), &mut parts);
                }
                "copy" => {
                    let path = text("path").into_owned();
                    let part = match inputs.last() {
                        Some(input) => self.directory_part(input, base),
                        None => Part::new(""),
                    };
                    parts.insert(format!("input:{path}"), part);
                    if text("base") == "1" {
                        next = self.parent(step, inputs.first(), &mut parts);
                    }
                }
                "from" => {
                    let key = recipe.key();
                    let part = Part::new(key.digest().as_str()).what(text("ref"));
                    parts.insert("image".into(), part);
                }
                op => {
                    // An op this walk does not know in detail: named by its kind and place.
                    others += 1;
                    let key = recipe.key();
                    let part = Part::new(key.digest().as_str());
                    parts.insert(format!("{op} #{others}"), part);
                    next = self.parent(step, inputs.first(), &mut parts);
                }
            }
        }
        Some(StepFingerprint { parts })
    }

    /// The vertex a step's vertex builds on, unless it belongs to another step: that one goes
    /// into `parts` as `from:STEP`.
    fn parent(
        &self,
        step: &str,
        input: Option<&(CacheKey, usize)>,
        parts: &mut BTreeMap<String, Part>,
    ) -> Option<&KeyRecipe> {
        let (key, _) = input?;
        match self.by_key(key) {
            Some((id, r)) if id.name() == step => Some(r),
            Some((id, _)) => {
                let part = Part::new(key.digest().as_str());
                parts.insert(format!("from:{}", id.name()), part);
                None
            }
            None => {
                parts.insert("base".into(), Part::new(key.digest().as_str()));
                None
            }
        }
    }

    /// The part for a directory copied in: a host directory (named relative to `base`, with its
    /// file list) or a directory of another step.
    fn directory_part(&self, input: &(CacheKey, usize), base: &Path) -> Part {
        let (key, _) = input;
        let value = key.digest().as_str();
        let Some((id, recipe)) = self.by_key(key) else {
            return Part::new(value);
        };
        let description = recipe.description();
        let fields: HashMap<&str, &[u8]> = description.fields().collect();
        let field = |name: &str| fields.get(name).copied().unwrap_or(b"");
        match description.op() {
            "host-directory" => {
                let path = PathBuf::from(String::from_utf8_lossy(field("path")).into_owned());
                let shown = path.strip_prefix(base).unwrap_or(&path);
                let shown = match shown.as_os_str().is_empty() {
                    true => ".".into(),
                    false => shown.display().to_string(),
                };
                let globs = |name| {
                    let text = String::from_utf8_lossy(field(name)).into_owned();
                    text.split('\0')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                };
                let mut part = Part::new(value).what(format!("host directory {shown}"));
                if self.list_files {
                    part.files = list_files(&path, &globs("include"), &globs("exclude"));
                }
                part
            }
            "container-directory" => {
                let path = String::from_utf8_lossy(field("path"));
                Part::new(value).what(format!("step {}'s {path}", id.name()))
            }
            op => Part::new(value).what(op.to_owned()),
        }
    }
}

/// A digest of each entry's type, mode, size and modification time, by relative path; `None`
/// for a tree too large to list cheaply or one that cannot be read.
fn list_files(
    root: &Path,
    include: &[String],
    exclude: &[String],
) -> Option<BTreeMap<String, String>> {
    let filter = Filter::new(root, include, exclude).ok()?;
    let entries = walk(root, &filter).ok()?;
    if entries.len() > MAX_LISTED_FILES {
        return None;
    }
    let mut files = BTreeMap::new();
    for entry in entries {
        if entry.kind == Kind::Dir {
            continue;
        }
        let meta = std::fs::symlink_metadata(root.join(&entry.rel)).ok()?;
        let stamp = format!(
            "{}:{:o}:{}:{}.{}",
            meta.file_type().is_symlink(),
            meta.mode() & 0o7777,
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        let digest = Digest::sha256_of(stamp.as_bytes());
        files.insert(entry.rel.display().to_string(), digest.hex().to_owned());
    }
    Some(files)
}

/// The last successful run's fingerprint of each step of one scope (a pipeline file), in the
/// store's `metadata.db`.
pub struct StepHistory {
    path: PathBuf,
    scope: String,
    db: Mutex<Connection>,
}

impl Engine {
    /// The step history of `scope` (the pipeline file's absolute path, say): steps of
    /// different scopes never compare with each other.
    pub fn step_history(&self, scope: impl Into<String>) -> Result<StepHistory, EngineError> {
        let path = self.store().root().join("metadata.db");
        let err = |source| EngineError::Database {
            path: path.clone(),
            source,
        };
        let db = cairn_snapshot::open_database(&path).map_err(err)?;
        cairn_snapshot::apply_schema(&db, "step_history", SCHEMA).map_err(err)?;
        Ok(StepHistory {
            path,
            scope: scope.into(),
            db: Mutex::new(db),
        })
    }
}

impl Container {
    /// The vertex that stands for this container's result (`None` for an empty container):
    /// progress events about it tell when the container is cached, running or done.
    pub fn vertex_id(&self) -> Option<&VertexId> {
        self.vertex.as_ref().map(|v| v.id())
    }
}

impl StepHistory {
    fn db_err(&self, source: rusqlite::Error) -> EngineError {
        EngineError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// The fingerprint recorded for `step` by its last successful run, if any. A record this
    /// cairn cannot read counts as none.
    pub fn last(&self, step: &str) -> Result<Option<StepFingerprint>, EngineError> {
        let db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let text: Option<String> = db
            .query_row(
                "SELECT fingerprint FROM step_history WHERE scope = ?1 AND step = ?2",
                params![self.scope, step],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.db_err(e))?;
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    /// Records these steps' fingerprints (replacing earlier ones) in one transaction.
    pub fn record<'a>(
        &self,
        steps: impl IntoIterator<Item = (&'a str, &'a StepFingerprint)>,
    ) -> Result<(), EngineError> {
        let mut db = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| self.db_err(e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for (step, fingerprint) in steps {
            let text = serde_json::to_string(fingerprint).map_err(|e| EngineError::Invalid {
                what: format!("fingerprint of step {step:?}"),
                reason: e.to_string(),
            })?;
            tx.execute(
                "INSERT OR REPLACE INTO step_history (scope, step, fingerprint, updated) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![self.scope, step, text, now],
            )
            .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(value: &str) -> Part {
        Part::new(value)
    }

    fn print(parts: &[(&str, Part)]) -> StepFingerprint {
        StepFingerprint {
            parts: parts
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn changes_name_env_vars_inputs_and_files() {
        let files = |d: &str| {
            let mut m = BTreeMap::new();
            m.insert("a.txt".to_owned(), d.to_owned());
            m.insert("b.txt".to_owned(), "same".to_owned());
            Some(m)
        };
        let src = |digest: &str, a: &str| {
            let mut p = part(digest).what("host directory src");
            p.files = files(a);
            p
        };
        let before = print(&[
            ("command", part("c1")),
            ("env:CC", part("gcc")),
            ("env:KEEP", part("k")),
            ("input:/src", src("s1", "a1")),
            ("input:/deps", part("d1").what("step deps's /out")),
        ]);
        assert_eq!(before.changes(Some(&before)), Vec::<String>::new());
        let mut unlisted = before.clone();
        unlisted.parts.get_mut("input:/src").unwrap().files = None;
        assert_eq!(unlisted.changes(Some(&before)), Vec::<String>::new());
        assert_eq!(before.changes(None), ["never ran before"]);
        let after = print(&[
            ("command", part("c1")),
            ("env:CC", part("clang")),
            ("env:KEEP", part("k")),
            ("input:/src", src("s2", "a2")),
            ("input:/deps", part("d2").what("step deps's /out")),
        ]);
        assert_eq!(
            after.changes(Some(&before)),
            [
                "env changed (CC)",
                "input from step deps changed",
                "host directory src changed (a.txt)"
            ]
        );
        let mut fewer = after.clone();
        fewer.parts.remove("env:KEEP");
        fewer.parts.insert("command".into(), part("c2"));
        assert_eq!(
            fewer.changes(Some(&after)),
            ["env changed (KEEP)", "command changed"]
        );
    }

    #[test]
    fn history_is_kept_per_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.db");
        let open = |scope: &str| {
            let db = cairn_snapshot::open_database(&path).unwrap();
            db.execute_batch(SCHEMA).unwrap();
            StepHistory {
                path: path.clone(),
                scope: scope.into(),
                db: Mutex::new(db),
            }
        };
        let (a, b) = (open("a.toml"), open("b.toml"));
        let one = print(&[("command", part("1"))]);
        let two = print(&[("command", part("2"))]);
        a.record([("build", &one)]).unwrap();
        assert_eq!(a.last("build").unwrap(), Some(one.clone()));
        assert_eq!(b.last("build").unwrap(), None);
        a.record([("build", &two)]).unwrap();
        assert_eq!(open("a.toml").last("build").unwrap(), Some(two));
    }
}
