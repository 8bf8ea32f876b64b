//! Walks the positioned YAML tree into the [`Pipeline`] model by hand, checking every rule of
//! the format and collecting each problem with the position of the node at fault.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::tree::{Kind, Node, Pos, Scalar, ScalarType};
use crate::{
    Cache, DEFAULT_READY_INTERVAL, DEFAULT_READY_TIMEOUT, MAX_STEP_NAME_CHARS, Pipeline, Readiness,
    ReadyCheck, Resources, Service, Step, When, duration, quantity,
};

const TOP_KEYS: &[&str] = &[
    "version",
    "image",
    "variables",
    "secrets",
    "timeout",
    "services",
    "caches",
    "steps",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "image",
    "run",
    "env",
    "timeout",
    "when",
    "resources",
];
const SERVICE_KEYS: &[&str] = &["name", "image", "env", "command", "ready"];
const RESOURCES_KEYS: &[&str] = &["cpu", "memory"];
const READY_KEYS: &[&str] = &["command", "tcp", "timeout", "interval"];
const CACHE_KEYS: &[&str] = &["name", "path"];
const WHEN_VALUES: &[&str] = &["on_success", "on_failure", "always"];

/// Longest service name: an RFC 1123 DNS label.
const MAX_SERVICE_NAME: usize = 63;
/// Longest cache name.
const MAX_CACHE_NAME: usize = 63;

/// Decodes the root node; on failure, every problem found with its position (unsorted).
pub(crate) fn decode(root: &Node) -> Result<Pipeline, Vec<(Pos, String)>> {
    let mut d = Decoder { errors: Vec::new() };
    let pipeline = d.pipeline(root);
    if d.errors.is_empty() {
        Ok(pipeline)
    } else {
        Err(d.errors)
    }
}

struct Decoder {
    errors: Vec<(Pos, String)>,
}

/// The known keys of one mapping, each with its value, in file order.
struct Fields<'n> {
    entries: Vec<(&'n str, &'n Node)>,
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }
}

impl Decoder {
    fn error(&mut self, pos: Pos, message: String) {
        self.errors.push((pos, message));
    }

    fn pipeline(&mut self, root: &Node) -> Pipeline {
        let mut p = Pipeline {
            version: 1,
            image: None,
            variables: BTreeMap::new(),
            secrets: Vec::new(),
            timeout: None,
            services: Vec::new(),
            caches: Vec::new(),
            steps: Vec::new(),
        };
        if !matches!(root.kind, Kind::Map(_)) {
            self.error(
                root.pos,
                format!(
                    "a pipeline must be a mapping with `version` and `steps` keys, found {}",
                    describe(root)
                ),
            );
            return p;
        }
        let f = self.fields(root, "at the top level", TOP_KEYS);
        match f.get("version") {
            None => self.error(
                root.pos,
                "missing `version`: add `version: 1` at the top of the file".to_owned(),
            ),
            Some(v) => self.version(v),
        }
        if let Some(v) = f.get("image") {
            p.image = self.image(v, "`image`");
        }
        let mut secret_names = BTreeMap::new();
        if let Some(v) = f.get("secrets") {
            p.secrets = self.secrets(v, &mut secret_names);
        }
        if let Some(v) = f.get("variables") {
            p.variables = self.env_map(v, "`variables`", &secret_names);
        }
        if let Some(v) = f.get("timeout") {
            p.timeout = self.duration(v, "`timeout`");
        }
        if let Some(v) = f.get("services") {
            p.services = self.services(v);
        }
        if let Some(v) = f.get("caches") {
            p.caches = self.caches(v);
        }
        match f.get("steps") {
            None => self.error(
                root.pos,
                "missing `steps`: a pipeline needs at least one step".to_owned(),
            ),
            Some(v) => p.steps = self.steps(v, &secret_names),
        }
        p
    }

    /// Checks that `node` is a mapping whose keys are unique plain names from `allowed`, and
    /// returns the allowed entries. `context` completes messages ("in step `build`").
    fn fields<'n>(&mut self, node: &'n Node, context: &str, allowed: &[&str]) -> Fields<'n> {
        let mut fields = Fields {
            entries: Vec::new(),
        };
        let Kind::Map(entries) = &node.kind else {
            return fields;
        };
        let mut seen: BTreeMap<&str, Pos> = BTreeMap::new();
        for (key, value) in entries {
            let Some(name) = scalar_text(key) else {
                self.error(
                    key.pos,
                    format!(
                        "a key must be a plain name {context}, found {}",
                        describe(key)
                    ),
                );
                continue;
            };
            if let Some(first) = seen.get(name) {
                self.error(
                    key.pos,
                    format!(
                        "duplicate key `{name}` {context} (first defined at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, key.pos);
            if allowed.contains(&name) {
                fields.entries.push((name, value));
            } else {
                let list = allowed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                self.error(
                    key.pos,
                    format!(
                        "unknown key `{name}` {context}; expected one of {list}{}",
                        did_you_mean(name, allowed)
                    ),
                );
            }
        }
        fields
    }

    fn version(&mut self, node: &Node) {
        match &node.kind {
            Kind::Scalar(s) if s.ty == ScalarType::Int || s.ty == ScalarType::Str => {
                match s.text.trim().parse::<u64>() {
                    Ok(1) => {}
                    Ok(n) => self.error(
                        node.pos,
                        format!("unsupported version {n}: this outpost reads version 1"),
                    ),
                    Err(_) => self.error(
                        node.pos,
                        format!("`version` must be the number 1, found `{}`", s.text),
                    ),
                }
            }
            _ => self.error(
                node.pos,
                format!("`version` must be the number 1, found {}", describe(node)),
            ),
        }
    }

    /// A scalar's text (numbers and booleans as written); `None` after reporting otherwise.
    fn text(&mut self, node: &Node, what: &str) -> Option<String> {
        match &node.kind {
            Kind::Scalar(s) if s.ty == ScalarType::Null => {
                self.error(node.pos, format!("{what} is empty"));
                None
            }
            Kind::Scalar(s) => {
                if s.text.contains('\0') {
                    self.error(node.pos, format!("{what} contains a NUL character"));
                    return None;
                }
                Some(s.text.clone())
            }
            _ => {
                self.error(
                    node.pos,
                    format!("{what} must be a string, found {}", describe(node)),
                );
                None
            }
        }
    }

    fn image(&mut self, node: &Node, what: &str) -> Option<String> {
        let image = self.text(node, what)?;
        if image.is_empty() {
            self.error(node.pos, format!("{what} is empty"));
            return None;
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(
                node.pos,
                format!(
                    "{what} `{}` contains whitespace; an image is a reference like \
                     `alpine:3.20` or `registry.example.com/team/app:1.2`",
                    image.escape_debug()
                ),
            );
            return None;
        }
        Some(image)
    }

    fn duration(&mut self, node: &Node, what: &str) -> Option<Duration> {
        let text = self.text(node, what)?;
        match duration::parse(&text) {
            Ok(d) => Some(d),
            Err(message) => {
                self.error(node.pos, format!("{what}: {message}"));
                None
            }
        }
    }

    /// The items of a list; a null value is an empty list.
    fn list<'n>(&mut self, node: &'n Node, what: &str, example: &str) -> &'n [Node] {
        match &node.kind {
            Kind::Seq(items) => items,
            Kind::Scalar(s) if s.ty == ScalarType::Null => &[],
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a list, like {example}, found {}",
                        describe(node)
                    ),
                );
                &[]
            }
        }
    }

    fn secrets(&mut self, node: &Node, seen: &mut BTreeMap<String, Pos>) -> Vec<String> {
        let mut secrets = Vec::new();
        for item in self.list(node, "`secrets`", "`[DEPLOY_TOKEN]`") {
            let Some(name) = self.text(item, "a secret name") else {
                continue;
            };
            if !is_env_name(&name) {
                self.error(
                    item.pos,
                    format!(
                        "invalid secret name `{}`: {ENV_NAME_RULE}",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            if let Some(first) = seen.get(&name) {
                self.error(
                    item.pos,
                    format!(
                        "duplicate secret `{name}` (first listed at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name.clone(), item.pos);
            secrets.push(name);
        }
        secrets
    }

    /// A mapping of environment variable names to values; a null value is an empty mapping.
    /// Names that are declared secrets are refused: a plain value would shadow the secret.
    fn env_map(
        &mut self,
        node: &Node,
        what: &str,
        secrets: &BTreeMap<String, Pos>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let entries = match &node.kind {
            Kind::Map(entries) => entries,
            Kind::Scalar(s) if s.ty == ScalarType::Null => return out,
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a mapping of names to values, like \
                         `{{ RUST_LOG: info }}`, found {}",
                        describe(node)
                    ),
                );
                return out;
            }
        };
        let mut seen: BTreeMap<&str, Pos> = BTreeMap::new();
        for (key, value) in entries {
            let Some(name) = scalar_text(key) else {
                self.error(
                    key.pos,
                    format!(
                        "a variable name in {what} must be a plain name, found {}",
                        describe(key)
                    ),
                );
                continue;
            };
            if let Some(first) = seen.get(name) {
                self.error(
                    key.pos,
                    format!(
                        "duplicate variable `{name}` in {what} (first defined at line {})",
                        first.line
                    ),
                );
                continue;
            }
            seen.insert(name, key.pos);
            if !is_env_name(name) {
                self.error(
                    key.pos,
                    format!(
                        "invalid variable name `{}` in {what}: {ENV_NAME_RULE}",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            if secrets.contains_key(name) {
                self.error(
                    key.pos,
                    format!(
                        "`{name}` in {what} is declared as a secret; a plain value may not \
                         replace it"
                    ),
                );
                continue;
            }
            let value = match &value.kind {
                Kind::Scalar(s) if s.ty == ScalarType::Null => {
                    self.error(
                        value.pos,
                        format!(
                            "variable `{name}` in {what} has no value; write `{name}: \"\"` \
                             for an empty one"
                        ),
                    );
                    continue;
                }
                Kind::Scalar(s) => {
                    if s.text.contains('\0') {
                        self.error(
                            value.pos,
                            format!("variable `{name}` in {what} contains a NUL character"),
                        );
                        continue;
                    }
                    s.text.clone()
                }
                _ => {
                    self.error(
                        value.pos,
                        format!(
                            "variable `{name}` in {what} must be a string, number or boolean, \
                             found {}",
                            describe(value)
                        ),
                    );
                    continue;
                }
            };
            out.insert(name.to_owned(), value);
        }
        out
    }

    fn services(&mut self, node: &Node) -> Vec<Service> {
        let mut services = Vec::new();
        let mut names: BTreeMap<String, Pos> = BTreeMap::new();
        let example = "`[{ name: db, image: postgres:16 }]`";
        for (i, item) in self.list(node, "`services`", example).iter().enumerate() {
            if !matches!(item.kind, Kind::Map(_)) {
                self.error(
                    item.pos,
                    format!(
                        "a service must be a mapping with `name` and `image`, found {}",
                        describe(item)
                    ),
                );
                continue;
            }
            let label = label("service", i, item);
            let f = self.fields(item, &format!("in {label}"), SERVICE_KEYS);
            let name = match f.get("name") {
                None => {
                    self.error(item.pos, format!("{label} has no `name`"));
                    None
                }
                Some(v) => self.service_name(v, &mut names),
            };
            let image = match f.get("image") {
                None => {
                    self.error(item.pos, format!("{label} has no `image`"));
                    None
                }
                Some(v) => self.image(v, &format!("`image` of {label}")),
            };
            let env = match f.get("env") {
                None => BTreeMap::new(),
                Some(v) => self.env_map(v, &format!("`env` of {label}"), &BTreeMap::new()),
            };
            let command = f.get("command").map(|v| self.command(v, &label));
            let ready = f.get("ready").and_then(|v| self.readiness(v, &label));
            if let (Some(name), Some(image)) = (name, image) {
                services.push(Service {
                    name,
                    image,
                    env,
                    command,
                    ready,
                });
            }
        }
        services
    }

    fn service_name(&mut self, node: &Node, names: &mut BTreeMap<String, Pos>) -> Option<String> {
        let name = self.text(node, "a service name")?;
        let valid = !name.is_empty()
            && name.len() <= MAX_SERVICE_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            self.error(
                node.pos,
                format!(
                    "invalid service name `{}`: steps reach a service by its name as a host \
                     name, so it must be 1 to {MAX_SERVICE_NAME} lowercase letters, digits or \
                     `-`, starting and ending with a letter or digit",
                    name.escape_debug()
                ),
            );
            return None;
        }
        if let Some(first) = names.get(&name) {
            self.error(
                node.pos,
                format!(
                    "duplicate service name `{name}` (first defined at line {})",
                    first.line
                ),
            );
            return None;
        }
        names.insert(name.clone(), node.pos);
        Some(name)
    }

    fn command(&mut self, node: &Node, label: &str) -> Vec<String> {
        let what = format!("`command` of {label}");
        let Kind::Seq(items) = &node.kind else {
            self.error(
                node.pos,
                format!(
                    "{what} must be a list of arguments, like `[redis-server, --port, \"6380\"]`, \
                     found {}",
                    describe(node)
                ),
            );
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| self.text(item, &format!("an argument in {what}")))
            .collect()
    }

    fn caches(&mut self, node: &Node) -> Vec<Cache> {
        let mut caches = Vec::new();
        let mut names: BTreeMap<String, Pos> = BTreeMap::new();
        let mut paths: BTreeMap<String, Pos> = BTreeMap::new();
        let example = "`[{ name: cargo, path: /cache/cargo }]`";
        for (i, item) in self.list(node, "`caches`", example).iter().enumerate() {
            if !matches!(item.kind, Kind::Map(_)) {
                self.error(
                    item.pos,
                    format!(
                        "a cache must be a mapping with `name` and `path`, found {}",
                        describe(item)
                    ),
                );
                continue;
            }
            let label = label("cache", i, item);
            let f = self.fields(item, &format!("in {label}"), CACHE_KEYS);
            let name = match f.get("name") {
                None => {
                    self.error(item.pos, format!("{label} has no `name`"));
                    None
                }
                Some(v) => self.cache_name(v, &mut names),
            };
            let path = match f.get("path") {
                None => {
                    self.error(item.pos, format!("{label} has no `path`"));
                    None
                }
                Some(v) => self.cache_path(v, &label, &mut paths),
            };
            if let (Some(name), Some(path)) = (name, path) {
                caches.push(Cache { name, path });
            }
        }
        caches
    }

    fn cache_name(&mut self, node: &Node, names: &mut BTreeMap<String, Pos>) -> Option<String> {
        let name = self.text(node, "a cache name")?;
        let valid = name.len() <= MAX_CACHE_NAME
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
        if !valid {
            self.error(
                node.pos,
                format!(
                    "invalid cache name `{}`: a cache name becomes part of a volume name, so it \
                     must be 1 to {MAX_CACHE_NAME} of lowercase letters, digits, `_`, `.` and \
                     `-`, starting with a letter or digit",
                    name.escape_debug()
                ),
            );
            return None;
        }
        if let Some(first) = names.get(&name) {
            self.error(
                node.pos,
                format!(
                    "duplicate cache name `{name}` (first defined at line {})",
                    first.line
                ),
            );
            return None;
        }
        names.insert(name.clone(), node.pos);
        Some(name)
    }

    fn cache_path(
        &mut self,
        node: &Node,
        label: &str,
        paths: &mut BTreeMap<String, Pos>,
    ) -> Option<String> {
        let path = self.text(node, &format!("`path` of {label}"))?;
        let problem = if !path.starts_with('/') {
            Some("it must be an absolute path, like `/cache/cargo`")
        } else if path.split('/').all(str::is_empty) {
            Some("it may not be the root directory")
        } else if path.split('/').any(|c| c == "..") {
            Some("it may not contain `..`")
        } else if path.chars().any(char::is_control) {
            Some("it may not contain control characters")
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                node.pos,
                format!(
                    "invalid `path` `{}` of {label}: {problem}",
                    path.escape_debug()
                ),
            );
            return None;
        }
        // `/a/b/` and `/a//b` name the same directory as `/a/b`.
        let normal: String = path
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .flat_map(|c| ["/", c])
            .collect();
        if let Some(first) = paths.get(&normal) {
            self.error(
                node.pos,
                format!(
                    "{label} uses the path `{path}` of another cache (line {})",
                    first.line
                ),
            );
            return None;
        }
        paths.insert(normal, node.pos);
        Some(path)
    }

    fn steps(&mut self, node: &Node, secrets: &BTreeMap<String, Pos>) -> Vec<Step> {
        let items = match &node.kind {
            Kind::Seq(items) if !items.is_empty() => items,
            Kind::Seq(_)
            | Kind::Scalar(Scalar {
                ty: ScalarType::Null,
                ..
            }) => {
                self.error(
                    node.pos,
                    "`steps` is empty: a pipeline needs at least one step".to_owned(),
                );
                return Vec::new();
            }
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "`steps` must be a list, like `[{{ name: build, run: make }}]`, found {}",
                        describe(node)
                    ),
                );
                return Vec::new();
            }
        };
        let mut steps = Vec::new();
        let mut names: BTreeMap<String, Pos> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            if !matches!(item.kind, Kind::Map(_)) {
                self.error(
                    item.pos,
                    format!(
                        "a step must be a mapping with `name` and `run`, found {}",
                        describe(item)
                    ),
                );
                continue;
            }
            let label = label("step", i, item);
            let f = self.fields(item, &format!("in {label}"), STEP_KEYS);
            let name = match f.get("name") {
                None => {
                    self.error(item.pos, format!("{label} has no `name`"));
                    None
                }
                Some(v) => self.step_name(v, &mut names),
            };
            let image = f
                .get("image")
                .and_then(|v| self.image(v, &format!("`image` of {label}")));
            let run = match f.get("run") {
                None => {
                    self.error(item.pos, format!("{label} has no `run`"));
                    None
                }
                Some(v) => {
                    let what = format!("`run` of {label}");
                    let run = self.text(v, &what);
                    match run {
                        Some(r) if r.trim().is_empty() => {
                            self.error(v.pos, format!("{what} is empty"));
                            None
                        }
                        other => other,
                    }
                }
            };
            let env = match f.get("env") {
                None => BTreeMap::new(),
                Some(v) => self.env_map(v, &format!("`env` of {label}"), secrets),
            };
            let timeout = f
                .get("timeout")
                .and_then(|v| self.duration(v, &format!("`timeout` of {label}")));
            let when = match f.get("when") {
                None => When::OnSuccess,
                Some(v) => self.when(v, &label).unwrap_or_default(),
            };
            let resources = f.get("resources").and_then(|v| self.resources(v, &label));
            if let (Some(name), Some(run)) = (name, run) {
                steps.push(Step {
                    name,
                    image,
                    run,
                    env,
                    timeout,
                    when,
                    resources,
                });
            }
        }
        steps
    }

    fn step_name(&mut self, node: &Node, names: &mut BTreeMap<String, Pos>) -> Option<String> {
        let name = self.text(node, "a step name")?;
        let chars = name.chars().count();
        let problem = if name.trim().is_empty() {
            Some("it is empty".to_owned())
        } else if chars > MAX_STEP_NAME_CHARS {
            Some(format!(
                "it is {chars} characters long; at most {MAX_STEP_NAME_CHARS}"
            ))
        } else if name.chars().any(char::is_control) {
            Some("it must be one line of printable characters".to_owned())
        } else if name.trim() != name {
            Some("it starts or ends with whitespace".to_owned())
        } else {
            None
        };
        if let Some(problem) = problem {
            let shown: String = name.chars().take(MAX_STEP_NAME_CHARS).collect();
            self.error(
                node.pos,
                format!("invalid step name `{}`: {problem}", shown.escape_debug()),
            );
            return None;
        }
        if let Some(first) = names.get(&name) {
            self.error(
                node.pos,
                format!(
                    "duplicate step name `{name}` (first defined at line {})",
                    first.line
                ),
            );
            return None;
        }
        names.insert(name.clone(), node.pos);
        Some(name)
    }

    /// A step's `resources`; `None` when empty (or invalid, after reporting).
    fn resources(&mut self, node: &Node, label: &str) -> Option<Resources> {
        let what = format!("`resources` of {label}");
        match &node.kind {
            Kind::Map(_) => {}
            Kind::Scalar(s) if s.ty == ScalarType::Null => return None,
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a mapping, like `{{ cpu: 500m, memory: 512Mi }}`, found {}",
                        describe(node)
                    ),
                );
                return None;
            }
        }
        let f = self.fields(node, &format!("in {what}"), RESOURCES_KEYS);
        let cpu = f.get("cpu").and_then(|v| {
            self.quantity(
                v,
                &format!("`cpu` in {what}"),
                "`2` or `500m`",
                quantity::parse_cpu,
            )
        });
        let memory = f.get("memory").and_then(|v| {
            self.quantity(
                v,
                &format!("`memory` in {what}"),
                "`512Mi` or `1Gi`",
                quantity::parse_memory,
            )
        });
        (cpu.is_some() || memory.is_some()).then_some(Resources {
            cpu_millis: cpu,
            memory_bytes: memory,
        })
    }

    /// A CPU or memory quantity, read by `parse` from the scalar's text as written.
    fn quantity(
        &mut self,
        node: &Node,
        what: &str,
        example: &str,
        parse: fn(&str) -> Result<u64, String>,
    ) -> Option<u64> {
        let text = match &node.kind {
            Kind::Scalar(s) if s.ty == ScalarType::Null => {
                self.error(node.pos, format!("{what} is empty"));
                return None;
            }
            Kind::Scalar(s) => &s.text,
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a quantity, like {example}, found {}",
                        describe(node)
                    ),
                );
                return None;
            }
        };
        match parse(text) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(node.pos, format!("{what}: {message}"));
                None
            }
        }
    }

    /// A service's `ready`; `None` when empty (or invalid, after reporting).
    fn readiness(&mut self, node: &Node, label: &str) -> Option<Readiness> {
        let what = format!("`ready` of {label}");
        match &node.kind {
            Kind::Map(_) => {}
            Kind::Scalar(s) if s.ty == ScalarType::Null => return None,
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a mapping, like `{{ tcp: 5432 }}` or \
                         `{{ command: \"pg_isready -U postgres\" }}`, found {}",
                        describe(node)
                    ),
                );
                return None;
            }
        }
        let f = self.fields(node, &format!("in {what}"), READY_KEYS);
        let (command_node, tcp_node) = (f.get("command"), f.get("tcp"));
        // Each value is checked even when the combination is wrong, so that every problem
        // shows at once.
        let command = command_node.and_then(|v| {
            let key = format!("`command` in {what}");
            match self.text(v, &key) {
                Some(c) if c.trim().is_empty() => {
                    self.error(v.pos, format!("{key} is empty"));
                    None
                }
                other => other,
            }
        });
        let tcp = tcp_node.and_then(|v| self.port(v, &format!("`tcp` in {what}")));
        let timeout = match f.get("timeout") {
            None => Some(DEFAULT_READY_TIMEOUT),
            Some(v) => self.duration(v, &format!("`timeout` in {what}")),
        };
        let interval = match f.get("interval") {
            None => Some(DEFAULT_READY_INTERVAL),
            Some(v) => self.duration(v, &format!("`interval` in {what}")),
        };
        let check = match (command_node, tcp_node) {
            (Some(_), Some(second)) => {
                self.error(
                    second.pos,
                    format!("{what} has both `command` and `tcp`; give one of them"),
                );
                None
            }
            (None, None) => {
                self.error(
                    node.pos,
                    format!(
                        "{what} needs `command` (run in the service's container) or `tcp` (a \
                         port of the service to connect to)"
                    ),
                );
                None
            }
            (Some(_), None) => command.map(ReadyCheck::Command),
            (None, Some(_)) => tcp.map(ReadyCheck::Tcp),
        };
        let (check, timeout, interval) = (check?, timeout?, interval?);
        if interval > timeout {
            let at = f.get("interval").map_or(node.pos, |v| v.pos);
            self.error(
                at,
                format!(
                    "`interval` in {what} ({}) is longer than its `timeout` ({})",
                    duration::format(interval),
                    duration::format(timeout)
                ),
            );
            return None;
        }
        Some(Readiness {
            check,
            timeout,
            interval,
        })
    }

    /// A TCP port, 1 to 65535.
    fn port(&mut self, node: &Node, what: &str) -> Option<u16> {
        let text = self.text(node, what)?;
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => {
                self.error(
                    node.pos,
                    format!(
                        "{what} must be a port number from 1 to 65535, found `{}` (the port of \
                         the service itself: its host is the service)",
                        text.escape_debug()
                    ),
                );
                None
            }
        }
    }

    fn when(&mut self, node: &Node, label: &str) -> Option<When> {
        let what = format!("`when` of {label}");
        let text = self.text(node, &what)?;
        match text.as_str() {
            "on_success" => Some(When::OnSuccess),
            "on_failure" => Some(When::OnFailure),
            "always" => Some(When::Always),
            other => {
                self.error(
                    node.pos,
                    format!(
                        "invalid value `{}` for {what}: expected `on_success` (the default), \
                         `on_failure` or `always`{}",
                        other.escape_debug(),
                        did_you_mean(other, WHEN_VALUES)
                    ),
                );
                None
            }
        }
    }
}

/// "step `build`" when the item has a usable name, else "step 3" (1-based).
fn label(kind: &str, index: usize, item: &Node) -> String {
    let name = match &item.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| scalar_text(k) == Some("name"))
            .and_then(|(_, v)| scalar_text(v))
            .filter(|n| {
                !n.is_empty()
                    && n.chars().count() <= MAX_STEP_NAME_CHARS
                    && !n.chars().any(char::is_control)
            }),
        _ => None,
    };
    match name {
        Some(name) => format!("{kind} `{name}`"),
        None => format!("{kind} {}", index + 1),
    }
}

/// The text of a non-null scalar.
fn scalar_text(node: &Node) -> Option<&str> {
    match &node.kind {
        Kind::Scalar(s) if s.ty != ScalarType::Null => Some(&s.text),
        _ => None,
    }
}

/// How a node reads in a message: "a list", "the number `3`".
fn describe(node: &Node) -> String {
    match &node.kind {
        Kind::Map(_) => "a mapping".to_owned(),
        Kind::Seq(_) => "a list".to_owned(),
        Kind::Scalar(s) => match s.ty {
            ScalarType::Null => "nothing".to_owned(),
            ScalarType::Bool => format!("the boolean `{}`", s.text),
            ScalarType::Int | ScalarType::Float => format!("the number `{}`", s.text),
            ScalarType::Str => {
                let shown: String = s.text.chars().take(40).collect();
                let more = if shown.len() < s.text.len() {
                    "…"
                } else {
                    ""
                };
                format!("the string `{}{more}`", shown.escape_debug())
            }
        },
    }
}

const ENV_NAME_RULE: &str =
    "use letters, digits and `_`, not starting with a digit (like `RUST_LOG`)";

/// `[A-Za-z_][A-Za-z0-9_]*`: a name every shell and `env` accepts.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// " (did you mean `image`?)" for a close candidate, else "".
fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    let lower = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&lower, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, on characters; the inputs here are short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // Long inputs can never be within distance 2 of a short key name.
    if a.chars().count() > b.len() + 2 {
        return usize::MAX;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["A", "RUST_LOG", "_x", "lower_case", "A1"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A=B"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(edit_distance("imgae", "image"), 2);
        assert_eq!(did_you_mean("imgae", STEP_KEYS), " (did you mean `image`?)");
        assert_eq!(did_you_mean("Run", STEP_KEYS), " (did you mean `run`?)");
        assert_eq!(did_you_mean("script", STEP_KEYS), "");
        assert_eq!(
            did_you_mean("always_", WHEN_VALUES),
            " (did you mean `always`?)"
        );
    }
}
