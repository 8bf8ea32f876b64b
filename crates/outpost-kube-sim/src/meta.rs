//! Small pieces of Kubernetes object metadata: timestamps as the API writes them, uids, generated
//! names, and the name syntaxes (DNS-1123 label and subdomain, qualified label keys).

use jiff::Timestamp;
use rand::Rng;

/// `metav1.Time`: RFC 3339 with second precision, UTC.
pub(crate) fn time(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Now as `metav1.Time`.
pub(crate) fn now() -> String {
    time(Timestamp::now())
}

/// Go's `time.RFC3339Nano` in UTC: nanoseconds with trailing zeros trimmed, no fraction when it
/// is zero (the CRI log format and `timestamps=true` use it).
pub(crate) fn rfc3339_nano(ts: Timestamp) -> String {
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = ts.subsec_nanosecond();
    if nanos == 0 {
        return format!("{base}Z");
    }
    let frac = format!("{nanos:09}");
    format!("{base}.{}Z", frac.trim_end_matches('0'))
}

/// Parses an RFC 3339 time as the API accepts it (fraction and offset allowed).
pub(crate) fn parse_time(s: &str) -> Option<Timestamp> {
    s.parse::<Timestamp>().ok()
}

/// A random UUID (version 4), as the apiserver assigns to `metadata.uid`.
pub(crate) fn uid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The apiserver's `generateName` suffix: 5 characters from an alphabet without vowels (so no
/// words) and without look-alikes.
pub(crate) fn name_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub(crate) const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
pub(crate) const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub(crate) fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label_any_len)
}

fn is_dns1123_label_any_len(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS subdomain, name at most 63 of
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`. Returns why not.
pub(crate) fn check_qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            return Err("prefix part must be non-empty".into());
        }
        if !is_dns1123_subdomain(p) {
            return Err(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
        }
    }
    if name.is_empty() {
        return Err("name part must be non-empty".into());
    }
    if name.len() > 63 {
        return Err("name part must be no more than 63 characters".into());
    }
    if !is_label_value(name) {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".into());
    }
    Ok(())
}

/// A label value: empty, or at most 63 of `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
pub(crate) fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return true;
    }
    b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_trims_like_go() {
        let ts: Timestamp = "2024-01-02T03:04:05.120000000Z".parse().expect("valid");
        assert_eq!(rfc3339_nano(ts), "2024-01-02T03:04:05.12Z");
        let ts: Timestamp = "2024-01-02T03:04:05Z".parse().expect("valid");
        assert_eq!(rfc3339_nano(ts), "2024-01-02T03:04:05Z");
        let ts: Timestamp = "2024-01-02T03:04:05.000000001Z".parse().expect("valid");
        assert_eq!(rfc3339_nano(ts), "2024-01-02T03:04:05.000000001Z");
        assert_eq!(time(ts), "2024-01-02T03:04:05Z");
    }

    #[test]
    fn names() {
        for (s, label, sub) in [
            ("a", true, true),
            ("a-b", true, true),
            ("-a", false, false),
            ("A", false, false),
            ("a.b", false, true),
            ("a..b", false, false),
            ("", false, false),
        ] {
            assert_eq!(is_dns1123_label(s), label, "{s}");
            assert_eq!(is_dns1123_subdomain(s), sub, "{s}");
        }
        assert!(check_qualified_name("outpost.dev/job-id").is_ok());
        assert!(check_qualified_name("job_id").is_ok());
        assert!(check_qualified_name("/x").is_err());
        assert!(check_qualified_name("a/-x").is_err());
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
        let u = uid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
