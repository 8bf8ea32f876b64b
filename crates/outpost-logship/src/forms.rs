//! The forms a secret value can take in a build log (DESIGN.md §6.6): the raw bytes, each line of
//! a multi-line value, its base64 encodings in every alignment, URL-encoded and JSON-escaped.
//!
//! Every form returned here is masked wherever it appears. Forms shorter than
//! [`MIN_SECRET_LEN`] bytes are dropped: such a fragment carries at most a few bits of the secret
//! (a 3-character base64 fragment is 18 bits; a 2-byte line of a key is nothing an attacker can
//! use), while masking it would also hit unrelated output all the time (a 3-letter fragment of a
//! token would blank every word that contains it) and make logs unreadable.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

/// Shortest secret value, and shortest derived form, that is masked. Shorter secret values are
/// refused: masking a 3-byte string would mangle ordinary output, and not masking it would leak.
pub const MIN_SECRET_LEN: usize = 4;

/// Every form of `value` to mask, each at least [`MIN_SECRET_LEN`] bytes, deduplicated.
pub(crate) fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let multi_line = value.contains(&b'\n');

    // The whole value, and for multi-line values both line-ending conventions: a key written
    // with `\n` comes back with `\r\n` through a TTY or a Windows tool, and the other way round.
    let mut wholes = vec![value.to_vec()];
    if multi_line {
        let lf = crlf_to_lf(value);
        let crlf = lf_to_crlf(&lf);
        for v in [lf, crlf] {
            if !wholes.contains(&v) {
                wholes.push(v);
            }
        }
    }
    for whole in &wholes {
        out.push(whole.clone());
        base64_forms(whole, &mut out);
        url_forms(whole, &mut out);
        json_forms(whole, &mut out);
    }

    // Each line on its own, so a key printed line by line (with a prefix such as a timestamp
    // or `+ echo`) is still covered. Lines are trimmed of `\r`, and also of surrounding
    // blanks (indented YAML blocks are often printed without their indentation).
    if multi_line {
        for line in value.split(|b| *b == b'\n') {
            let no_cr = trim_matching(line, |b| b == b'\r');
            let bare = trim_matching(no_cr, |b| matches!(b, b'\r' | b' ' | b'\t'));
            for l in [no_cr, bare] {
                out.push(l.to_vec());
                url_forms(l, &mut out);
                json_forms(l, &mut out);
            }
        }
    }

    out.retain(|f| f.len() >= MIN_SECRET_LEN);
    out.sort();
    out.dedup();
    out
}

fn trim_matching(mut s: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !strip(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !strip(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn crlf_to_lf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\r' && s.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn lf_to_crlf(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + s.len() / 16);
    for &b in s {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Base64 forms, standard and URL-safe alphabets.
///
/// When the secret sits at byte offset `a` (mod 3) inside a larger encoded blob, the characters
/// of the blob's encoding that depend on the secret's bytes alone are those whose 6 bits lie
/// entirely inside the secret's bit range `[8a, 8(a+n))`: characters `ceil(8a/6)` up to
/// `floor(8(a+n)/6)`. Encoding `a` zero bytes followed by the secret gives exactly those
/// characters at those positions, whatever the real neighbouring bytes are. The characters at
/// either end mix in neighbouring bits and cannot be predicted, so they stay visible (they carry
/// at most 4 bits of the secret each).
///
/// Also the encoding of the secret alone, padded and unpadded: when it was encoded by itself,
/// the whole encoding is masked, last character and padding included.
fn base64_forms(s: &[u8], out: &mut Vec<Vec<u8>>) {
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for a in 0..3 {
            let mut shifted = vec![0u8; a];
            shifted.extend_from_slice(s);
            let encoded = engine.encode(&shifted);
            let start = (8 * a).div_ceil(6);
            let end = 8 * (a + s.len()) / 6;
            if end > start {
                out.push(encoded.as_bytes()[start..end].to_vec());
            }
        }
        out.push(engine.encode(s).into_bytes());
    }
    for engine in [&STANDARD, &URL_SAFE] {
        out.push(engine.encode(s).into_bytes());
    }
}

/// Unreserved characters of RFC 3986: never percent-encoded.
fn rfc3986_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What `application/x-www-form-urlencoded` (WHATWG, Java's `URLEncoder`) leaves as is.
fn form_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_')
}

/// What JavaScript's `encodeURIComponent` leaves as is.
fn js_component_unreserved(b: u8) -> bool {
    rfc3986_unreserved(b) || matches!(b, b'!' | b'\'' | b'(' | b')' | b'*')
}

/// What Python's `urllib.parse.quote` leaves as is by default (`safe='/'`).
fn python_quote_unreserved(b: u8) -> bool {
    rfc3986_unreserved(b) || b == b'/'
}

/// URL-encoded forms: every byte outside the unreserved set as `%XX`, in upper- and lowercase
/// hex, with space as `%20` or `+`; plus the sets of the common encoders that keep a few more
/// characters as they are. Hex case mixed within one string is not covered.
fn url_forms(s: &[u8], out: &mut Vec<Vec<u8>>) {
    /// (which bytes stay as they are, space as `+`, uppercase hex)
    type Variant = (fn(u8) -> bool, bool, bool);
    const VARIANTS: [Variant; 7] = [
        (rfc3986_unreserved, false, true),
        (rfc3986_unreserved, false, false),
        (rfc3986_unreserved, true, true),
        (rfc3986_unreserved, true, false),
        (form_unreserved, true, true),
        (js_component_unreserved, false, true),
        (python_quote_unreserved, false, true),
    ];
    for (keep, space_plus, upper) in VARIANTS {
        out.push(percent_encode(s, keep, space_plus, upper));
    }
}

fn percent_encode(s: &[u8], keep: fn(u8) -> bool, space_plus: bool, upper: bool) -> Vec<u8> {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut out = Vec::with_capacity(s.len() * 3);
    for &b in s {
        if keep(b) {
            out.push(b);
        } else if b == b' ' && space_plus {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    out
}

/// JSON-escaped forms, as the value would appear inside a JSON string: serde_json's escaping
/// (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, other control characters as `\u00xx`), the same
/// with `/` written `\/` (PHP, some Java encoders), with uppercase `\u00XX`, and, for UTF-8
/// values, Python's default `ensure_ascii` form (non-ASCII as `\uxxxx` UTF-16 escapes).
fn json_forms(s: &[u8], out: &mut Vec<Vec<u8>>) {
    out.push(json_escape(s, false, false));
    out.push(json_escape(s, true, false));
    out.push(json_escape(s, false, true));
    if let Ok(text) = std::str::from_utf8(s)
        && (!text.is_ascii() || s.contains(&0x7f))
    {
        out.push(json_escape_ascii(text));
    }
}

fn push_short_escape(b: u8, out: &mut Vec<u8>) -> bool {
    let esc: &[u8] = match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        0x08 => b"\\b",
        0x0c => b"\\f",
        _ => return false,
    };
    out.extend_from_slice(esc);
    true
}

fn push_unicode_escape(unit: u16, upper: bool, out: &mut Vec<u8>) {
    let hex: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    out.extend_from_slice(b"\\u");
    for shift in [12u16, 8, 4, 0] {
        out.push(hex[usize::from((unit >> shift) & 15)]);
    }
}

fn json_escape(s: &[u8], escape_slash: bool, upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    for &b in s {
        if push_short_escape(b, &mut out) {
            continue;
        }
        if b < 0x20 {
            push_unicode_escape(u16::from(b), upper, &mut out);
        } else if b == b'/' && escape_slash {
            out.extend_from_slice(b"\\/");
        } else {
            out.push(b);
        }
    }
    out
}

fn json_escape_ascii(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_ascii() && push_short_escape(c as u8, &mut out) {
            continue;
        }
        if c.is_ascii() && c >= ' ' && c != '\x7f' {
            out.push(c as u8);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                push_unicode_escape(*unit, false, &mut out);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has(forms: &[Vec<u8>], form: &[u8]) -> bool {
        forms.iter().any(|f| f == form)
    }

    #[test]
    fn base64_alignments_of_a_known_value() {
        // "hunter22" at offsets 0, 1 and 2 inside a blob; values computed by hand from
        // base64("hunter22") = "aHVudGVyMjI=", base64("\0hunter22") = "AGh1bnRlcjIy",
        // base64("\0\0hunter22") = "AABodW50ZXIyMg==".
        let f = forms(b"hunter22");
        for expected in [
            &b"aHVudGVyMjI="[..],
            b"aHVudGVyMjI",
            b"aHVudGVyMj",
            b"h1bnRlcjIy",
            b"odW50ZXIyM",
        ] {
            assert!(
                has(&f, expected),
                "missing {}",
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn url_and_json_forms() {
        let f = forms(b"a b/\"c\n\x01");
        for expected in [
            &b"a%20b%2F%22c%0A%01"[..],
            b"a%20b%2f%22c%0a%01",
            b"a+b%2F%22c%0A%01",
            b"a+b%2f%22c%0a%01",
            b"a%20b/%22c%0A%01",
            b"a b/\\\"c\\n\\u0001",
            b"a b\\/\\\"c\\n\\u0001",
        ] {
            assert!(
                has(&f, expected),
                "missing {}",
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn lines_of_a_multi_line_value_and_short_forms_skipped() {
        let f = forms(b"first line\r\nab\r\n  indented\n");
        assert!(has(&f, b"first line\r\nab\r\n  indented\r\n"));
        assert!(has(&f, b"first line\nab\n  indented\n"));
        assert!(has(&f, b"first line"));
        assert!(has(&f, b"  indented"));
        assert!(has(&f, b"indented"));
        assert!(!has(&f, b"ab"), "a 2-byte line is not masked");
        assert!(f.iter().all(|x| x.len() >= MIN_SECRET_LEN));
    }

    #[test]
    fn python_ensure_ascii_form() {
        let f = forms("pässwörd".as_bytes());
        assert!(has(&f, b"p\\u00e4ssw\\u00f6rd"));
    }
}
