//! List and watch: selectors, `resourceVersion` semantics (unset and "0" start from the current
//! state with synthetic ADDED events; a given version replays the history after it, or answers
//! an ERROR event with `410 Expired` when it is too old), pagination, bookmarks,
//! `sendInitialEvents`, and `timeoutSeconds`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{flag, number, stream_body};
use crate::cluster::Cluster;
use crate::error::ApiError;
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::{ChangeType, Resource};

pub(crate) struct ListParams {
    labels: LabelSelector,
    fields: FieldSelector,
    resource_version: Option<String>,
    resource_version_match: Option<String>,
    limit: Option<usize>,
    continue_: Option<String>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial: bool,
    pub watch: bool,
}

impl ListParams {
    pub fn parse(q: &HashMap<String, String>, r: Resource) -> Result<Self, ApiError> {
        let non_empty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        Ok(ListParams {
            labels: LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))?,
            fields: FieldSelector::parse(
                q.get("fieldSelector").map(String::as_str).unwrap_or(""),
                r,
            )?,
            resource_version: non_empty("resourceVersion"),
            resource_version_match: non_empty("resourceVersionMatch"),
            limit: number(q, "limit")?
                .filter(|l| *l > 0)
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            continue_: non_empty("continue"),
            timeout: number(q, "timeoutSeconds")?
                .filter(|t| *t > 0)
                .map(|t| Duration::from_secs(u64::try_from(t).unwrap_or(0))),
            bookmarks: flag(q, "allowWatchBookmarks")?,
            send_initial: flag(q, "sendInitialEvents")?,
            watch: flag(q, "watch")?,
        })
    }

    fn matches(&self, r: Resource, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(r, obj)
    }
}

fn parse_rv(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| {
        ApiError::bad_request(format!(
            "Invalid value: {s:?}: resourceVersion must be a decimal number"
        ))
    })
}

/// Items of a list omit their kind and apiVersion, as the apiserver encodes them.
fn list_item(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("kind");
        o.remove("apiVersion");
    }
    v
}

fn expired(rv: u64, oldest: u64) -> ApiError {
    ApiError::expired(format!("too old resource version: {rv} ({oldest})"))
}

pub(crate) fn list(
    c: &Cluster,
    r: Resource,
    ns: Option<&str>,
    p: &ListParams,
) -> Result<Value, ApiError> {
    let store = c.store();
    let current = store.rv();
    // Exact lists at an old version would need snapshots; the history only replays changes.
    if p.resource_version_match.as_deref() == Some("Exact")
        && let Some(rv) = &p.resource_version
    {
        let rv = parse_rv(rv)?;
        if rv != current {
            return Err(expired(rv, current));
        }
    }
    let start = match &p.continue_ {
        None => None,
        Some(token) => Some(decode_continue(token)?),
    };
    let mut items = Vec::new();
    let mut remaining = 0usize;
    let mut last_key = None;
    for (ons, name, v) in store.list(r, ns) {
        let key = format!("{ons}/{name}");
        if start
            .as_ref()
            .is_some_and(|(_, s)| key.as_str() <= s.as_str())
        {
            continue;
        }
        if !p.matches(r, v) {
            continue;
        }
        if p.limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(list_item(v));
        last_key = Some(key);
    }
    let rv = start.as_ref().map(|(rv, _)| *rv).unwrap_or(current);
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if remaining > 0
        && let Some(k) = last_key
    {
        let token = json!({"v": "meta.k8s.io/v1", "rv": rv, "start": format!("{k}\u{0}")});
        metadata["continue"] =
            json!(base64::engine::general_purpose::STANDARD.encode(token.to_string()));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": format!("{}List", r.kind()),
        "apiVersion": "v1",
        "metadata": metadata,
        "items": items,
    }))
}

fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let start = v["start"].as_str().ok_or_else(bad)?;
    Ok((rv, start.trim_end_matches('\u{0}').to_owned()))
}

fn event_line(type_: &str, object: &Value) -> Bytes {
    let mut line =
        serde_json::to_vec(&json!({"type": type_, "object": object})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark(r: Resource, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    event_line(
        "BOOKMARK",
        &json!({"kind": r.kind(), "apiVersion": "v1", "metadata": meta}),
    )
}

struct Watch {
    c: Arc<Cluster>,
    r: Resource,
    ns: Option<String>,
    p: ListParams,
    pos: u64,
    rx: tokio::sync::watch::Receiver<u64>,
    pending: VecDeque<Bytes>,
    deadline: Option<Instant>,
    next_bookmark: Instant,
    done: bool,
}

impl Watch {
    /// Queues the events after `pos` that this watch selects.
    fn drain(&mut self) {
        let changes = self.c.store().changes_since(self.pos);
        let changes = match changes {
            Ok(c) => c,
            Err(oldest) => {
                let e = expired(self.pos, oldest);
                self.pending.push_back(event_line("ERROR", &e.to_status()));
                self.done = true;
                return;
            }
        };
        for ch in changes {
            self.pos = ch.rv;
            if ch.resource != self.r || self.ns.as_ref().is_some_and(|n| *n != ch.namespace) {
                continue;
            }
            let now = self.p.matches(self.r, &ch.object);
            let before = ch
                .previous
                .as_ref()
                .is_some_and(|p| self.p.matches(self.r, p));
            let type_ = match ch.kind {
                ChangeType::Added if now => "ADDED",
                ChangeType::Modified if now && before => "MODIFIED",
                ChangeType::Modified if now => "ADDED",
                ChangeType::Modified if before => "DELETED",
                ChangeType::Deleted if before => "DELETED",
                _ => continue,
            };
            self.pending.push_back(event_line(type_, &ch.object));
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            self.rx.borrow_and_update();
            self.drain();
            if !self.pending.is_empty() || self.done {
                continue;
            }
            let deadline = self.deadline;
            tokio::select! {
                _ = self.c.cancel.cancelled() => self.done = true,
                changed = self.rx.changed() => if changed.is_err() { self.done = true },
                () = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => self.done = true,
                () = tokio::time::sleep_until(self.next_bookmark), if self.p.bookmarks => {
                    self.next_bookmark = Instant::now() + self.c.cfg.bookmark_interval;
                    self.pending.push_back(bookmark(self.r, self.pos, false));
                }
            }
        }
    }
}

pub(crate) fn watch(c: Arc<Cluster>, r: Resource, ns: Option<String>, p: ListParams) -> Response {
    let mut pending = VecDeque::new();
    let mut done = false;
    let (pos, rx) = {
        let store = c.store();
        let rx = store.subscribe();
        let current = store.rv();
        let from = match p.resource_version.as_deref() {
            None | Some("0") => None,
            Some(s) => match parse_rv(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    pending.push_back(event_line("ERROR", &e.to_status()));
                    done = true;
                    None
                }
            },
        };
        // Unset or "0" (or an explicit request for them): the current state first.
        let initial = from.is_none() || p.send_initial;
        if initial && !done {
            for (_, _, v) in store.list(r, ns.as_deref()) {
                if p.matches(r, v) {
                    pending.push_back(event_line("ADDED", v));
                }
            }
            if p.send_initial && p.bookmarks {
                pending.push_back(bookmark(r, current, true));
            }
        }
        let pos = if initial {
            current
        } else {
            from.unwrap_or(current)
        };
        (pos, rx)
    };
    let interval = c.cfg.bookmark_interval;
    let w = Watch {
        c,
        r,
        ns,
        deadline: p.timeout.map(|t| Instant::now() + t),
        p,
        pos,
        rx,
        pending,
        next_bookmark: Instant::now() + interval,
        done,
    };
    let s = futures_util::stream::unfold(w, |mut w| async move {
        let b = w.next().await?;
        Some((Ok::<_, std::io::Error>(b), w))
    });
    stream_body(s, "application/json")
}
