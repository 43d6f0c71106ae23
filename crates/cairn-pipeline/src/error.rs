//! The crate's one error type, and what exactly is wrong with an invalid pipeline.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong reading a pipeline file or picking steps from it.
///
/// Every message names the file; messages about the file's content also name the 1-based line
/// and, where there is one, the step: `pipeline.toml:12: step "test": unknown key "rnu"`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The pipeline file could not be read.
    #[error("reading pipeline file {}: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why reading failed.
        #[source]
        source: io::Error,
    },
    /// The file is not valid TOML; line and column come from the TOML parser.
    #[error("{}:{line}:{column}: invalid TOML: {message}", file.display())]
    Syntax {
        /// The file.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The TOML parser's description.
        message: String,
    },
    /// The file is valid TOML but not a valid pipeline.
    #[error("{}:{line}: {scope}{problem}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// The step or secret the problem is in, if any.
        scope: Scope,
        /// What is wrong.
        problem: Problem,
    },
    /// A step asked for by name (for example with `--step`) does not exist.
    #[error("{}: no step named {name:?}", file.display())]
    NoSuchStep {
        /// The pipeline file.
        file: PathBuf,
        /// The name asked for.
        name: String,
    },
}

/// Categories of [`PipelineError`] that callers can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file, or a step asked for, does not exist.
    NotFound,
    /// The file is not a valid pipeline.
    InvalidInput,
    /// Any other failure to read the file.
    Io,
}

impl PipelineError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PipelineError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ErrorKind::NotFound
            }
            PipelineError::Read { .. } => ErrorKind::Io,
            PipelineError::Syntax { .. } | PipelineError::Invalid { .. } => ErrorKind::InvalidInput,
            PipelineError::NoSuchStep { .. } => ErrorKind::NotFound,
        }
    }

    /// The step the error is about, if any.
    pub fn step(&self) -> Option<&str> {
        match self {
            PipelineError::Invalid {
                scope: Scope::Step(step),
                ..
            } => Some(step),
            PipelineError::NoSuchStep { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Where in the pipeline an invalid key or value is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// At the top level, or in `[[exports]]`.
    Pipeline,
    /// In the step of this name.
    Step(String),
    /// In the definition of the secret of this name under `[secrets]`.
    Secret(String),
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Pipeline => Ok(()),
            Scope::Step(name) => write!(f, "step {name:?}: "),
            Scope::Secret(name) => write!(f, "secret {name:?}: "),
        }
    }
}

/// What is wrong with a key or value of a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A key the format does not have.
    UnknownKey(String),
    /// A key the format has, but not on this kind of table.
    NotAllowed {
        /// The key.
        key: String,
        /// The kind of table, e.g. "a step input".
        on: &'static str,
    },
    /// A value of the wrong TOML type.
    WrongType {
        /// The key whose value it is.
        key: String,
        /// What the format expects, e.g. "a string".
        expected: &'static str,
        /// The TOML type found, e.g. "integer".
        found: &'static str,
    },
    /// A required key is absent.
    MissingKey(&'static str),
    /// Both or neither of two mutually exclusive keys are present.
    ExactlyOne {
        /// The kind of table, e.g. "a step".
        what: &'static str,
        /// One key.
        a: &'static str,
        /// The other key.
        b: &'static str,
    },
    /// A string or array that must not be empty is.
    Empty(&'static str),
    /// `from`, a step input or an export names a step that does not exist.
    UnknownStep(String),
    /// A step uses a secret not defined under `[secrets]`.
    UndefinedSecret(String),
    /// Steps depend on each other in a cycle; the first name is repeated at the end.
    Cycle(Vec<String>),
    /// A path inside the container is not absolute.
    NotAbsolute {
        /// The key whose value it is.
        key: &'static str,
        /// The path.
        path: String,
    },
    /// Two inputs, caches or secret files of one step are mounted at the same path.
    DuplicateTarget(String),
    /// An environment variable is set twice in one step (by `env` or a secret).
    DuplicateVariable(String),
    /// A value outside the allowed set.
    InvalidValue {
        /// The key whose value it is.
        key: &'static str,
        /// The value.
        value: String,
        /// The allowed values.
        expected: &'static str,
    },
    /// A step or environment variable name that breaks the naming rule.
    InvalidName {
        /// What is named, e.g. "step".
        what: &'static str,
        /// The name.
        name: String,
        /// The rule it breaks.
        rule: &'static str,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::UnknownKey(key) => write!(f, "unknown key {key:?}"),
            Problem::NotAllowed { key, on } => write!(f, "key {key:?} is not allowed on {on}"),
            Problem::WrongType {
                key,
                expected,
                found,
            } => write!(f, "{key:?} must be {expected}, found {found}"),
            Problem::MissingKey(key) => write!(f, "missing key {key:?}"),
            Problem::ExactlyOne { what, a, b } => {
                write!(f, "{what} needs exactly one of {a:?} or {b:?}")
            }
            Problem::Empty(key) => write!(f, "{key:?} must not be empty"),
            Problem::UnknownStep(name) => write!(f, "no step named {name:?}"),
            Problem::UndefinedSecret(name) => {
                write!(f, "secret {name:?} is not defined under [secrets]")
            }
            Problem::Cycle(names) => write!(f, "dependency cycle {}", names.join(" -> ")),
            Problem::NotAbsolute { key, path } => {
                write!(
                    f,
                    "{key:?} must be an absolute path in the container, got {path:?}"
                )
            }
            Problem::DuplicateTarget(path) => write!(f, "two mounts at {path:?}"),
            Problem::DuplicateVariable(name) => {
                write!(f, "environment variable {name:?} is set twice")
            }
            Problem::InvalidValue {
                key,
                value,
                expected,
            } => write!(f, "invalid {key:?} value {value:?}, expected {expected}"),
            Problem::InvalidName { what, name, rule } => {
                write!(f, "invalid {what} name {name:?}: {rule}")
            }
        }
    }
}
