//! cairn's pipeline file format: a TOML file of named steps, parsed and validated into a typed
//! model. Nothing here runs anything; the engine maps the model one-to-one onto its API.
//!
//! ```toml
//! [secrets]
//! token = { env = "API_TOKEN" }                 # or { file = "token.txt" }, relative to this file
//!
//! [steps.build]
//! image = "127.0.0.1:5117/fixtures/busybox:latest"   # exactly one of `image` / `from`
//! run = "make all"                              # /bin/sh -c "make all"; or an argv array
//! env = { CC = "gcc" }
//! workdir = "/src"
//! user = "1000:1000"
//! inputs = [
//!   { host = "src", to = "/src", exclude = ["target/**"] },    # host dir, relative to this file
//!   { step = "deps", path = "/out", to = "/deps" },            # a directory of another step
//! ]
//! caches = [ { name = "cargo", to = "/root/.cargo", sharing = "locked" } ]
//! secrets = [ { name = "token", env = "TOKEN" }, { name = "token", file = "/run/secrets/t" } ]
//! network = "none"                              # host (default) | none
//! publish = "127.0.0.1:5117/out/app:latest"       # pushed after the run, with:
//! entrypoint = ["/usr/local/bin/app"]
//! cmd = ["--help"]
//! labels = { "org.opencontainers.image.source" = "https://example.com/app" }
//!
//! [steps.test]
//! from = "build"                                # continue from the result of `build`
//! run = ["make", "test"]
//!
//! [[exports]]
//! step = "build"
//! path = "/src/out"
//! to = "dist"                                   # relative to this file
//! ```
//!
//! Every error names the file, the line and the step at fault:
//! `pipeline.toml:12: step "test": unknown key "rnu"`. Once a [`Pipeline`] exists it is known
//! to be acyclic, every step or secret it names exists, and every container path is absolute.
//!
//! ```no_run
//! let pipeline = cairn_pipeline::Pipeline::from_file("pipeline.toml")?;
//! for step in pipeline.order(&["test".to_string()])? {
//!     println!("{} (line {}) after {:?}", step.name, step.line, step.dependencies());
//! }
//! # Ok::<(), cairn_pipeline::PipelineError>(())
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use error::{ErrorKind, PipelineError, Problem, Scope};

/// A parsed and validated pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// The pipeline file, as it was given; errors name it.
    pub file: PathBuf,
    /// The file's directory: relative host paths were resolved against it.
    pub dir: PathBuf,
    /// Secrets by name, from `[secrets]`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Steps by name, from `[steps.NAME]`.
    pub steps: BTreeMap<String, Step>,
    /// Directories copied out to the host after the steps ran, from `[[exports]]`.
    pub exports: Vec<Export>,
}

/// Where the value of a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The host environment variable of this name.
    Env(String),
    /// The contents of this host file (resolved against the pipeline's directory).
    File(PathBuf),
}

/// One step: a container started from an image or from another step's result, with one
/// optional command run in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The step's name, the key in `[steps.NAME]`; matches `[A-Za-z0-9_-]+`.
    pub name: String,
    /// What the step's container starts from.
    pub source: StepSource,
    /// The command run in the container, if any.
    pub run: Option<Command>,
    /// Environment variables set in the container.
    pub env: BTreeMap<String, String>,
    /// The working directory (absolute), if set.
    pub workdir: Option<String>,
    /// The user (`name`, `uid` or `uid:gid`), if set.
    pub user: Option<String>,
    /// Directories placed into the container, in file order.
    pub inputs: Vec<Input>,
    /// Cache volumes mounted into the container, in file order.
    pub caches: Vec<CacheMount>,
    /// Secrets exposed to the container, in file order.
    pub secrets: Vec<SecretUse>,
    /// The network the command runs with.
    pub network: Network,
    /// An image reference to push the step's result to (parsed and kept, not checked).
    pub publish: Option<String>,
    /// The entrypoint of the published image (an argv array).
    pub entrypoint: Option<Vec<String>>,
    /// The default arguments of the published image (an argv array).
    pub cmd: Option<Vec<String>>,
    /// OCI labels of the published image.
    pub labels: BTreeMap<String, String>,
    /// 1-based line of the step's name in the file.
    pub line: usize,
}

impl Step {
    /// The names of the steps this one needs, directly: its `from` step and its step inputs,
    /// in that order and without repeats.
    pub fn dependencies(&self) -> Vec<&str> {
        let from = match &self.source {
            StepSource::From(name) => Some(name.as_str()),
            StepSource::Image(_) => None,
        };
        let inputs = self.inputs.iter().filter_map(|input| match input {
            Input::Step { step, .. } => Some(step.as_str()),
            Input::Host { .. } => None,
        });
        let mut deps = Vec::new();
        for name in from.into_iter().chain(inputs) {
            if !deps.contains(&name) {
                deps.push(name);
            }
        }
        deps
    }
}

/// What a step's container starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepSource {
    /// An image reference, pulled from its registry (`image = "…"`).
    Image(String),
    /// The final container of the step of this name: its filesystem and its configuration
    /// (`from = "…"`).
    From(String),
}

/// The command a step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// A non-empty shell command line, run as `/bin/sh -c LINE`.
    Shell(String),
    /// A non-empty argv, run as is.
    Argv(Vec<String>),
}

/// A directory placed into a step's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A host directory.
    Host {
        /// The host directory, resolved against the pipeline's directory.
        path: PathBuf,
        /// Where it appears in the container (absolute).
        to: String,
        /// Glob patterns of the files to take (all when empty).
        include: Vec<String>,
        /// Glob patterns of the files to leave out.
        exclude: Vec<String>,
    },
    /// A directory of another step's final container.
    Step {
        /// The other step's name.
        step: String,
        /// The directory in the other step's container (absolute).
        path: String,
        /// Where it appears in this container (absolute).
        to: String,
    },
}

/// A cache volume mounted into a step's container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    /// The cache's name; steps naming the same cache share its contents.
    pub name: String,
    /// Where it is mounted (absolute).
    pub to: String,
    /// How concurrent users of the cache share it.
    pub sharing: CacheSharing,
}

/// How concurrent steps share one cache volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheSharing {
    /// All users mount the same volume at once (`shared`, the default).
    #[default]
    Shared,
    /// Each concurrent user gets a volume of its own (`private`).
    Private,
    /// Users take turns (`locked`).
    Locked,
}

/// A secret exposed to a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// The secret's name under `[secrets]`.
    pub name: String,
    /// How the container sees it.
    pub target: SecretTarget,
}

/// How a step's container sees a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretTarget {
    /// As the environment variable of this name.
    Env(String),
    /// As a file mounted at this absolute path.
    File(String),
}

/// The network a step's command runs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Network {
    /// The host's network (`host`, the default).
    #[default]
    Host,
    /// No network but loopback (`none`).
    None,
}

/// A directory copied out of a step's final container to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The step's name.
    pub step: String,
    /// The directory in the step's container (absolute).
    pub path: String,
    /// The host directory, resolved against the pipeline's directory.
    pub to: PathBuf,
    /// 1-based line of the export in the file.
    pub line: usize,
}

impl Pipeline {
    /// Reads and validates the pipeline file at `path`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Pipeline, PipelineError> {
        let file = path.as_ref();
        let text = std::fs::read_to_string(file).map_err(|source| PipelineError::Read {
            file: file.to_owned(),
            source,
        })?;
        Pipeline::parse(&text, file)
    }

    /// Validates `text` as the content of the pipeline file `file`. The file is not read:
    /// its path names it in errors and its directory anchors relative host paths (the current
    /// directory when `file` has none).
    pub fn parse(text: &str, file: impl AsRef<Path>) -> Result<Pipeline, PipelineError> {
        parse::parse(text, file.as_ref())
    }

    /// The steps named in `wanted` (all steps when it is empty) and every step they depend on,
    /// each once, every step after the steps it depends on.
    pub fn order(&self, wanted: &[String]) -> Result<Vec<&Step>, PipelineError> {
        let roots: Vec<&str> = if wanted.is_empty() {
            self.steps.keys().map(String::as_str).collect()
        } else {
            wanted.iter().map(String::as_str).collect()
        };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for name in roots {
            if !self.steps.contains_key(name) {
                return Err(PipelineError::NoSuchStep {
                    file: self.file.clone(),
                    name: name.to_owned(),
                });
            }
            self.visit(name, &mut seen, &mut out);
        }
        Ok(out)
    }

    /// The steps `step` depends on directly (see [`Step::dependencies`]).
    pub fn dependencies(&self, step: &Step) -> Vec<&Step> {
        let deps = step.dependencies();
        deps.iter()
            .filter_map(|name| self.steps.get(*name))
            .collect()
    }

    fn visit<'a>(&'a self, name: &str, seen: &mut BTreeSet<&'a str>, out: &mut Vec<&'a Step>) {
        let Some((name, step)) = self.steps.get_key_value(name) else {
            return;
        };
        // Marked before the dependencies are visited, so that even a hand-built cyclic
        // pipeline cannot recurse forever.
        if !seen.insert(name.as_str()) {
            return;
        }
        for dep in step.dependencies() {
            self.visit(dep, seen, out);
        }
        out.push(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"[secrets]
token = { env = "API_TOKEN" }
key = { file = "keys/deploy" }

[steps.deps]
image = "127.0.0.1:5117/fixtures/busybox:latest"
run = "mkdir /out"

[steps.build]
image = "127.0.0.1:5117/fixtures/busybox:latest"
run = "make all"
env = { CC = "gcc", V = "1" }
workdir = "/src"
user = "1000:1000"
inputs = [
  { host = "src", to = "/src", exclude = ["target/**", "*.o"], include = ["**"] },
  { step = "deps", path = "/out", to = "/deps" },
]
caches = [ { name = "cargo", to = "/root/.cargo", sharing = "locked" }, { name = "x", to = "/x" } ]
secrets = [ { name = "token", env = "TOKEN" }, { name = "key", file = "/run/secrets/key" } ]
network = "none"
publish = "127.0.0.1:5117/out/app:latest"

[steps.test]
from = "build"
run = ["sh", "-c", "make test"]

[[exports]]
step = "build"
path = "/src/out"
to = "dist"
"#;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn full_example_parses_to_the_model() {
        let p = Pipeline::parse(FULL, "/ci/pipeline.toml").unwrap();
        assert_eq!(p.dir, PathBuf::from("/ci"));
        let want_secrets = BTreeMap::from([
            (
                "key".to_string(),
                SecretSource::File("/ci/keys/deploy".into()),
            ),
            ("token".to_string(), SecretSource::Env("API_TOKEN".into())),
        ]);
        assert_eq!(p.secrets, want_secrets);
        let busybox = "127.0.0.1:5117/fixtures/busybox:latest".to_string();
        let build = Step {
            name: "build".into(),
            source: StepSource::Image(busybox.clone()),
            run: Some(Command::Shell("make all".into())),
            env: BTreeMap::from([("CC".into(), "gcc".into()), ("V".into(), "1".into())]),
            workdir: Some("/src".into()),
            user: Some("1000:1000".into()),
            inputs: vec![
                Input::Host {
                    path: "/ci/src".into(),
                    to: "/src".into(),
                    include: strings(&["**"]),
                    exclude: strings(&["target/**", "*.o"]),
                },
                Input::Step {
                    step: "deps".into(),
                    path: "/out".into(),
                    to: "/deps".into(),
                },
            ],
            caches: vec![
                CacheMount {
                    name: "cargo".into(),
                    to: "/root/.cargo".into(),
                    sharing: CacheSharing::Locked,
                },
                CacheMount {
                    name: "x".into(),
                    to: "/x".into(),
                    sharing: CacheSharing::Shared,
                },
            ],
            secrets: vec![
                SecretUse {
                    name: "token".into(),
                    target: SecretTarget::Env("TOKEN".into()),
                },
                SecretUse {
                    name: "key".into(),
                    target: SecretTarget::File("/run/secrets/key".into()),
                },
            ],
            network: Network::None,
            publish: Some("127.0.0.1:5117/out/app:latest".into()),
            entrypoint: None,
            cmd: None,
            labels: BTreeMap::new(),
            line: 9,
        };
        assert_eq!(p.steps["build"], build);
        let test = &p.steps["test"];
        assert_eq!(test.source, StepSource::From("build".into()));
        assert_eq!(
            test.run,
            Some(Command::Argv(strings(&["sh", "-c", "make test"])))
        );
        assert_eq!((test.network, test.line), (Network::Host, 24));
        assert!(test.env.is_empty() && test.inputs.is_empty() && test.publish.is_none());
        assert_eq!(p.steps["deps"].source, StepSource::Image(busybox));
        let export = Export {
            step: "build".into(),
            path: "/src/out".into(),
            to: "/ci/dist".into(),
            line: 28,
        };
        assert_eq!(p.exports, vec![export]);
        assert_eq!(build.dependencies(), vec!["deps"]);
        assert_eq!(test.dependencies(), vec!["build"]);
    }

    #[test]
    fn relative_paths_resolve_against_the_file_directory() {
        let text = "[secrets]\ns = { file = \"../s\" }\n[steps.a]\nimage = \"i\"\n\
                    inputs = [{ host = \"./src\", to = \"/src\" }, { host = \"/abs\", to = \"/b\" }]\n\
                    [[exports]]\nstep = \"a\"\npath = \"/o\"\nto = \"out/x\"\n";
        let p = Pipeline::parse(text, "ci/sub/pipeline.toml").unwrap();
        assert_eq!(p.secrets["s"], SecretSource::File("ci/sub/../s".into()));
        let hosts: Vec<&Path> = (p.steps["a"].inputs.iter())
            .map(|input| match input {
                Input::Host { path, .. } => path.as_path(),
                Input::Step { .. } => panic!("not a host input"),
            })
            .collect();
        assert_eq!(hosts, [Path::new("ci/sub/./src"), Path::new("/abs")]);
        assert_eq!(p.exports[0].to, PathBuf::from("ci/sub/out/x"));
        let bare = Pipeline::parse(text, "pipeline.toml").unwrap();
        assert_eq!(bare.dir, PathBuf::from("."));
        assert_eq!(bare.exports[0].to, PathBuf::from("./out/x"));
    }

    /// a <- b <- c, a <- d (step input), e alone.
    const CHAIN: &str = r#"[steps.c]
from = "b"
[steps.b]
from = "a"
inputs = [{ step = "a", path = "/x", to = "/y" }]
[steps.a]
image = "i"
[steps.d]
image = "i"
inputs = [{ step = "a", path = "/x", to = "/y" }]
[steps.e]
image = "i"
"#;

    fn names(steps: Vec<&Step>) -> Vec<&str> {
        steps.into_iter().map(|step| step.name.as_str()).collect()
    }

    #[test]
    fn order_puts_dependencies_first_and_takes_only_what_is_needed() {
        let p = Pipeline::parse(CHAIN, "p.toml").unwrap();
        assert_eq!(names(p.order(&strings(&["c"])).unwrap()), ["a", "b", "c"]);
        assert_eq!(names(p.order(&strings(&["d"])).unwrap()), ["a", "d"]);
        assert_eq!(names(p.order(&strings(&["e"])).unwrap()), ["e"]);
        assert_eq!(
            names(p.order(&strings(&["d", "c"])).unwrap()),
            ["a", "d", "b", "c"]
        );
        assert_eq!(names(p.order(&[]).unwrap()), ["a", "b", "c", "d", "e"]);
        assert_eq!(p.steps["b"].dependencies(), ["a"]);
        assert_eq!(names(p.dependencies(&p.steps["c"])), ["b"]);
    }

    #[test]
    fn order_rejects_unknown_step_names() {
        let p = Pipeline::parse(CHAIN, "p.toml").unwrap();
        let err = p.order(&strings(&["c", "nope"])).unwrap_err();
        assert_eq!(err.to_string(), r#"p.toml: no step named "nope""#);
        assert_eq!(
            (err.kind(), err.step()),
            (ErrorKind::NotFound, Some("nope"))
        );
    }

    #[test]
    fn from_file_reads_and_reports_missing_files() {
        let dir = std::env::temp_dir().join(format!("cairn-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pipeline.toml");
        std::fs::write(&file, CHAIN).unwrap();
        let p = Pipeline::from_file(&file).unwrap();
        assert_eq!((p.dir.as_path(), p.steps.len()), (dir.as_path(), 5));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = Pipeline::from_file(&file).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("pipeline.toml"), "{err}");
    }
}
