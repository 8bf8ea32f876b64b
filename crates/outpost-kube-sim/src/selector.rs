//! Label selectors (`=`, `==`, `!=`, `in`, `notin`, exists, `!`not exists) and field selectors
//! (`=`, `==`, `!=` on the fields each resource supports), parsed from list and watch queries.

use serde_json::Value;

use crate::error::ApiError;
use crate::meta;
use crate::store::Resource;

#[derive(Debug, Clone, PartialEq)]
enum LabelReq {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`; empty matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct LabelSelector(Vec<LabelReq>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            reqs.push(parse_req(part).map_err(|why| {
                ApiError::bad_request(format!("unable to parse requirement: {why}"))
            })?);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            LabelReq::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelReq::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelReq::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::NotIn(k, vs) => !get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas that are not inside parentheses (`a in (x,y),b`).
fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn check_key(k: &str) -> Result<String, String> {
    meta::check_qualified_name(k).map_err(|why| format!("key {k:?}: {why}"))?;
    Ok(k.to_owned())
}

fn check_value(v: &str) -> Result<String, String> {
    if !meta::is_label_value(v) {
        return Err(format!("invalid label value: {v:?}"));
    }
    Ok(v.to_owned())
}

fn parse_req(part: &str) -> Result<LabelReq, String> {
    if let Some(k) = part.strip_prefix('!') {
        return Ok(LabelReq::NotExists(check_key(k.trim())?));
    }
    // Set-based: `key in (a,b)` / `key notin (a,b)`.
    if let Some(open) = part.find('(') {
        let head = part[..open].trim();
        let close = part
            .rfind(')')
            .ok_or_else(|| format!("{part:?}: missing ')'"))?;
        if !part[close + 1..].trim().is_empty() {
            return Err(format!("{part:?}: text after ')'"));
        }
        let values = part[open + 1..close]
            .split(',')
            .map(|v| check_value(v.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut words = head.split_whitespace();
        let key = words.next().ok_or_else(|| format!("{part:?}: no key"))?;
        let op = words
            .next()
            .ok_or_else(|| format!("{part:?}: no operator"))?;
        if words.next().is_some() {
            return Err(format!("{part:?}: unexpected word"));
        }
        let key = check_key(key)?;
        return match op {
            "in" => Ok(LabelReq::In(key, values)),
            "notin" => Ok(LabelReq::NotIn(key, values)),
            other => Err(format!("{other:?} is not a valid set operator")),
        };
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(LabelReq::NotEquals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(LabelReq::Equals(
            check_key(k.trim())?,
            check_value(v.trim())?,
        ));
    }
    Ok(LabelReq::Exists(check_key(part)?))
}

#[derive(Debug, Clone)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

/// A parsed `fieldSelector`; empty matches everything.
#[derive(Debug, Clone, Default)]
pub(crate) struct FieldSelector(Vec<FieldReq>);

impl FieldSelector {
    pub fn parse(s: &str, resource: Resource) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field_path(resource, field).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push(FieldReq {
                field: field.to_owned(),
                value: value.trim().to_owned(),
                equal,
            });
        }
        Ok(FieldSelector(reqs))
    }

    pub fn matches(&self, resource: Resource, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let actual = field_value(resource, &r.field, obj);
            (actual == r.value) == r.equal
        })
    }
}

/// The JSON pointer of a selectable field of `resource`, as the apiserver's field-label
/// conversion functions allow them.
fn field_path(resource: Resource, field: &str) -> Option<&'static str> {
    let common = match field {
        "metadata.name" => Some("/metadata/name"),
        "metadata.namespace" => Some("/metadata/namespace"),
        _ => None,
    };
    if common.is_some() {
        return common;
    }
    match resource {
        Resource::Pods => match field {
            "spec.nodeName" => Some("/spec/nodeName"),
            "spec.restartPolicy" => Some("/spec/restartPolicy"),
            "spec.schedulerName" => Some("/spec/schedulerName"),
            "spec.serviceAccountName" => Some("/spec/serviceAccountName"),
            "spec.hostNetwork" => Some("/spec/hostNetwork"),
            "status.phase" => Some("/status/phase"),
            "status.podIP" => Some("/status/podIP"),
            "status.nominatedNodeName" => Some("/status/nominatedNodeName"),
            _ => None,
        },
        Resource::Events => match field {
            "involvedObject.kind" => Some("/involvedObject/kind"),
            "involvedObject.namespace" => Some("/involvedObject/namespace"),
            "involvedObject.name" => Some("/involvedObject/name"),
            "involvedObject.uid" => Some("/involvedObject/uid"),
            "involvedObject.apiVersion" => Some("/involvedObject/apiVersion"),
            "involvedObject.resourceVersion" => Some("/involvedObject/resourceVersion"),
            "involvedObject.fieldPath" => Some("/involvedObject/fieldPath"),
            "reason" => Some("/reason"),
            "reportingComponent" => Some("/reportingComponent"),
            "source" => Some("/source/component"),
            "type" => Some("/type"),
            _ => None,
        },
        Resource::Secrets => match field {
            "type" => Some("/type"),
            _ => None,
        },
        Resource::PersistentVolumeClaims => None,
    }
}

fn field_value(resource: Resource, field: &str, obj: &Value) -> String {
    let Some(path) = field_path(resource, field) else {
        return String::new();
    };
    match obj.pointer(path) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Null) | None => {
            // spec.hostNetwork unset reads as false, as in the apiserver's field set.
            if field == "spec.hostNetwork" {
                "false".into()
            } else {
                String::new()
            }
        }
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(selector: &str, labels: Value, expected: bool) {
        let obj = json!({"metadata": {"labels": labels}});
        let sel = LabelSelector::parse(selector).expect("parses");
        assert_eq!(sel.matches(&obj), expected, "{selector} on {obj}");
    }

    #[test]
    fn label_selectors() {
        let l = json!({"app": "web", "tier": "front"});
        check("", l.clone(), true);
        check("app=web", l.clone(), true);
        check("app==web", l.clone(), true);
        check("app=db", l.clone(), false);
        check("app!=db", l.clone(), true);
        check("missing!=x", l.clone(), true);
        check("app in (db, web)", l.clone(), true);
        check("app notin (db,web)", l.clone(), false);
        check("missing notin (db)", l.clone(), true);
        check("tier", l.clone(), true);
        check("!tier", l.clone(), false);
        check("!missing,app=web,tier in (front)", l.clone(), true);
        assert!(LabelSelector::parse("a b").is_err());
        assert!(LabelSelector::parse("a in (x").is_err());
        assert!(LabelSelector::parse("a=b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let ev = json!({"involvedObject": {"name": "p", "uid": "u"}, "type": "Warning"});
        let sel = FieldSelector::parse("involvedObject.name=p,type!=Normal", Resource::Events)
            .expect("parses");
        assert!(sel.matches(Resource::Events, &ev));
        let sel = FieldSelector::parse("involvedObject.uid==v", Resource::Events).expect("parses");
        assert!(!sel.matches(Resource::Events, &ev));
        assert!(FieldSelector::parse("spec.foo=x", Resource::Pods).is_err());
        let pod = json!({"status": {"phase": "Running"}, "metadata": {"name": "a"}});
        let sel = FieldSelector::parse("status.phase!=Succeeded,metadata.name=a", Resource::Pods)
            .expect("parses");
        assert!(sel.matches(Resource::Pods, &pod));
    }
}
