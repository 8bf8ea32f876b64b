//! Tests of [`parse`]: the model of valid files, and the exact message and position of every
//! kind of error, driven through [`check`]; plus a no-panic test over mangled inputs.

use super::*;

/// The example of DESIGN.md §4.
const EXAMPLE: &str = "\
version: 1
image: alpine:3.20            # default image of steps (ignored by the process backend)
variables: { RUST_LOG: info }
secrets: [DEPLOY_TOKEN]       # names only; values are resolved by the runner, locally
timeout: 30m
services:                     # reachable from steps by name
  - { name: db, image: postgres:16, env: { POSTGRES_PASSWORD: test } }
caches:                       # volumes kept between jobs of the same pipeline and cache name
  - { name: cargo, path: /cache/cargo }
steps:
  - name: build
    image: rust:1.80
    run: cargo build --release
    env: { CARGO_HOME: /cache/cargo }
    timeout: 10m
  - name: notify
    run: echo done
    when: always              # on_success (default) | on_failure | always
";

/// Parses `input` as `t.yml` and compares the outcome with `expected`: the pipeline as
/// compact JSON when it is valid, else the error's full display text.
#[track_caller]
fn check(input: &str, expected: &str) {
    let got = match parse("t.yml", input) {
        Ok(p) => serde_json::to_string(&p).expect("the model serializes"),
        Err(e) => e.to_string(),
    };
    assert_eq!(got, expected, "input:\n{input}");
}

/// `version: 1` and one valid step, then `rest` (whole lines). Errors in `rest` start at line 5.
fn with_step(rest: &str) -> String {
    format!("version: 1\nsteps:\n  - name: build\n    run: make\n{rest}")
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn design_example_parses_to_the_model() {
    let expected = Pipeline {
        version: 1,
        image: Some("alpine:3.20".into()),
        variables: map(&[("RUST_LOG", "info")]),
        secrets: vec!["DEPLOY_TOKEN".into()],
        timeout: Some(Duration::from_secs(30 * 60)),
        services: vec![Service {
            name: "db".into(),
            image: "postgres:16".into(),
            env: map(&[("POSTGRES_PASSWORD", "test")]),
            command: None,
            ready: None,
        }],
        caches: vec![Cache {
            name: "cargo".into(),
            path: "/cache/cargo".into(),
        }],
        steps: vec![
            Step {
                name: "build".into(),
                image: Some("rust:1.80".into()),
                run: "cargo build --release".into(),
                env: map(&[("CARGO_HOME", "/cache/cargo")]),
                timeout: Some(Duration::from_secs(600)),
                when: When::OnSuccess,
                resources: None,
            },
            Step {
                name: "notify".into(),
                image: None,
                run: "echo done".into(),
                env: BTreeMap::new(),
                timeout: None,
                when: When::Always,
                resources: None,
            },
        ],
    };
    let got = parse(".outpost.yml", EXAMPLE).expect("the design example is valid");
    assert_eq!(got, expected);
    assert_eq!(got.steps[0].effective_image(&got), Some("rust:1.80"));
    assert_eq!(got.steps[1].effective_image(&got), Some("alpine:3.20"));
    assert_eq!(
        got.steps[0].effective_env(&got),
        map(&[("CARGO_HOME", "/cache/cargo"), ("RUST_LOG", "info")])
    );
    assert_eq!(got.step("notify").map(|s| s.when), Some(When::Always));
    check(
        EXAMPLE,
        r#"{"version":1,"image":"alpine:3.20","variables":{"RUST_LOG":"info"},"secrets":["DEPLOY_TOKEN"],"timeout":"30m","services":[{"name":"db","image":"postgres:16","env":{"POSTGRES_PASSWORD":"test"},"command":null,"ready":null}],"caches":[{"name":"cargo","path":"/cache/cargo"}],"steps":[{"name":"build","image":"rust:1.80","run":"cargo build --release","env":{"CARGO_HOME":"/cache/cargo"},"timeout":"10m","when":"on_success","resources":null},{"name":"notify","image":null,"run":"echo done","env":{},"timeout":null,"when":"always","resources":null}]}"#,
    );
}

#[test]
fn minimal_and_coerced_values() {
    check(
        "version: 1\nsteps:\n  - name: a\n    run: make\n",
        r#"{"version":1,"image":null,"variables":{},"secrets":[],"timeout":null,"services":[],"caches":[],"steps":[{"name":"a","image":null,"run":"make","env":{},"timeout":null,"when":"on_success","resources":null}]}"#,
    );
    // Numbers and booleans are read as written; quoted `version` is accepted.
    check(
        "version: '1'\nvariables: { A: 1.10, B: true, C: 0x1F, D: -3, E: yes, F: '' }\n\
         steps:\n  - name: 2024\n    run: true\n    env: { N: 12, T: TRUE }\n    timeout: 1h30m\n    when: on_failure\n",
        r#"{"version":1,"image":null,"variables":{"A":"1.10","B":"true","C":"0x1F","D":"-3","E":"yes","F":""},"secrets":[],"timeout":null,"services":[],"caches":[],"steps":[{"name":"2024","image":null,"run":"true","env":{"N":"12","T":"TRUE"},"timeout":"1h30m","when":"on_failure","resources":null}]}"#,
    );
    // Empty list and mapping keys mean empty; lowercase env names are allowed.
    check(
        "version: 1\nvariables:\nsecrets:\nservices: []\ncaches: ~\nsteps:\n  - name: a\n    run: make\n    env: { lower_case: x }\n",
        r#"{"version":1,"image":null,"variables":{},"secrets":[],"timeout":null,"services":[],"caches":[],"steps":[{"name":"a","image":null,"run":"make","env":{"lower_case":"x"},"timeout":null,"when":"on_success","resources":null}]}"#,
    );
}

#[test]
fn multi_line_run_and_service_command() {
    check(
        "version: 1\nservices:\n  - name: cache-1\n    image: redis:7\n    command: [redis-server, --port, 6380]\n\
         steps:\n  - name: test\n    run: |\n      cargo test\n      echo \"done\"\n",
        r#"{"version":1,"image":null,"variables":{},"secrets":[],"timeout":null,"services":[{"name":"cache-1","image":"redis:7","env":{},"command":["redis-server","--port","6380"],"ready":null}],"caches":[],"steps":[{"name":"test","image":null,"run":"cargo test\necho \"done\"\n","env":{},"timeout":null,"when":"on_success","resources":null}]}"#,
    );
}

#[test]
fn byte_order_mark_and_crlf_line_ends() {
    let input =
        "\u{feff}version: 1\r\nsteps:\r\n  - name: a\r\n    run: |\r\n      one\r\n      two\r\n";
    let p = parse("t.yml", input).expect("valid");
    assert_eq!(p.steps[0].run, "one\ntwo\n");
    check(
        "\u{feff}version: 1\r\nsteps:\r\n  - name: a\r\n    run: x\r\n    when: never\r\n",
        "t.yml:5:11: invalid value `never` for `when` of step `a`: expected `on_success` (the \
         default), `on_failure` or `always`",
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    check(
        "version: 1\nsteps: [{ name: äöü, run: x, when: nie }]\n",
        "t.yml:2:36: invalid value `nie` for `when` of step `äöü`: expected `on_success` (the \
         default), `on_failure` or `always`",
    );
}

#[test]
fn anchors_and_aliases_are_expanded() {
    let input = "version: 1\nsteps:\n  - name: a\n    run: make\n    env: &common { A: '1', B: x }\n  - name: b\n    run: make\n    env: *common\n";
    let p = parse("t.yml", input).expect("valid");
    assert_eq!(p.steps[1].env, map(&[("A", "1"), ("B", "x")]));
    assert_eq!(p.steps[0].env, p.steps[1].env);
}

#[test]
fn top_level_errors() {
    check(
        "steps:\n  - name: a\n    run: make\n",
        "t.yml:1:1: missing `version`: add `version: 1` at the top of the file",
    );
    check(
        "version: 2\nsteps:\n  - name: a\n    run: make\n",
        "t.yml:1:10: unsupported version 2: this outpost reads version 1",
    );
    check(
        "version: one\nsteps:\n  - name: a\n    run: make\n",
        "t.yml:1:10: `version` must be the number 1, found `one`",
    );
    check(
        "version: [1]\nsteps:\n  - name: a\n    run: make\n",
        "t.yml:1:10: `version` must be the number 1, found a list",
    );
    check(
        &with_step("imagee: alpine\n"),
        "t.yml:5:1: unknown key `imagee` at the top level; expected one of `version`, `image`, \
         `variables`, `secrets`, `timeout`, `services`, `caches`, `steps` (did you mean `image`?)",
    );
    check(
        "version: 1\n",
        "t.yml:1:1: missing `steps`: a pipeline needs at least one step",
    );
    check(
        "version: 1\nsteps: []\n",
        "t.yml:2:8: `steps` is empty: a pipeline needs at least one step",
    );
    check(
        "version: 1\nsteps:\n",
        "t.yml:2:1: `steps` is empty: a pipeline needs at least one step",
    );
    check(
        "version: 1\nsteps: make\n",
        "t.yml:2:8: `steps` must be a list, like `[{ name: build, run: make }]`, found the \
         string `make`",
    );
    check(
        "",
        "t.yml:1:1: the pipeline file is empty; it needs `version: 1` and `steps`",
    );
    check(
        "# only a comment\n",
        "t.yml:1:1: the pipeline file is empty; it needs `version: 1` and `steps`",
    );
    check(
        "- version: 1\n",
        "t.yml:1:1: a pipeline must be a mapping with `version` and `steps` keys, found a list",
    );
    check(
        &with_step("image: 'alpine 3'\n"),
        "t.yml:5:8: `image` `alpine 3` contains whitespace; an image is a reference like \
         `alpine:3.20` or `registry.example.com/team/app:1.2`",
    );
    check(&with_step("image: ''\n"), "t.yml:5:8: `image` is empty");
    check(&with_step("image:\n"), "t.yml:5:1: `image` is empty");
    check(
        &with_step("timeout: 0s\n"),
        "t.yml:5:10: `timeout`: invalid duration `0s`: it must be longer than zero",
    );
    check(
        &with_step("timeout: 90\n"),
        "t.yml:5:10: `timeout`: invalid duration `90`: it has no unit; expected a whole number \
         with a unit (h, m or s), like `90s`, `10m`, `1h` or `1h30m`",
    );
    check(
        &with_step("timeout: -5m\n"),
        "t.yml:5:10: `timeout`: invalid duration `-5m`: it is negative; expected a whole number \
         with a unit (h, m or s), like `90s`, `10m`, `1h` or `1h30m`",
    );
    check(
        &with_step("timeout: soon\n"),
        "t.yml:5:10: `timeout`: invalid duration `soon`: it is not of that form; expected a \
         whole number with a unit (h, m or s), like `90s`, `10m`, `1h` or `1h30m`",
    );
}

#[test]
fn variable_and_secret_errors() {
    check(
        &with_step("variables: { 1A: x }\n"),
        "t.yml:5:14: invalid variable name `1A` in `variables`: use letters, digits and `_`, \
         not starting with a digit (like `RUST_LOG`)",
    );
    check(
        &with_step("variables:\n  A: { b: c }\n"),
        "t.yml:6:6: variable `A` in `variables` must be a string, number or boolean, found a \
         mapping",
    );
    check(
        &with_step("variables:\n  A: [1]\n"),
        "t.yml:6:6: variable `A` in `variables` must be a string, number or boolean, found a list",
    );
    check(
        &with_step("variables:\n  A:\n"),
        "t.yml:6:3: variable `A` in `variables` has no value; write `A: \"\"` for an empty one",
    );
    check(
        &with_step("variables:\n  A: x\n  A: y\n"),
        "t.yml:7:3: duplicate variable `A` in `variables` (first defined at line 6)",
    );
    check(
        &with_step("variables: [A]\n"),
        "t.yml:5:12: `variables` must be a mapping of names to values, like \
         `{ RUST_LOG: info }`, found a list",
    );
    check(
        &with_step("variables: { A: \"x\\0y\" }\n"),
        "t.yml:5:17: variable `A` in `variables` contains a NUL character",
    );
    check(
        &with_step("secrets: [DEPLOY-TOKEN]\n"),
        "t.yml:5:11: invalid secret name `DEPLOY-TOKEN`: use letters, digits and `_`, not \
         starting with a digit (like `RUST_LOG`)",
    );
    check(
        &with_step("secrets:\n  - TOKEN\n  - TOKEN\n"),
        "t.yml:7:5: duplicate secret `TOKEN` (first listed at line 6)",
    );
    check(
        &with_step("secrets: TOKEN\n"),
        "t.yml:5:10: `secrets` must be a list, like `[DEPLOY_TOKEN]`, found the string `TOKEN`",
    );
    check(
        &with_step("secrets: [TOKEN]\nvariables: { TOKEN: x }\n"),
        "t.yml:6:14: `TOKEN` in `variables` is declared as a secret; a plain value may not \
         replace it",
    );
    check(
        "version: 1\nsecrets: [TOKEN]\nsteps:\n  - name: a\n    run: make\n    env:\n      TOKEN: x\n",
        "t.yml:7:7: `TOKEN` in `env` of step `a` is declared as a secret; a plain value may not \
         replace it",
    );
}

#[test]
fn step_errors() {
    check(
        "version: 1\nsteps:\n  - name: build\n    run: make\n  - name: test\n    run: make test\n  - name: build\n    run: make again\n",
        "t.yml:7:11: duplicate step name `build` (first defined at line 3)",
    );
    check(
        &with_step("    imgae: rust\n"),
        "t.yml:5:5: unknown key `imgae` in step `build`; expected one of `name`, `image`, \
         `run`, `env`, `timeout`, `when`, `resources` (did you mean `image`?)",
    );
    check(
        &with_step("    script: make\n"),
        "t.yml:5:5: unknown key `script` in step `build`; expected one of `name`, `image`, \
         `run`, `env`, `timeout`, `when`, `resources`",
    );
    check(
        &with_step("    run: again\n"),
        "t.yml:5:5: duplicate key `run` in step `build` (first defined at line 4)",
    );
    check(
        &with_step("    when: allways\n"),
        "t.yml:5:11: invalid value `allways` for `when` of step `build`: expected `on_success` \
         (the default), `on_failure` or `always` (did you mean `always`?)",
    );
    check(
        &with_step("    timeout: 1.5h\n"),
        "t.yml:5:14: `timeout` of step `build`: invalid duration `1.5h`: it is not of that form; \
         expected a whole number with a unit (h, m or s), like `90s`, `10m`, `1h` or `1h30m`",
    );
    check(
        &with_step("    env: { CARGO_HOME: { x: 1 } }\n"),
        "t.yml:5:24: variable `CARGO_HOME` in `env` of step `build` must be a string, number or \
         boolean, found a mapping",
    );
    check(
        &with_step("    image: 'rust 1'\n"),
        "t.yml:5:12: `image` of step `build` `rust 1` contains whitespace; an image is a \
         reference like `alpine:3.20` or `registry.example.com/team/app:1.2`",
    );
    check(
        "version: 1\nsteps:\n  - run: make\n",
        "t.yml:3:5: step 1 has no `name`",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n",
        "t.yml:3:5: step `a` has no `run`",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n    run: '  '\n",
        "t.yml:4:10: `run` of step `a` is empty",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n    run:\n",
        "t.yml:4:5: `run` of step `a` is empty",
    );
    check(
        "version: 1\nsteps:\n  - name: ''\n    run: make\n",
        "t.yml:3:11: invalid step name ``: it is empty",
    );
    check(
        "version: 1\nsteps:\n  - name: \"a\\nb\"\n    run: make\n",
        "t.yml:3:11: invalid step name `a\\nb`: it must be one line of printable characters",
    );
    check(
        "version: 1\nsteps:\n  - name: ' a'\n    run: make\n",
        "t.yml:3:11: invalid step name ` a`: it starts or ends with whitespace",
    );
    let long = "x".repeat(101);
    check(
        &format!("version: 1\nsteps:\n  - name: {long}\n    run: make\n"),
        &format!(
            "t.yml:3:11: invalid step name `{}`: it is 101 characters long; at most 100",
            "x".repeat(100)
        ),
    );
    check(
        "version: 1\nsteps:\n  - name: [a]\n    run: make\n",
        "t.yml:3:11: a step name must be a string, found a list",
    );
    check(
        "version: 1\nsteps:\n  - make\n",
        "t.yml:3:5: a step must be a mapping with `name` and `run`, found the string `make`",
    );
}

#[test]
fn service_errors() {
    let svc = |lines: &str| {
        with_step(&format!(
            "services:\n  - name: db\n    image: postgres:16\n{lines}"
        ))
    };
    check(
        &svc("    ports: [5432]\n"),
        "t.yml:8:5: unknown key `ports` in service `db`; expected one of `name`, `image`, \
         `env`, `command`, `ready`",
    );
    check(
        &svc("  - name: db\n    image: postgres:17\n"),
        "t.yml:8:11: duplicate service name `db` (first defined at line 6)",
    );
    check(
        &svc("    command: redis-server --port 6380\n"),
        "t.yml:8:14: `command` of service `db` must be a list of arguments, like \
         `[redis-server, --port, \"6380\"]`, found the string `redis-server --port 6380`",
    );
    check(
        &svc("    env: { POSTGRES_PASSWORD: [x] }\n"),
        "t.yml:8:31: variable `POSTGRES_PASSWORD` in `env` of service `db` must be a string, \
         number or boolean, found a list",
    );
    let rule = "steps reach a service by its name as a host name, so it must be 1 to 63 \
                lowercase letters, digits or `-`, starting and ending with a letter or digit";
    for (name, col) in [
        ("DB", 11),
        ("-db", 11),
        ("db-", 11),
        ("db_1", 11),
        ("'db.x'", 11),
    ] {
        let shown = name.trim_matches('\'');
        check(
            &with_step(&format!("services:\n  - name: {name}\n    image: x\n")),
            &format!("t.yml:6:{col}: invalid service name `{shown}`: {rule}"),
        );
    }
    let long = "a".repeat(64);
    check(
        &with_step(&format!("services:\n  - name: {long}\n    image: x\n")),
        &format!("t.yml:6:11: invalid service name `{long}`: {rule}"),
    );
    check(
        &with_step("services:\n  - name: db\n"),
        "t.yml:6:5: service `db` has no `image`",
    );
    check(
        &with_step("services:\n  - image: x\n"),
        "t.yml:6:5: service 1 has no `name`",
    );
    check(
        &with_step("services: { db: postgres }\n"),
        "t.yml:5:11: `services` must be a list, like `[{ name: db, image: postgres:16 }]`, \
         found a mapping",
    );
}

#[test]
fn cache_errors() {
    check(
        &with_step("caches:\n  - { name: cargo, path: /c, size: 1 }\n"),
        "t.yml:6:30: unknown key `size` in cache `cargo`; expected one of `name`, `path`",
    );
    let rule = "a cache name becomes part of a volume name, so it must be 1 to 63 of lowercase \
                letters, digits, `_`, `.` and `-`, starting with a letter or digit";
    for name in ["Cargo", ".hidden", "a/b", "''", "-x"] {
        let shown = name.trim_matches('\'');
        check(
            &with_step(&format!("caches:\n  - {{ name: {name}, path: /c }}\n")),
            &format!("t.yml:6:13: invalid cache name `{shown}`: {rule}"),
        );
    }
    check(
        &with_step("caches:\n  - { name: a.b_c-1, path: /a }\n  - { name: a.b_c-1, path: /b }\n"),
        "t.yml:7:13: duplicate cache name `a.b_c-1` (first defined at line 6)",
    );
    check(
        &with_step("caches:\n  - { name: a, path: cache/a }\n"),
        "t.yml:6:22: invalid `path` `cache/a` of cache `a`: it must be an absolute path, like \
         `/cache/cargo`",
    );
    check(
        &with_step("caches:\n  - { name: a, path: / }\n"),
        "t.yml:6:22: invalid `path` `/` of cache `a`: it may not be the root directory",
    );
    check(
        &with_step("caches:\n  - { name: a, path: /cache/../etc }\n"),
        "t.yml:6:22: invalid `path` `/cache/../etc` of cache `a`: it may not contain `..`",
    );
    check(
        &with_step("caches:\n  - { name: a, path: /cache/x }\n  - { name: b, path: /cache//x/ }\n"),
        "t.yml:7:22: cache `b` uses the path `/cache//x/` of another cache (line 6)",
    );
    check(
        &with_step("caches:\n  - { name: a }\n"),
        "t.yml:6:5: cache `a` has no `path`",
    );
}

#[test]
fn several_errors_are_reported_in_file_order() {
    let input = "steps:\n  - name: a\n    run: make\n    when: later\n  - name: a\n    run: make\nextra: 1\n";
    let err = parse("t.yml", input).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "t.yml:1:1: missing `version`: add `version: 1` at the top of the file\n\
         t.yml:4:11: invalid value `later` for `when` of step `a`: expected `on_success` (the \
         default), `on_failure` or `always`\n\
         t.yml:5:11: duplicate step name `a` (first defined at line 2)\n\
         t.yml:7:1: unknown key `extra` at the top level; expected one of `version`, `image`, \
         `variables`, `secrets`, `timeout`, `services`, `caches`, `steps`"
    );
    assert_eq!(err.errors().len(), 4);
    assert_eq!((err.file(), err.line(), err.column()), ("t.yml", 1, 1));
    assert_eq!(err.errors()[2].line(), 5);
    assert!(matches!(err.errors()[3], PipelineError::Invalid { .. }));

    // Past 20 problems, the rest is counted, not listed.
    let mut many = String::from("version: 1\nsteps:\n  - name: a\n    run: make\n");
    for i in 0..25 {
        many.push_str(&format!("unknown{i}: x\n"));
    }
    let err = parse("t.yml", &many).expect_err("invalid");
    let PipelineError::Multiple { errors, omitted } = &err else {
        panic!("expected several errors, got {err:?}")
    };
    assert_eq!((errors.len(), *omitted), (20, 5));
    assert!(err.to_string().ends_with("\n(5 more errors not shown)"));
}

#[test]
fn yaml_syntax_errors_have_positions() {
    check(
        "version: 1\nsteps:\n  - name: a\n    run: 'make\n",
        "t.yml:4:10: invalid YAML: while scanning a quoted scalar, found unexpected end of stream",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n    run: make\n   env: {}\n",
        "t.yml:5:4: invalid YAML: while parsing a block collection, did not find expected '-' \
         indicator",
    );
    check(
        "version: 1\nsteps: [a, {\n",
        "t.yml:3:1: invalid YAML: while parsing a node, did not find expected node content",
    );
    check(
        "version: 1\nversion: 1\nsteps:\n  - name: a\n    run: make\n",
        "t.yml:2:1: duplicate key `version` at the top level (first defined at line 1)",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n    run: !shell make\n",
        "t.yml:4:10: YAML tags are not used in pipeline files (found `!shell`); remove it",
    );
    check(
        "version: 1\nsteps:\n  - name: a\n    run: make\n---\nversion: 1\n",
        "t.yml:5:1: a second YAML document starts here; a pipeline file holds exactly one",
    );
    check(
        "version: 1\n? [a]\n: b\nsteps:\n  - name: a\n    run: make\n",
        "t.yml:2:3: a key must be a plain name at the top level, found a list",
    );
    let err = parse("<inline>", "version: 1\nsteps: [a, {\n").expect_err("invalid");
    assert!(matches!(err, PipelineError::Syntax { .. }));
    assert_eq!((err.file(), err.line(), err.column()), ("<inline>", 3, 1));
}

#[test]
fn limits_stop_hostile_input() {
    // An alias bomb: each level doubles the size; fully expanded it would be 2^30 nodes.
    let mut bomb = String::from("version: 1\na0: &a0 [x, x]\n");
    for i in 1..30 {
        bomb.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
    }
    let err = parse("t.yml", &bomb).expect_err("too large");
    assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    assert!(err.message().contains("too many YAML nodes"), "{err}");

    let deep = format!("version: 1\nx: {}{}\n", "[".repeat(200), "]".repeat(200));
    let err = parse("t.yml", &deep).expect_err("too deep");
    assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    assert_eq!((err.line(), err.column()), (2, 67));

    // Deeper than the scanner's own limit (255), which it meets while looking ahead.
    let deeper = format!("version: 1\nx: {}\n", "{".repeat(2000));
    let err = parse("t.yml", &deeper).expect_err("too deep");
    assert!(matches!(err, PipelineError::TooLarge { .. }), "{err}");
    assert!(err.message().contains("too deeply"), "{err}");

    let mut nested = String::from("version: 1\n");
    for depth in 0..100 {
        nested.push_str(&format!("{}k{depth}:\n", " ".repeat(depth)));
    }
    let err = parse("t.yml", &nested).expect_err("too deep");
    assert!(err.message().contains("too deeply"), "{err}");

    let huge = format!("version: 1\n# {}\n", "x".repeat(MAX_PIPELINE_BYTES));
    check(
        &huge,
        &format!(
            "t.yml:1:1: the pipeline file is too large ({} bytes; the limit is 1048576 bytes, \
             1 MiB)",
            huge.len()
        ),
    );

    let recursive = "version: 1\nx: &a [*a]\n";
    check(
        recursive,
        "t.yml:2:8: an alias may not refer to a node that contains it",
    );
}

/// A fixed-seed xorshift generator, so the mangling test needs no extra dependency and is
/// the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `parse` must answer, never panic, on any text: every prefix of a valid file, and thousands
/// of variants with bytes flipped, inserted or deleted.
#[test]
fn mangled_input_never_panics() {
    let mut parsed = 0usize;
    let mut try_parse = |text: &str| {
        let outcome = parse("t.yml", text);
        if let Err(e) = &outcome {
            // Every error has a position inside (or just past) the text.
            assert!(e.line() >= 1 && e.column() >= 1, "{e:?}");
            assert!(e.line() <= text.lines().count() + 1, "{text:?}: {e}");
        }
        parsed += 1;
    };
    for (i, _) in EXAMPLE.char_indices() {
        try_parse(&EXAMPLE[..i]);
    }
    let special = b"{}[]:,-?&*!|>'\"#%@`\n\t \\0";
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..4000 {
        let mut bytes = EXAMPLE.as_bytes().to_vec();
        for _ in 0..=rng.below(4) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] ^= 1 << rng.below(8),
                1 => bytes[at] = special[rng.below(special.len())],
                2 => bytes.insert(at, special[rng.below(special.len())]),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        try_parse(&String::from_utf8_lossy(&bytes));
    }
    assert_eq!(parsed, EXAMPLE.chars().count() + 4000);
}

#[test]
fn step_resources() {
    let step = |resources: &str| with_step(&format!("    resources: {resources}\n"));
    let json = |resources: &str| {
        format!(
            r#"{{"version":1,"image":null,"variables":{{}},"secrets":[],"timeout":null,"services":[],"caches":[],"steps":[{{"name":"build","image":null,"run":"make","env":{{}},"timeout":null,"when":"on_success","resources":{resources}}}]}}"#
        )
    };
    check(
        &step("{ cpu: 500m, memory: 512Mi }"),
        &json(r#"{"cpu_millis":500,"memory_bytes":536870912}"#),
    );
    check(
        &step("{ cpu: 2 }"),
        &json(r#"{"cpu_millis":2000,"memory_bytes":null}"#),
    );
    check(
        &step("{ cpu: 1.5, memory: 100M }"),
        &json(r#"{"cpu_millis":1500,"memory_bytes":100000000}"#),
    );
    check(
        &step("{ memory: '1Gi' }"),
        &json(r#"{"cpu_millis":null,"memory_bytes":1073741824}"#),
    );
    // Empty means none, as for the other mapping keys.
    check(&step("{}"), &json("null"));
    check(&with_step("    resources:\n"), &json("null"));
    let p = parse(
        "t.yml",
        &with_step("    resources:\n      cpu: 0.25\n      memory: 1.5Gi\n"),
    )
    .expect("valid");
    assert_eq!(
        p.steps[0].resources,
        Some(Resources {
            cpu_millis: Some(250),
            memory_bytes: Some(3 << 29),
        })
    );
}

#[test]
fn step_resource_errors() {
    let step = |resources: &str| with_step(&format!("    resources: {resources}\n"));
    check(
        &step("{ cpu: 500m, mem: 1Gi }"),
        "t.yml:5:29: unknown key `mem` in `resources` of step `build`; expected one of `cpu`, \
         `memory`",
    );
    check(
        &step("{ cpus: 2 }"),
        "t.yml:5:18: unknown key `cpus` in `resources` of step `build`; expected one of `cpu`, \
         `memory` (did you mean `cpu`?)",
    );
    check(
        &step("{ memroy: 1Gi }"),
        "t.yml:5:18: unknown key `memroy` in `resources` of step `build`; expected one of \
         `cpu`, `memory` (did you mean `memory`?)",
    );
    check(
        &step("2"),
        "t.yml:5:16: `resources` of step `build` must be a mapping, like \
         `{ cpu: 500m, memory: 512Mi }`, found the number `2`",
    );
    check(
        &step("{ memory: 512MB }"),
        "t.yml:5:26: `memory` in `resources` of step `build`: invalid memory quantity `512MB`: \
         unknown unit `MB`; expected a number of bytes with an optional unit k, M, G, T, P, E \
         (powers of 1000) or Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), like `512Mi` or `1Gi` \
         (did you mean `512M` or `512Mi`?)",
    );
    check(
        &step("{ memory: 512 }"),
        "t.yml:5:26: `memory` in `resources` of step `build`: invalid memory quantity `512`: it \
         is less than the minimum of 1Mi (a number without a unit is bytes: did you mean \
         `512Mi`?)",
    );
    check(
        &step("{ cpu: 500M }"),
        "t.yml:5:23: `cpu` in `resources` of step `build`: invalid CPU quantity `500M`: expected \
         a number of CPUs like `2` or `1.5`, or millicores like `500m` (did you mean `500m`?)",
    );
    check(
        &step("{ cpu: 0 }"),
        "t.yml:5:23: `cpu` in `resources` of step `build`: invalid CPU quantity `0`: it must be \
         more than zero",
    );
    check(
        &step("{ cpu: [1] }"),
        "t.yml:5:23: `cpu` in `resources` of step `build` must be a quantity, like `2` or \
         `500m`, found a list",
    );
    check(
        &step("{ cpu: }"),
        "t.yml:5:18: `cpu` in `resources` of step `build` is empty",
    );
    // Both values are checked, and both problems reported.
    let err = parse("t.yml", &step("{ cpu: -1, memory: 1XB }")).expect_err("invalid");
    assert_eq!(err.errors().len(), 2, "{err}");
}

#[test]
fn service_readiness() {
    let svc = |ready: &str| {
        format!(
            "version: 1\nservices:\n  - name: db\n    image: postgres:16\n    ready: {ready}\n\
             steps:\n  - name: a\n    run: make\n"
        )
    };
    let json = |ready: &str| {
        format!(
            r#"{{"version":1,"image":null,"variables":{{}},"secrets":[],"timeout":null,"services":[{{"name":"db","image":"postgres:16","env":{{}},"command":null,"ready":{ready}}}],"caches":[],"steps":[{{"name":"a","image":null,"run":"make","env":{{}},"timeout":null,"when":"on_success","resources":null}}]}}"#
        )
    };
    check(
        &svc("{ command: \"pg_isready -U postgres\", timeout: 60s }"),
        &json(r#"{"command":"pg_isready -U postgres","timeout":"1m","interval":"1s"}"#),
    );
    check(
        &svc("{ tcp: 5432, timeout: 30s, interval: 2s }"),
        &json(r#"{"tcp":5432,"timeout":"30s","interval":"2s"}"#),
    );
    // The defaults: a minute, trying every second.
    check(
        &svc("{ tcp: '6379' }"),
        &json(r#"{"tcp":6379,"timeout":"1m","interval":"1s"}"#),
    );
    check(&svc("~"), &json("null"));
    let p = parse("t.yml", &svc("{ command: 'redis-cli ping', interval: 5s }")).expect("valid");
    assert_eq!(
        p.services[0].ready,
        Some(Readiness {
            check: ReadyCheck::Command("redis-cli ping".into()),
            timeout: DEFAULT_READY_TIMEOUT,
            interval: Duration::from_secs(5),
        })
    );
}

#[test]
fn service_readiness_errors() {
    let svc = |ready: &str| {
        with_step(&format!(
            "services:\n  - name: db\n    image: postgres:16\n    ready: {ready}\n"
        ))
    };
    check(
        &svc("{ timeout: 30s }"),
        "t.yml:8:12: `ready` of service `db` needs `command` (run in the service's container) \
         or `tcp` (a port of the service to connect to)",
    );
    check(
        &svc("{ command: pg_isready, tcp: 5432 }"),
        "t.yml:8:40: `ready` of service `db` has both `command` and `tcp`; give one of them",
    );
    check(
        &svc("{ tcp: 0 }"),
        "t.yml:8:19: `tcp` in `ready` of service `db` must be a port number from 1 to 65535, \
         found `0` (the port of the service itself: its host is the service)",
    );
    check(
        &svc("{ tcp: 'db:5432' }"),
        "t.yml:8:19: `tcp` in `ready` of service `db` must be a port number from 1 to 65535, \
         found `db:5432` (the port of the service itself: its host is the service)",
    );
    check(
        &svc("{ tcp: 70000 }"),
        "t.yml:8:19: `tcp` in `ready` of service `db` must be a port number from 1 to 65535, \
         found `70000` (the port of the service itself: its host is the service)",
    );
    check(
        &svc("{ command: '  ' }"),
        "t.yml:8:23: `command` in `ready` of service `db` is empty",
    );
    check(
        &svc("{ command: [pg_isready] }"),
        "t.yml:8:23: `command` in `ready` of service `db` must be a string, found a list",
    );
    check(
        &svc("{ tcp: 5432, timeout: 30 }"),
        "t.yml:8:34: `timeout` in `ready` of service `db`: invalid duration `30`: it has no unit; \
         expected a whole number with a unit (h, m or s), like `90s`, `10m`, `1h` or `1h30m`",
    );
    check(
        &svc("{ tcp: 5432, timeout: 10s, interval: 1m }"),
        "t.yml:8:49: `interval` in `ready` of service `db` (1m) is longer than its `timeout` \
         (10s)",
    );
    check(
        &svc("{ tcp: 5432, timout: 10s }"),
        "t.yml:8:25: unknown key `timout` in `ready` of service `db`; expected one of \
         `command`, `tcp`, `timeout`, `interval` (did you mean `timeout`?)",
    );
    check(
        &svc("{ port: 5432 }"),
        "t.yml:8:12: `ready` of service `db` needs `command` (run in the service's container) \
         or `tcp` (a port of the service to connect to)\n\
         t.yml:8:14: unknown key `port` in `ready` of service `db`; expected one of `command`, \
         `tcp`, `timeout`, `interval`",
    );
    check(
        &svc("pg_isready"),
        "t.yml:8:12: `ready` of service `db` must be a mapping, like `{ tcp: 5432 }` or \
         `{ command: \"pg_isready -U postgres\" }`, found the string `pg_isready`",
    );
}

#[test]
fn when_decides_whether_a_step_runs() {
    assert!(When::OnSuccess.runs(false) && !When::OnSuccess.runs(true));
    assert!(!When::OnFailure.runs(false) && When::OnFailure.runs(true));
    assert!(When::Always.runs(false) && When::Always.runs(true));
    assert_eq!(When::default().as_str(), "on_success");
}
