//! Masking that holds (DESIGN.md §1, §6.6), end to end: a step prints three secrets (one from
//! `OUTPOST_SECRET_*`, one with characters that every encoding changes, one multi-line, both
//! from `--secrets-dir`) raw, as base64 at all three alignments, URL-encoded, JSON-escaped, line
//! by line and one byte per write. No form of any secret reaches anything the hub stored (its
//! API and, with a plain file read, its database files), nor the runner's state directory (read
//! while the job is still running, before its spool is removed), nor the runner's own log.

use std::collections::HashMap;

use outpost_e2e::{
    RUNNER_WAIT, files_under, find, inline_job, runner_for, scratch, text, touch, wait_ended,
    wait_log,
};
use outpost_protocol::JobState;
use outpost_testkit::{TestHub, random_secret, unique};

/// Prints every form of each secret, then waits for `$FLAGS/finish` so that the test can read
/// the runner's state directory while the job (and its spool) is still there.
const PIPELINE: &str = r#"version: 1
secrets: [PLAIN, SPECIAL, MULTI]
steps:
  - name: leak
    run: |
      urlencode() {
        s="$1"
        while [ -n "$s" ]; do
          rest="${s#?}"; c="${s%"$rest"}"; s="$rest"
          case "$c" in
            [A-Za-z0-9._~-]) printf '%s' "$c" ;;
            *) printf '%%%02X' "'$c" ;;
          esac
        done
      }
      jsonescape() {
        printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | awk 'NR > 1 { printf "\\n" } { printf "%s", $0 }'
      }
      bytewise() {
        s="$1"
        while [ -n "$s" ]; do
          rest="${s#?}"; c="${s%"$rest"}"; s="$rest"
          env printf '%s' "$c"
        done
      }
      # printf, not echo: dash's echo turns `\\` into `\` and would mangle the forms.
      printf '%s\n' "$MARKER"
      for name in PLAIN SPECIAL MULTI; do
        eval "v=\$$name"
        printf 'raw %s: %s\n' "$name" "$v"
        printf 'base64 %s: %s\n' "$name" "$(printf '%s' "$v" | base64)"
        printf 'base64+1 %s: %s\n' "$name" "$(printf 'x%s' "$v" | base64)"
        printf 'base64+2 %s: %s\n' "$name" "$(printf 'xy%s' "$v" | base64)"
        printf 'url %s: %s\n' "$name" "$(urlencode "$v")"
        printf 'json %s: {"v": "%s"}\n' "$name" "$(jsonescape "$v")"
        printf 'bytes %s: ' "$name"; bytewise "$v"; printf '\n'
        printf '%s\n' "$v" | while IFS= read -r line; do printf 'line %s: %s\n' "$name" "$line"; done
      done
      printf '%s\n' "$MARKER"
      echo "forms done"
      while [ ! -f "$FLAGS/finish" ] && [ -d "$FLAGS" ]; do sleep 0.05; done
      printf '%s\n' "$MARKER"
"#;

/// Standard base64 with padding (an implementation independent of the runner's).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The base64 characters that depend on the secret's bytes alone when it sits at offset `a`
/// (mod 3) of an encoded blob: those are the same whatever the bytes around it.
fn base64_core(secret: &[u8], a: usize) -> String {
    let mut shifted = vec![0u8; a];
    shifted.extend_from_slice(secret);
    let encoded = base64(&shifted);
    let start = (8 * a).div_ceil(6);
    let end = 8 * (a + secret.len()) / 6;
    encoded[start..end].to_owned()
}

/// RFC 3986 percent-encoding, uppercase hex.
fn url_encode(secret: &str) -> String {
    secret
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every form of `secret` the step prints (and a few more), none of which may be found.
fn forms(secret: &str) -> Vec<String> {
    let mut forms = vec![secret.to_owned()];
    for a in 0..3 {
        forms.push(base64_core(secret.as_bytes(), a));
    }
    forms.push(base64(secret.as_bytes()));
    forms.push(url_encode(secret));
    let json = serde_json::to_string(secret).expect("a string serializes");
    forms.push(json.trim_matches('"').to_owned());
    if secret.contains('\n') {
        forms.extend(secret.lines().map(str::to_owned));
    }
    forms
}

/// How long a piece of a form is enough to call a leak: every window this long of every form is
/// looked for, so a form split across SQLite pages or cut by a mask is still caught.
const WINDOW: usize = 8;

/// Every `WINDOW`-byte piece of every form of every secret, with the secret's name.
struct Needles(HashMap<Vec<u8>, String>);

impl Needles {
    fn new(secrets: &[(&str, &str)]) -> Self {
        let mut pieces = HashMap::new();
        for (name, secret) in secrets {
            for form in forms(secret) {
                assert!(form.len() >= WINDOW, "form {form:?} of {name} is too short");
                for window in form.as_bytes().windows(WINDOW) {
                    pieces.insert(window.to_vec(), (*name).to_owned());
                }
            }
        }
        Self(pieces)
    }

    /// Where a piece of a form occurs in `bytes` (the first few places), described.
    fn leaks(&self, what: &str, bytes: &[u8]) -> Vec<String> {
        bytes
            .windows(WINDOW)
            .enumerate()
            .filter_map(|(at, window)| {
                let name = self.0.get(window)?;
                let from = at.saturating_sub(40);
                let to = (at + WINDOW + 40).min(bytes.len());
                Some(format!(
                    "{what}: a piece {:?} of a form of secret {name} at byte {at}: …{:?}…",
                    String::from_utf8_lossy(window),
                    String::from_utf8_lossy(&bytes[from..to])
                ))
            })
            .take(3)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_form_of_a_secret_reaches_the_hub_or_the_runners_disk() {
    let hub = TestHub::start().await;
    let org = hub.create_org(&unique("org")).await;
    let r = || random_secret()[..12].to_owned();
    let plain = random_secret();
    // Every encoding changes these: quote, backslash, space, slash, plus, percent, ampersand.
    let special = format!("{}\"\\ /+%&{}", r(), r());
    let multi = format!("{}\n{}\n{}", r(), r(), r());
    let secrets = [
        ("PLAIN", plain.as_str()),
        ("SPECIAL", special.as_str()),
        ("MULTI", multi.as_str()),
    ];
    let needles = Needles::new(&secrets);
    let dirs = scratch();
    let secrets_dir = dirs.path().join("secrets");
    let flags = dirs.path().join("flags");
    std::fs::create_dir(&secrets_dir).expect("mkdir");
    std::fs::create_dir(&flags).expect("mkdir");
    std::fs::write(secrets_dir.join("SPECIAL"), &special).expect("write");
    std::fs::write(secrets_dir.join("MULTI"), format!("{multi}\n")).expect("write");
    let runner = runner_for(&hub, &org, hub.url(), |b| {
        b.env("OUTPOST_SECRET_PLAIN", &plain)
            .secrets_dir(&secrets_dir)
    })
    .await;

    let marker = format!("marker-{}", random_secret());
    let flags_var = flags.display().to_string();
    let job_id = hub
        .submit(
            &org,
            &inline_job(PIPELINE, &[("MARKER", &marker), ("FLAGS", &flags_var)]),
        )
        .await;
    let log = wait_log(
        &hub,
        &org,
        &job_id,
        "shows every form printed",
        RUNNER_WAIT,
        |log| find(log, b"forms done\n").is_some(),
    )
    .await;
    // The job is still running: its spool, journal and outbox are on disk now.
    let state_files = files_under(runner.state_dir());
    assert!(
        state_files
            .iter()
            .any(|(p, b)| p.ends_with("log.spool") && find(b, marker.as_bytes()).is_some()),
        "the job's spool is not in the state directory: {:?}",
        state_files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let mut found = Vec::new();
    for (path, bytes) in &state_files {
        found.extend(needles.leaks(&path.display().to_string(), bytes));
    }
    found.extend(needles.leaks("the log while running", &log));

    touch(&flags.join("finish"));
    let job = wait_ended(&hub, &org, &job_id).await;
    assert_eq!(job.state, JobState::Success, "{job:#?}");
    let log = hub.log(&org, &job_id).await;
    found.extend(needles.leaks("the log read through the API", &log));
    let job_json = serde_json::to_vec(&job).expect("serialize");
    found.extend(needles.leaks("the job read through the API", &job_json));
    for (path, bytes) in files_under(hub.dir()) {
        found.extend(needles.leaks(&path.display().to_string(), &bytes));
    }
    for (path, bytes) in files_under(runner.state_dir()) {
        found.extend(needles.leaks(&path.display().to_string(), &bytes));
    }
    found.extend(needles.leaks("the runner's stderr", runner.stderr().as_bytes()));
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));

    // The scans could have found them: the log's own bytes are in the hub's files as stored,
    // and every form was printed (each masked) around the known text.
    let hub_files = files_under(hub.dir());
    assert!(
        hub_files
            .iter()
            .any(|(p, b)| p.to_string_lossy().contains("sqlite")
                && find(b, marker.as_bytes()).is_some()),
        "the log's bytes are not readable in the hub's database files: {:?}",
        hub_files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    let log_text = text(&log);
    for name in ["PLAIN", "SPECIAL", "MULTI"] {
        for form in [
            "raw", "base64", "base64+1", "base64+2", "url", "json", "bytes",
        ] {
            let prefix = format!("{form} {name}: ");
            let line = log_text
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("no line {prefix:?} in the log:\n{log_text}"));
            assert!(line.contains("[MASKED]"), "{line:?} in\n{log_text}");
        }
    }
    let masked_lines = log_text
        .lines()
        .filter(|l| l.starts_with("line MULTI: "))
        .collect::<Vec<_>>();
    assert_eq!(masked_lines, ["line MULTI: [MASKED]"; 3], "{log_text}");
    assert_eq!(log_text.matches(&marker).count(), 3, "{log_text}");
}
