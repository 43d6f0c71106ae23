//! Reading the spanned TOML tree into the model, checking every key and value on the way.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::{
    CacheMount, CacheSharing, Command, Export, Input, Network, Pipeline, PipelineError, Problem,
    Scope, SecretSource, SecretTarget, SecretUse, Step, StepSource,
};

type Value<'i> = Spanned<DeValue<'i>>;
type Result<T> = std::result::Result<T, PipelineError>;
/// A step's dependencies, each with the span of the value that names it.
type Deps = Vec<(String, Range<usize>)>;
type Edges = BTreeMap<String, Deps>;

const TOP_KEYS: &[&str] = &["secrets", "steps", "exports"];
const STEP_KEYS: &[&str] = &[
    "image",
    "from",
    "run",
    "env",
    "workdir",
    "user",
    "inputs",
    "caches",
    "secrets",
    "network",
    "publish",
    "entrypoint",
    "cmd",
    "labels",
];
const INPUT_KEYS: &[&str] = &["host", "step", "path", "to", "include", "exclude"];
const HOST_INPUT_KEYS: &[&str] = &["host", "to", "include", "exclude"];
const STEP_INPUT_KEYS: &[&str] = &["step", "path", "to"];

pub(crate) fn parse(text: &str, file: &Path) -> Result<Pipeline> {
    let doc = DeTable::parse(text).map_err(|e| {
        let start = e.span().map_or(0, |span| span.start).min(text.len());
        let before = &text[..start];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        PipelineError::Syntax {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            message: e.message().replace('\n', " "),
        }
    })?;
    let dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let cx = Cx { file, text, dir };
    let top = cx.at(Scope::Pipeline);
    let doc = doc.get_ref();
    top.keys(doc, TOP_KEYS, None)?;

    let mut secrets = BTreeMap::new();
    if let Some(table) = doc.get("secrets") {
        for (name, def) in top.table("secrets", table)? {
            let at = cx.at(Scope::Secret(name.get_ref().to_string()));
            let def_table = at.table(name.get_ref(), def)?;
            at.keys(def_table, &["env", "file"], None)?;
            let source = match (def_table.get("env"), def_table.get("file")) {
                (Some(env), None) => SecretSource::Env(at.string("env", env)?),
                (None, Some(path)) => SecretSource::File(cx.dir.join(at.string("file", path)?)),
                _ => return Err(at.err(def.span(), exactly_one("a secret", "env", "file"))),
            };
            secrets.insert(name.get_ref().to_string(), source);
        }
    }

    let mut steps = BTreeMap::new();
    let mut edges = Edges::new();
    if let Some(table) = doc.get("steps") {
        let table = top.table("steps", table)?;
        let names: BTreeSet<&str> = table.keys().map(|name| name.get_ref().as_ref()).collect();
        for (name, value) in table {
            let text = name.get_ref();
            let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
            if text.is_empty() || !text.bytes().all(valid) {
                let rule = "use only letters, digits, '_' and '-'";
                return Err(top.err(name.span(), invalid_name("step", text, rule)));
            }
            let reader = StepReader {
                at: cx.at(Scope::Step(text.to_string())),
                names: &names,
                secrets: &secrets,
                deps: Vec::new(),
                targets: BTreeSet::new(),
                vars: BTreeSet::new(),
            };
            let (step, deps) = reader.read(name, value)?;
            edges.insert(step.name.clone(), deps);
            steps.insert(step.name.clone(), step);
        }
    }
    check_cycles(&cx, &edges)?;

    let mut exports = Vec::new();
    if let Some(list) = doc.get("exports") {
        for item in top.array("exports", list)? {
            let table = top.table("exports", item)?;
            top.keys(table, &["step", "path", "to"], None)?;
            let step = top.required(table, item, "step")?;
            let name = top.string("step", step)?;
            if !steps.contains_key(&name) {
                return Err(top.err(step.span(), Problem::UnknownStep(name)));
            }
            exports.push(Export {
                step: name,
                path: top.absolute("path", top.required(table, item, "path")?)?,
                to: cx
                    .dir
                    .join(top.string("to", top.required(table, item, "to")?)?),
                line: cx.line(&item.span()),
            });
        }
    }
    Ok(Pipeline {
        file: file.to_owned(),
        dir: cx.dir,
        secrets,
        steps,
        exports,
    })
}

/// The file being read.
struct Cx<'a> {
    file: &'a Path,
    text: &'a str,
    dir: PathBuf,
}

impl Cx<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].matches('\n').count() + 1
    }

    fn at(&self, scope: Scope) -> At<'_> {
        At { cx: self, scope }
    }
}

/// A place in the file (the top level, a step, a secret) that checks keys and values.
struct At<'a> {
    cx: &'a Cx<'a>,
    scope: Scope,
}

impl At<'_> {
    fn err(&self, span: Range<usize>, problem: Problem) -> PipelineError {
        PipelineError::Invalid {
            file: self.cx.file.to_owned(),
            line: self.cx.line(&span),
            scope: self.scope.clone(),
            problem,
        }
    }

    fn wrong_type(&self, key: &str, value: &Value, expected: &'static str) -> PipelineError {
        let found = value.get_ref().type_str();
        let key = key.to_owned();
        self.err(
            value.span(),
            Problem::WrongType {
                key,
                expected,
                found,
            },
        )
    }

    fn invalid(
        &self,
        at: &Value,
        key: &'static str,
        value: &str,
        expected: &'static str,
    ) -> PipelineError {
        let value = value.to_owned();
        self.err(
            at.span(),
            Problem::InvalidValue {
                key,
                value,
                expected,
            },
        )
    }

    /// Fails on the first key of `table` not in `allowed`: an unknown key, or with `on`, a
    /// key the format has but not on that kind of table.
    fn keys(&self, table: &DeTable, allowed: &[&str], on: Option<&'static str>) -> Result<()> {
        match table
            .keys()
            .find(|key| !allowed.contains(&key.get_ref().as_ref()))
        {
            None => Ok(()),
            Some(key) => {
                let name = key.get_ref().to_string();
                let problem = match on {
                    None => Problem::UnknownKey(name),
                    Some(on) => Problem::NotAllowed { key: name, on },
                };
                Err(self.err(key.span(), problem))
            }
        }
    }

    fn table<'v, 'i>(&self, key: &str, value: &'v Value<'i>) -> Result<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Ok(table),
            _ => Err(self.wrong_type(key, value, "a table")),
        }
    }

    fn array<'v, 'i>(&self, key: &str, value: &'v Value<'i>) -> Result<&'v [Value<'i>]> {
        match value.get_ref() {
            DeValue::Array(array) => Ok(array),
            _ => Err(self.wrong_type(key, value, "an array")),
        }
    }

    fn required<'v, 'i>(
        &self,
        table: &'v DeTable<'i>,
        whole: &Value,
        key: &'static str,
    ) -> Result<&'v Value<'i>> {
        (table.get(key)).ok_or_else(|| self.err(whole.span(), Problem::MissingKey(key)))
    }

    /// A string that may be empty.
    fn any_string(&self, key: &str, value: &Value) -> Result<String> {
        match value.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.wrong_type(key, value, "a string")),
        }
    }

    /// The non-empty string under `key`, if present.
    fn optional(&self, table: &DeTable, key: &'static str) -> Result<Option<String>> {
        table
            .get(key)
            .map(|value| self.string(key, value))
            .transpose()
    }

    /// A non-empty string.
    fn string(&self, key: &'static str, value: &Value) -> Result<String> {
        let s = self.any_string(key, value)?;
        if s.is_empty() {
            return Err(self.err(value.span(), Problem::Empty(key)));
        }
        Ok(s)
    }

    fn strings(&self, key: &'static str, value: &Value) -> Result<Vec<String>> {
        let items = self.array(key, value)?;
        let strings = items.iter().map(|item| match item.get_ref() {
            DeValue::String(s) => Ok(s.to_string()),
            _ => Err(self.wrong_type(key, item, "a string")),
        });
        strings.collect()
    }

    /// An absolute path inside the container.
    fn absolute(&self, key: &'static str, value: &Value) -> Result<String> {
        let path = self.string(key, value)?;
        if !path.starts_with('/') {
            return Err(self.err(value.span(), Problem::NotAbsolute { key, path }));
        }
        Ok(path)
    }
}

fn exactly_one(what: &'static str, a: &'static str, b: &'static str) -> Problem {
    Problem::ExactlyOne { what, a, b }
}

fn invalid_name(what: &'static str, name: &str, rule: &'static str) -> Problem {
    let name = name.to_owned();
    Problem::InvalidName { what, name, rule }
}

/// Reads one step, noting the steps it depends on.
struct StepReader<'a> {
    at: At<'a>,
    names: &'a BTreeSet<&'a str>,
    secrets: &'a BTreeMap<String, SecretSource>,
    deps: Deps,
    /// Mount targets so far, normalised.
    targets: BTreeSet<PathBuf>,
    /// Environment variables set so far, by `env` or by secrets.
    vars: BTreeSet<String>,
}

impl StepReader<'_> {
    fn read(mut self, name: &Spanned<Cow<str>>, value: &Value) -> Result<(Step, Deps)> {
        let at = &self.at;
        let table = at.table(name.get_ref(), value)?;
        at.keys(table, STEP_KEYS, None)?;
        let source = match (table.get("image"), table.get("from")) {
            (Some(image), None) => StepSource::Image(at.string("image", image)?),
            (None, Some(from)) => StepSource::From(self.step_ref("from", from)?),
            (image, from) => {
                let span = if image.is_some() {
                    from.unwrap_or(value).span()
                } else {
                    name.span()
                };
                return Err(at.err(span, exactly_one("a step", "image", "from")));
            }
        };
        let at = &self.at;
        let run = match table.get("run") {
            None => None,
            Some(run) => Some(match run.get_ref() {
                DeValue::String(_) => Command::Shell(at.string("run", run)?),
                DeValue::Array(items) if items.is_empty() => {
                    return Err(at.err(run.span(), Problem::Empty("run")))
                }
                DeValue::Array(_) => Command::Argv(at.strings("run", run)?),
                _ => return Err(at.wrong_type("run", run, "a string or an array of strings")),
            }),
        };
        let mut env = BTreeMap::new();
        if let Some(vars) = table.get("env") {
            for (key, value) in at.table("env", vars)? {
                self.var(key.get_ref(), key.span())?;
                env.insert(
                    key.get_ref().to_string(),
                    self.at.any_string(key.get_ref(), value)?,
                );
            }
        }
        let at = &self.at;
        let network = match table.get("network") {
            None => Network::Host,
            Some(value) => match at.string("network", value)?.as_str() {
                "host" => Network::Host,
                "none" => Network::None,
                other => return Err(at.invalid(value, "network", other, "host or none")),
            },
        };
        let workdir = table
            .get("workdir")
            .map(|v| at.absolute("workdir", v))
            .transpose()?;
        let (user, publish) = (at.optional(table, "user")?, at.optional(table, "publish")?);
        let argv = |key: &'static str| -> Result<Option<Vec<String>>> {
            match table.get(key) {
                None => Ok(None),
                Some(v) => {
                    let items = at.strings(key, v)?;
                    if key == "entrypoint" && items.is_empty() {
                        return Err(at.err(v.span(), Problem::Empty(key)));
                    }
                    Ok(Some(items))
                }
            }
        };
        let (entrypoint, cmd) = (argv("entrypoint")?, argv("cmd")?);
        let mut labels = BTreeMap::new();
        if let Some(table) = table.get("labels") {
            for (key, value) in at.table("labels", table)? {
                if key.get_ref().is_empty() {
                    return Err(at.err(key.span(), Problem::Empty("labels")));
                }
                labels.insert(
                    key.get_ref().to_string(),
                    at.any_string(key.get_ref(), value)?,
                );
            }
        }
        let inputs = self.list(table, "inputs", Self::input)?;
        let caches = self.list(table, "caches", Self::cache)?;
        let secrets = self.list(table, "secrets", Self::secret_use)?;
        let step = Step {
            name: name.get_ref().to_string(),
            source,
            run,
            env,
            workdir,
            user,
            inputs,
            caches,
            secrets,
            network,
            publish,
            entrypoint,
            cmd,
            labels,
            line: self.at.cx.line(&name.span()),
        };
        Ok((step, self.deps))
    }

    /// Reads each item of the array under `key` (none when it is absent) with `read`.
    fn list<T>(
        &mut self,
        table: &DeTable,
        key: &str,
        read: fn(&mut Self, &Value, &DeTable) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Some(list) = table.get(key) else {
            return Ok(Vec::new());
        };
        let items = self.at.array(key, list)?;
        items
            .iter()
            .map(|item| read(self, item, self.at.table(key, item)?))
            .collect()
    }

    /// A reference to another step, which must exist; noted as a dependency.
    fn step_ref(&mut self, key: &'static str, value: &Value) -> Result<String> {
        let name = self.at.string(key, value)?;
        if !self.names.contains(name.as_str()) {
            return Err(self.at.err(value.span(), Problem::UnknownStep(name)));
        }
        self.deps.push((name.clone(), value.span()));
        Ok(name)
    }

    /// Records an environment variable, failing if it is invalid or set already.
    fn var(&mut self, name: &str, span: Range<usize>) -> Result<()> {
        if name.is_empty() || name.contains(['=', '\0']) {
            let problem = invalid_name("environment variable", name, "no '=', not empty");
            return Err(self.at.err(span, problem));
        }
        if !self.vars.insert(name.to_owned()) {
            return Err(self
                .at
                .err(span, Problem::DuplicateVariable(name.to_owned())));
        }
        Ok(())
    }

    /// An absolute mount target, failing if the step already mounts something there.
    fn target(&mut self, key: &'static str, value: &Value) -> Result<String> {
        let to = self.at.absolute(key, value)?;
        if !self.targets.insert(Path::new(&to).components().collect()) {
            return Err(self.at.err(value.span(), Problem::DuplicateTarget(to)));
        }
        Ok(to)
    }

    fn input(&mut self, item: &Value, input: &DeTable) -> Result<Input> {
        let at = &self.at;
        at.keys(input, INPUT_KEYS, None)?;
        let to = at.required(input, item, "to")?;
        match (input.get("host"), input.get("step")) {
            (Some(host), None) => {
                at.keys(input, HOST_INPUT_KEYS, Some("a host input"))?;
                let patterns = |key| input.get(key).map_or(Ok(vec![]), |v| at.strings(key, v));
                let (include, exclude) = (patterns("include")?, patterns("exclude")?);
                let path = at.cx.dir.join(at.string("host", host)?);
                let to = self.target("to", to)?;
                Ok(Input::Host {
                    path,
                    to,
                    include,
                    exclude,
                })
            }
            (None, Some(step)) => {
                at.keys(input, STEP_INPUT_KEYS, Some("a step input"))?;
                let path = at.absolute("path", at.required(input, item, "path")?)?;
                let step = self.step_ref("step", step)?;
                let to = self.target("to", to)?;
                Ok(Input::Step { step, path, to })
            }
            _ => Err(at.err(item.span(), exactly_one("an input", "host", "step"))),
        }
    }

    fn cache(&mut self, item: &Value, cache: &DeTable) -> Result<CacheMount> {
        let at = &self.at;
        at.keys(cache, &["name", "to", "sharing"], None)?;
        let name = at.string("name", at.required(cache, item, "name")?)?;
        let sharing = match cache.get("sharing") {
            None => CacheSharing::Shared,
            Some(value) => match at.string("sharing", value)?.as_str() {
                "shared" => CacheSharing::Shared,
                "private" => CacheSharing::Private,
                "locked" => CacheSharing::Locked,
                other => {
                    return Err(at.invalid(value, "sharing", other, "shared, private or locked"))
                }
            },
        };
        let to = self.target("to", at.required(cache, item, "to")?)?;
        Ok(CacheMount { name, to, sharing })
    }

    fn secret_use(&mut self, item: &Value, secret: &DeTable) -> Result<SecretUse> {
        let at = &self.at;
        at.keys(secret, &["name", "env", "file"], None)?;
        let name_value = at.required(secret, item, "name")?;
        let name = at.string("name", name_value)?;
        if !self.secrets.contains_key(&name) {
            return Err(at.err(name_value.span(), Problem::UndefinedSecret(name)));
        }
        let target = match (secret.get("env"), secret.get("file")) {
            (Some(env), None) => {
                let var = at.string("env", env)?;
                self.var(&var, env.span())?;
                SecretTarget::Env(var)
            }
            (None, Some(file)) => SecretTarget::File(self.target("file", file)?),
            _ => return Err(at.err(item.span(), exactly_one("a secret use", "env", "file"))),
        };
        Ok(SecretUse { name, target })
    }
}

/// Fails on the first dependency cycle, naming every step in it.
fn check_cycles(cx: &Cx, edges: &Edges) -> Result<()> {
    /// `false` while a step's dependencies are being visited, `true` once they all were.
    fn visit<'e>(
        cx: &Cx,
        edges: &'e Edges,
        name: &'e str,
        done: &mut BTreeMap<&'e str, bool>,
        path: &mut Vec<&'e str>,
    ) -> Result<()> {
        done.insert(name, false);
        path.push(name);
        for (dep, span) in edges.get(name).into_iter().flatten() {
            match done.get(dep.as_str()) {
                Some(true) => {}
                Some(false) => {
                    let start = path.iter().position(|step| step == dep).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        path[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(dep.clone());
                    let at = cx.at(Scope::Step(name.to_owned()));
                    return Err(at.err(span.clone(), Problem::Cycle(cycle)));
                }
                None => visit(cx, edges, dep, done, path)?,
            }
        }
        path.pop();
        done.insert(name, true);
        Ok(())
    }
    let mut done = BTreeMap::new();
    for name in edges.keys() {
        if !done.contains_key(name.as_str()) {
            visit(cx, edges, name, &mut done, &mut Vec::new())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::{ErrorKind, Pipeline, PipelineError, Problem};

    /// Parses each case of `cases` (separated by `---` lines, each ending in `=> LINE: MESSAGE`)
    /// as `ci/p.toml` and checks that it fails with exactly `ci/p.toml:LINE: MESSAGE`.
    #[track_caller]
    fn fails(cases: &str) {
        let mut wrong = Vec::new();
        for case in cases.split("---\n") {
            let (text, want) = case
                .rsplit_once("=> ")
                .expect("a case ends in `=> message`");
            let want = format!("ci/p.toml:{}", want.trim_end());
            match Pipeline::parse(text, "ci/p.toml") {
                Err(err) if err.to_string() == want => {}
                Err(err) => wrong.push(format!("want {want}\n got {err}")),
                Ok(_) => wrong.push(format!("want {want}\n got a pipeline")),
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn unknown_keys_anywhere() {
        fails(
            r#"stepz = 1
=> 1: unknown key "stepz"
---
[steps.test]
image = "i"
rnu = "x"
=> 3: step "test": unknown key "rnu"
---
[steps.a]
image = "i"
inputs = [
  { host = "s", to = "/s", exlude = [] }]
=> 4: step "a": unknown key "exlude"
---
[steps.a]
image = "i"
inputs = [{ step = "a", path = "/x", to = "/y", include = [] }]
=> 3: step "a": key "include" is not allowed on a step input
---
[steps.a]
image = "i"
inputs = [{ host = "a", path = "/x", to = "/y" }]
=> 3: step "a": key "path" is not allowed on a host input
---
[steps.a]
image = "i"
caches = [{ name = "c", to = "/c", share = "x" }]
=> 3: step "a": unknown key "share"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ name = "t", var = "T" }]
=> 5: step "a": unknown key "var"
---
[secrets]
t = { env = "A", fiel = "x" }
=> 2: secret "t": unknown key "fiel"
---
[steps.a]
image = "i"
[[exports]]
step = "a"
path = "/x"
to = "d"
mode = 1
=> 7: unknown key "mode"
"#,
        );
    }

    #[test]
    fn wrong_types() {
        fails(
            r#"steps = 1
=> 1: "steps" must be a table, found integer
---
[steps]
a = 1
=> 2: step "a": "a" must be a table, found integer
---
[steps.a]
image = "i"
run = 5
=> 3: step "a": "run" must be a string or an array of strings, found integer
---
[steps.a]
image = "i"
run = ["sh",
  1]
=> 4: step "a": "run" must be a string, found integer
---
[steps.a]
image = "i"
env = { A = "x", B = true }
=> 3: step "a": "B" must be a string, found boolean
---
[steps.a]
image = "i"
inputs = "src"
=> 3: step "a": "inputs" must be an array, found string
---
[steps.a]
image = "i"
inputs = ["src"]
=> 3: step "a": "inputs" must be a table, found string
---
[steps.a]
image = "i"
user = 1000
=> 3: step "a": "user" must be a string, found integer
---
[steps.a]
image = "i"
publish = "r"
entrypoint = "/bin/app"
=> 4: step "a": "entrypoint" must be an array, found string
---
[steps.a]
image = "i"
entrypoint = []
=> 3: step "a": "entrypoint" must not be empty
---
[steps.a]
image = "i"
cmd = ["x", 2]
=> 3: step "a": "cmd" must be a string, found integer
---
[steps.a]
image = "i"
labels = { a = 1 }
=> 3: step "a": "a" must be a string, found integer
---
exports = { step = "a" }
=> 1: "exports" must be an array, found table
"#,
        );
    }

    #[test]
    fn image_and_from() {
        fails(
            r#"[steps.a]
run = "x"
=> 1: step "a": a step needs exactly one of "image" or "from"
---
[steps.a]
image = "i"
from = "a"
=> 3: step "a": a step needs exactly one of "image" or "from"
---
[steps.b]
image = ""
=> 2: step "b": "image" must not be empty
"#,
        );
    }

    #[test]
    fn references_to_unknown_steps() {
        fails(
            r#"[steps.a]
image = "i"
[steps.b]
from = "c"
=> 4: step "b": no step named "c"
---
[steps.a]
image = "i"
inputs = [{ step = "x", path = "/o", to = "/i" }]
=> 3: step "a": no step named "x"
---
[steps.a]
image = "i"
[[exports]]
step = "b"
path = "/x"
to = "d"
=> 4: no step named "b"
"#,
        );
    }

    #[test]
    fn dependency_cycles_are_named() {
        fails(
            r#"[steps.a]
from = "b"
[steps.b]
from = "a"
=> 4: step "b": dependency cycle a -> b -> a
---
[steps.a]
from = "a"
=> 2: step "a": dependency cycle a -> a
---
[steps.x]
image = "i"
inputs = [{ step = "c", path = "/o", to = "/i" }]
[steps.b]
from = "x"
[steps.c]
from = "b"
=> 7: step "c": dependency cycle b -> x -> c -> b
"#,
        );
    }

    #[test]
    fn secrets() {
        fails(
            r#"[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ name = "u", env = "U" }]
=> 5: step "a": secret "u" is not defined under [secrets]
---
[secrets]
t = { env = "A", file = "f" }
=> 2: secret "t": a secret needs exactly one of "env" or "file"
---
[secrets]
t = {}
=> 2: secret "t": a secret needs exactly one of "env" or "file"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ name = "t" }]
=> 5: step "a": a secret use needs exactly one of "env" or "file"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ env = "X" }]
=> 5: step "a": missing key "name"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
env = { T = "1" }
secrets = [{ name = "t", env = "T" }]
=> 6: step "a": environment variable "T" is set twice
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ name = "t", env = "A=B" }]
=> 5: step "a": invalid environment variable name "A=B": no '=', not empty
"#,
        );
    }

    #[test]
    fn container_paths_must_be_absolute() {
        fails(
            r#"[steps.a]
image = "i"
workdir = "src"
=> 3: step "a": "workdir" must be an absolute path in the container, got "src"
---
[steps.a]
image = "i"
inputs = [{ host = "s", to = "s" }]
=> 3: step "a": "to" must be an absolute path in the container, got "s"
---
[steps.a]
image = "i"
[steps.b]
image = "i"
inputs = [{ step = "a", path = "o", to = "/i" }]
=> 5: step "b": "path" must be an absolute path in the container, got "o"
---
[steps.a]
image = "i"
caches = [{ name = "c", to = "c" }]
=> 3: step "a": "to" must be an absolute path in the container, got "c"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
secrets = [{ name = "t", file = "run/t" }]
=> 5: step "a": "file" must be an absolute path in the container, got "run/t"
---
[steps.a]
image = "i"
[[exports]]
step = "a"
path = "out"
to = "d"
=> 5: "path" must be an absolute path in the container, got "out"
"#,
        );
    }

    #[test]
    fn duplicate_targets() {
        fails(
            r#"[steps.a]
image = "i"
inputs = [{ host = "s", to = "/x/" }]
caches = [
  { name = "c", to = "/x" }]
=> 5: step "a": two mounts at "/x"
---
[secrets]
t = { env = "T" }
[steps.a]
image = "i"
caches = [{ name = "c", to = "/run/t" }]
secrets = [{ name = "t", file = "/run/t" }]
=> 6: step "a": two mounts at "/run/t"
"#,
        );
    }

    #[test]
    fn invalid_values_and_names() {
        fails(
            r#"[steps.a]
image = "i"
run = []
=> 3: step "a": "run" must not be empty
---
[steps.a]
image = "i"
run = ""
=> 3: step "a": "run" must not be empty
---
[steps.a]
image = "i"
caches = [{ name = "c", to = "/c", sharing = "shard" }]
=> 3: step "a": invalid "sharing" value "shard", expected shared, private or locked
---
[steps.a]
image = "i"
network = "bridge"
=> 3: step "a": invalid "network" value "bridge", expected host or none
---
[steps.a]
image = "i"
[steps."b c"]
image = "i"
=> 3: invalid step name "b c": use only letters, digits, '_' and '-'
---
[steps.""]
image = "i"
=> 1: invalid step name "": use only letters, digits, '_' and '-'
---
[steps.a]
image = "i"
inputs = [{ to = "/x" }]
=> 3: step "a": an input needs exactly one of "host" or "step"
---
[steps.a]
image = "i"
inputs = [{ host = "s" }]
=> 3: step "a": missing key "to"
"#,
        );
    }

    #[test]
    fn syntax_errors_keep_line_and_column() {
        let err = Pipeline::parse("[steps.a]\nimage = \"i\"\nrun = \n", "ci/p.toml").unwrap_err();
        assert!(
            err.to_string().starts_with("ci/p.toml:3:7: invalid TOML: "),
            "{err}"
        );
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        let err = Pipeline::parse("[steps.a]\nimage = \"i\"\nimage = \"j\"\n", "p").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("p:3:1: invalid TOML: duplicate key"),
            "{err}"
        );
    }

    #[test]
    fn errors_carry_step_line_and_problem() {
        let err = Pipeline::parse("[steps.a]\nimage = \"i\"\nrnu = 1\n", "p.toml").unwrap_err();
        assert_eq!(
            (err.kind(), err.step()),
            (ErrorKind::InvalidInput, Some("a"))
        );
        let PipelineError::Invalid { line, problem, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!((line, problem), (3, Problem::UnknownKey("rnu".into())));
    }
}
