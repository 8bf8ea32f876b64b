//! The streaming secret masker: replaces every form of every secret (see [`crate::forms`]) with
//! [`MASK`] in a byte stream that arrives in arbitrary pieces, holding back only as many bytes as
//! a match could still need.

use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, Input, MatchKind};
use outpost_protocol::MASK;

use crate::LogshipError;
use crate::forms::{MIN_SECRET_LEN, forms};

/// Input is scanned in pieces of at most this size, so the scratch buffer stays bounded whatever
/// the size of one `push`.
const SCAN_CHUNK: usize = 64 * 1024;

/// Masks secrets out of a byte stream.
///
/// Semantics, the same however the stream is cut into `push` calls:
/// - at every position where some form of some secret starts, the longest such form matches;
/// - matches that overlap are merged into one region, replaced by a single [`MASK`] (so no
///   fragment of either secret survives); matches that only touch each get their own [`MASK`];
/// - everything else passes through byte for byte.
///
/// At most `longest_form - 1` bytes are held back between calls ([`Masker::held_back`]);
/// [`Masker::flush`] emits them at the end of the stream.
///
/// A masker built from no secrets is a pass-through that copies its input.
///
/// Known limit: a secret whose value overlaps the text `[MASKED]` itself (e.g. `KED]xyz`) can
/// be reassembled from a mask and the bytes after it; such values do not occur in practice.
pub struct Masker {
    matcher: Option<Arc<AhoCorasick>>,
    /// Every form masked, for [`Masker::release`].
    forms: Arc<Vec<Vec<u8>>>,
    /// `longest_form - 1`: how many trailing bytes can still be the start of a match.
    hold: usize,
    /// Bytes received but not yet emitted (at most `hold` between calls).
    buf: Vec<u8>,
    /// Leading bytes of `buf` already covered by an emitted [`MASK`] (a match that ran past the
    /// point up to which output was final); a match starting inside them extends that mask.
    covered: usize,
    secret_count: usize,
}

impl Masker {
    /// A masker for `secrets`, given as `(name, value)`. Refuses (naming it) any secret whose
    /// value is shorter than [`MIN_SECRET_LEN`] bytes, empty ones included.
    pub fn new(secrets: &[(String, Vec<u8>)]) -> Result<Masker, LogshipError> {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for (name, value) in secrets {
            if value.len() < MIN_SECRET_LEN {
                return Err(LogshipError::UnmaskableSecret {
                    name: name.clone(),
                    len: value.len(),
                });
            }
            patterns.extend(forms(value));
        }
        patterns.sort();
        patterns.dedup();
        if patterns.is_empty() {
            return Ok(Masker::none());
        }
        let matcher = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&patterns)
            .map_err(|e| LogshipError::Matcher {
                secrets: secrets.len(),
                message: e.to_string(),
            })?;
        let hold = matcher.max_pattern_len().saturating_sub(1);
        Ok(Masker {
            matcher: Some(Arc::new(matcher)),
            forms: Arc::new(patterns),
            hold,
            buf: Vec::new(),
            covered: 0,
            secret_count: secrets.len(),
        })
    }

    /// A masker with no secrets: a pass-through.
    pub fn none() -> Masker {
        Masker {
            matcher: None,
            forms: Arc::new(Vec::new()),
            hold: 0,
            buf: Vec::new(),
            covered: 0,
            secret_count: 0,
        }
    }

    /// A masker for the same secrets with a fresh stream state (nothing held back). Cheap: the
    /// matcher is shared.
    pub fn fresh(&self) -> Masker {
        Masker {
            matcher: self.matcher.clone(),
            forms: Arc::clone(&self.forms),
            hold: self.hold,
            buf: Vec::new(),
            covered: 0,
            secret_count: self.secret_count,
        }
    }

    /// Whether this masker has nothing to mask (and copies its input through).
    pub fn is_passthrough(&self) -> bool {
        self.matcher.is_none()
    }

    /// Length of the longest form masked (0 for a pass-through); at most this minus one bytes
    /// are ever held back.
    pub fn longest_form(&self) -> usize {
        self.matcher.as_ref().map_or(0, |m| m.max_pattern_len())
    }

    /// Bytes received but not yet emitted. Zero after [`Masker::flush`]: the output is then
    /// complete.
    pub fn held_back(&self) -> usize {
        self.buf.len()
    }

    /// Capacity of the internal buffer, in bytes: bounded by the scan chunk (64 KiB) plus the
    /// longest form, whatever the input size. Exposed so tests can check memory stays bounded.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Feeds `input`, appending to `out` every byte that is now final (masked).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.matcher.is_none() {
            out.extend_from_slice(input);
            return;
        }
        for piece in input.chunks(SCAN_CHUNK) {
            self.buf.extend_from_slice(piece);
            self.process(out, false);
        }
    }

    /// Emits the held-back bytes that can no longer begin any secret form, keeping only a tail
    /// that is still the beginning of one. For a quiet stream: a last line such as `waiting for
    /// approval` shows at once instead of waiting for more output. Costs up to held × forms
    /// comparisons, so call it when output pauses, not on every write.
    pub fn release(&mut self, out: &mut Vec<u8>) {
        if self.matcher.is_none() || self.buf.is_empty() {
            return;
        }
        let len = self.buf.len();
        let keep_from = (0..len)
            .find(|&q| {
                let tail = &self.buf[q..];
                self.forms
                    .iter()
                    .any(|f| f.len() > tail.len() && f.starts_with(tail))
            })
            .unwrap_or(len);
        self.process_upto(out, keep_from);
    }

    /// Ends the stream: appends everything held back to `out`, masked, and resets the state.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.matcher.is_some() {
            self.process(out, true);
        }
        self.buf.clear();
        self.covered = 0;
    }

    /// Masks one complete piece of text on its own, leaving the stream state untouched: for
    /// messages that leave the runner outside the log (failure messages, step names).
    pub fn mask_bytes(&self, input: &[u8]) -> Vec<u8> {
        let mut fresh = self.fresh();
        let mut out = Vec::with_capacity(input.len());
        fresh.push(input, &mut out);
        fresh.flush(&mut out);
        out
    }

    /// [`Masker::mask_bytes`] for text; invalid UTF-8 cannot appear since masks are ASCII and
    /// only whole matches are replaced, but it is handled lossily all the same.
    pub fn mask_str(&self, input: &str) -> String {
        match String::from_utf8(self.mask_bytes(input.as_bytes())) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Emits the final part of `buf` and keeps the rest.
    ///
    /// A match starting at position `p` is final once `p + longest_form <= buf.len()`: every
    /// form that could start there is then entirely visible, so more input cannot change which
    /// one is the longest. So output is final up to `safe = len - hold` (all of it at the end
    /// of the stream), and the bytes from `safe` on are kept to be scanned again with more input.
    fn process(&mut self, out: &mut Vec<u8>, eof: bool) {
        let len = self.buf.len();
        let safe = if eof {
            len
        } else {
            len.saturating_sub(self.hold)
        };
        self.process_upto(out, safe);
    }

    /// Emits `buf[..safe]`, masked. Sound for any `safe` such that no position before it starts
    /// a form that would run past the end of `buf` (see [`Masker::release`]).
    fn process_upto(&mut self, out: &mut Vec<u8>, safe: usize) {
        let Some(matcher) = self.matcher.as_deref() else {
            return;
        };
        // `done`: bytes of `buf` emitted or covered by an emitted mask; `region_end` > 0 while a
        // mask region is open (a new match starting before it extends the region).
        let mut done = self.covered;
        let mut region_end = self.covered;
        let mut from = 0;
        while from < safe {
            let Some(m) = matcher.find(Input::new(&self.buf).range(from..)) else {
                break;
            };
            if m.start() >= safe {
                break;
            }
            if m.start() < region_end {
                region_end = region_end.max(m.end());
            } else {
                out.extend_from_slice(&self.buf[done..m.start()]);
                out.extend_from_slice(MASK.as_bytes());
                region_end = m.end();
            }
            done = region_end;
            // Matches starting inside this one are looked at too: one that reaches further
            // extends the masked region instead of leaving its tail visible.
            from = m.start() + 1;
        }
        if safe > done {
            out.extend_from_slice(&self.buf[done..safe]);
            done = safe;
        }
        self.covered = done - safe;
        self.buf.drain(..safe);
    }
}

impl fmt::Debug for Masker {
    /// Never prints a secret or a form of one: only counts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("secrets", &self.secret_count)
            .field(
                "forms",
                &self.matcher.as_ref().map_or(0, |m| m.patterns_len()),
            )
            .field("held_back", &self.buf.len())
            .finish()
    }
}

#[cfg(test)]
mod release_tests {
    use super::*;

    fn masker(secret: &str) -> Masker {
        Masker::new(&[("S".to_owned(), secret.as_bytes().to_vec())]).expect("masker")
    }

    #[test]
    fn release_emits_what_cannot_begin_a_secret() {
        let mut m = masker("hunter22");
        let mut out = Vec::new();
        m.push(b"waiting for approval\n", &mut out);
        assert!(
            m.held_back() > 0,
            "the tail is held back while more input may come"
        );
        m.release(&mut out);
        assert_eq!(out, b"waiting for approval\n");
        assert_eq!(m.held_back(), 0);
    }

    #[test]
    fn release_keeps_a_tail_that_may_still_become_a_secret() {
        let mut m = masker("hunter22");
        let mut out = Vec::new();
        m.push(b"password: hunt", &mut out);
        m.release(&mut out);
        assert_eq!(out, b"password: ");
        m.push(b"er22 done", &mut out);
        m.flush(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "password: [MASKED] done"
        );
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};

    use super::*;

    /// A tiny deterministic generator (xorshift64*), so chunkings are random but reproducible.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn secrets(values: &[&[u8]]) -> Vec<(String, Vec<u8>)> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("S{i}"), v.to_vec()))
            .collect()
    }

    /// Runs `input` through a masker in the given pieces, checking the hold-back bound after
    /// every push and that nothing is held after the flush.
    fn run(masker: &mut Masker, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            masker.push(piece, &mut out);
            assert!(masker.held_back() <= masker.longest_form().saturating_sub(1));
        }
        masker.flush(&mut out);
        assert_eq!(masker.held_back(), 0);
        out
    }

    fn random_pieces<'a>(input: &'a [u8], rng: &mut XorShift, max: usize) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = (1 + rng.below(max)).min(rest.len());
            let (a, b) = rest.split_at(n);
            pieces.push(a);
            rest = b;
        }
        pieces
    }

    /// Checks that `input` masks to `expected` whole, one byte per write, and in random
    /// chunkings from fixed seeds.
    fn check(values: &[&[u8]], input: &[u8], expected: &[u8]) {
        let base = Masker::new(&secrets(values)).expect("valid secrets");
        let show = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let whole = run(&mut base.fresh(), &[input]);
        assert_eq!(show(&whole), show(expected), "whole input");
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(
            show(&run(&mut base.fresh(), &bytes)),
            show(expected),
            "byte by byte"
        );
        for seed in 1..=8u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pieces = random_pieces(input, &mut rng, 7);
            assert_eq!(
                show(&run(&mut base.fresh(), &pieces)),
                show(expected),
                "seed {seed}"
            );
        }
        assert_eq!(base.mask_bytes(input), expected, "mask_bytes");
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn raw_occurrences() {
        check(&[b"hunter22"], b"pw=hunter22 ok", b"pw=[MASKED] ok");
        check(&[b"hunter22"], b"hunter22", b"[MASKED]");
        check(&[b"hunter22"], b"hunter2 hunter2", b"hunter2 hunter2");
        check(&[b"hunter22"], b"", b"");
        check(&[b"abcd"], b"xabcdabcdx", b"x[MASKED][MASKED]x");
        check(&[b"hunter22"], b"a\nhunter22\nb", b"a\n[MASKED]\nb");
    }

    #[test]
    fn prefixes_overlaps_and_adjacency() {
        // The longest form wins: a secret that is a prefix of another.
        check(
            &[b"abcd", b"abcdefgh"],
            b"-abcdefgh-abcd-",
            b"-[MASKED]-[MASKED]-",
        );
        // Overlapping secrets merge into one mask: no tail of either survives.
        check(&[b"abcdef", b"defghi"], b"1abcdefghi2", b"1[MASKED]2");
        check(&[b"aaaa"], b"aaaaaaa!", b"[MASKED]!");
        check(&[b"abab"], b"ababab", b"[MASKED]");
        check(&[b"wxyz", b"1234"], b"wxyz1234", b"[MASKED][MASKED]");
    }

    #[test]
    fn multi_line_secret_whole_and_line_by_line() {
        let key: &[u8] = b"-----BEGIN KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQ\n-----END KEY-----";
        check(
            &[key],
            &[b"key: ", key, b" done"].concat(),
            b"key: [MASKED] done",
        );
        let crlf = b"-----BEGIN KEY-----\r\nMIIEvQIBADANBg\r\nkqhkiG9w0BAQ\r\n-----END KEY-----";
        check(&[key], &[b"<", &crlf[..], b">"].concat(), b"<[MASKED]>");
        check(&[crlf], &[b"<", key, b">"].concat(), b"<[MASKED]>");
        check(
            &[key],
            b"+ echo -----BEGIN KEY-----\n12:00 MIIEvQIBADANBg\r\n> kqhkiG9w0BAQ\n",
            b"+ echo [MASKED]\n12:00 [MASKED]\r\n> [MASKED]\n",
        );
        // Lines shorter than 4 bytes are not masked on their own.
        check(&[b"long line\nab\n"], b"ab long line", b"ab [MASKED]");
        // Indented lines match with or without their indentation.
        check(&[b"k:\n  s3cr3t-line\n"], b"[s3cr3t-line]", b"[[MASKED]]");
    }

    /// Encodes `prefix + secret + suffix` and masks the characters fully determined by the
    /// secret's bits, computed here from bit positions independently of the masker.
    fn check_base64_in_blob(secret: &[u8], prefix: &[u8], suffix: &[u8], url: bool) {
        let blob = [prefix, secret, suffix].concat();
        let encoded = if url {
            URL_SAFE_NO_PAD.encode(&blob)
        } else {
            STANDARD.encode(&blob)
        };
        let start = (8 * prefix.len()).div_ceil(6);
        let end = 8 * (prefix.len() + secret.len()) / 6;
        let expected = [
            &encoded.as_bytes()[..start],
            MASK.as_bytes(),
            &encoded.as_bytes()[end..],
        ]
        .concat();
        check(
            &[secret],
            format!("data: {encoded} ;").as_bytes(),
            &[b"data: ", &expected[..], b" ;"].concat(),
        );
    }

    #[test]
    fn base64_in_every_alignment() {
        for secret in [
            &b"hunter22"[..],
            b"abcd",
            b"abcde",
            b"0123456789abcdef\xff\xfe",
        ] {
            for prefix in [&b""[..], b"\x01", b"\x02\x03", b"xyz", b"\xfa\xfb\xfc\xfd"] {
                for url in [false, true] {
                    // A suffix whose first byte has its high bits set cannot complete a form of
                    // the secret alone by chance.
                    check_base64_in_blob(secret, prefix, b"\xc5rest", url);
                }
            }
        }
    }

    #[test]
    fn base64_of_the_secret_alone() {
        let s = b"p@ss>>??>>word";
        check(
            &[s],
            format!("{} !", STANDARD.encode(s)).as_bytes(),
            b"[MASKED] !",
        );
        check(
            &[s],
            format!("{} !", STANDARD_NO_PAD.encode(s)).as_bytes(),
            b"[MASKED] !",
        );
        let url = URL_SAFE_NO_PAD.encode(s);
        assert_ne!(
            url,
            STANDARD_NO_PAD.encode(s),
            "the test needs a value where they differ"
        );
        check(&[s], format!("{url} !").as_bytes(), b"[MASKED] !");
    }

    #[test]
    fn url_encoded() {
        let s: &[u8] = b"a b/c?d=e&f";
        check(&[s], b"?t=a%20b%2Fc%3Fd%3De%26f&x", b"?t=[MASKED]&x");
        check(&[s], b"?t=a%20b%2fc%3fd%3de%26f&x", b"?t=[MASKED]&x");
        check(&[s], b"?t=a+b%2Fc%3Fd%3De%26f&x", b"?t=[MASKED]&x");
        check(&[s], b"?t=a+b%2fc%3fd%3de%26f&x", b"?t=[MASKED]&x");
        check(&[s], b"?t=a%20b/c%3Fd%3De%26f&x", b"?t=[MASKED]&x");
    }

    #[test]
    fn json_escaped_as_serde_json_does() {
        let s = "quote\" back\\ nl\n tab\t ctl\x01 slash/ é";
        let json = serde_json::to_string(s).expect("serialize");
        let inner = &json[1..json.len() - 1];
        check(
            &[s.as_bytes()],
            format!("{{\"v\":\"{inner}\"}}").as_bytes(),
            b"{\"v\":\"[MASKED]\"}",
        );
        let slashed = inner.replace('/', "\\/");
        check(
            &[s.as_bytes()],
            format!("{{\"v\":\"{slashed}\"}}").as_bytes(),
            b"{\"v\":\"[MASKED]\"}",
        );
    }

    #[test]
    fn short_and_empty_secrets_are_refused() {
        for (value, len) in [(&b""[..], 0), (b"a", 1), (b"abc", 3)] {
            let err = Masker::new(&[
                ("OK".to_owned(), b"long enough".to_vec()),
                ("SHORT".to_owned(), value.to_vec()),
            ])
            .expect_err("too short");
            match &err {
                LogshipError::UnmaskableSecret { name, len: l } => {
                    assert_eq!(name, "SHORT");
                    assert_eq!(*l, len);
                }
                other => panic!("unexpected error {other}"),
            }
            assert!(err.to_string().contains("SHORT"), "{err}");
        }
        assert!(Masker::new(&secrets(&[b"abcd"])).is_ok());
    }

    #[test]
    fn no_secrets_is_identity() {
        let mut masker = Masker::new(&[]).expect("no secrets");
        assert!(masker.is_passthrough());
        let mut rng = XorShift(42);
        let input: Vec<u8> = (0..10_000).map(|_| rng.next() as u8).collect();
        let pieces = random_pieces(&input, &mut rng, 300);
        assert_eq!(run(&mut masker, &pieces), input);
    }

    #[test]
    fn memory_stays_bounded_for_huge_pushes() {
        let mut masker = Masker::new(&secrets(&[b"s3cret-value"])).expect("valid");
        let mut input = vec![b'.'; 5 * 1024 * 1024];
        input[3 * 1024 * 1024..][..12].copy_from_slice(b"s3cret-value");
        let mut out = Vec::new();
        masker.push(&input, &mut out);
        masker.flush(&mut out);
        assert!(
            masker.buffer_capacity() <= 2 * SCAN_CHUNK,
            "{}",
            masker.buffer_capacity()
        );
        assert_eq!(out.len(), input.len() - 12 + MASK.len());
        assert!(!contains(&out, b"s3cret-value"));
    }

    /// Random streams made of filler and planted occurrences of random forms of random secrets:
    /// the output equals the expected one exactly (so no form survives, and everything else
    /// passes through byte for byte), however the stream is cut.
    #[test]
    fn random_streams_with_every_form() {
        // Filler characters never occur in a secret or in any of its forms, so planted
        // occurrences cannot merge with their surroundings.
        const FILLER: &[u8] = b"#@;,";
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 /\\\"+=.-_~\n\t?&\x01";
        let mut rng = XorShift(0x5eed_1234_abcd_0001);
        for round in 0..60 {
            let count = 1 + rng.below(3);
            let values: Vec<Vec<u8>> = (0..count)
                .map(|_| {
                    let len = 4 + rng.below(30);
                    (0..len).map(|_| *rng.pick(ALPHABET)).collect()
                })
                .collect();
            let mut input = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..12 {
                let filler: Vec<u8> = (0..1 + rng.below(6)).map(|_| *rng.pick(FILLER)).collect();
                input.extend_from_slice(&filler);
                expected.extend_from_slice(&filler);
                let v = rng.pick(&values).clone();
                let text = String::from_utf8(v.clone()).expect("ascii");
                let (planted, masked): (Vec<u8>, Vec<u8>) = match rng.below(6) {
                    0 => (v.clone(), MASK.into()),
                    1 => {
                        let j = serde_json::to_string(&text).expect("json");
                        (j[1..j.len() - 1].into(), MASK.into())
                    }
                    2 => {
                        let mut enc = Vec::new();
                        for &b in &v {
                            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                                enc.push(b);
                            } else {
                                enc.extend_from_slice(format!("%{b:02X}").as_bytes());
                            }
                        }
                        (enc, MASK.into())
                    }
                    3 => (STANDARD.encode(&v).into(), MASK.into()),
                    _ => {
                        let prefix: Vec<u8> = (0..rng.below(3)).map(|_| rng.next() as u8).collect();
                        let suffix = [0xc0 | rng.next() as u8, rng.next() as u8];
                        let blob = [&prefix[..], &v, &suffix].concat();
                        let enc = STANDARD_NO_PAD.encode(&blob);
                        let start = (8 * prefix.len()).div_ceil(6);
                        let end = 8 * (prefix.len() + v.len()) / 6;
                        let masked = [
                            &enc.as_bytes()[..start],
                            MASK.as_bytes(),
                            &enc.as_bytes()[end..],
                        ]
                        .concat();
                        (enc.into_bytes(), masked)
                    }
                };
                input.extend_from_slice(&planted);
                expected.extend_from_slice(&masked);
            }
            input.push(b'#');
            expected.push(b'#');
            let refs: Vec<&[u8]> = values.iter().map(|v| &v[..]).collect();
            let base = Masker::new(&secrets(&refs)).expect("valid");
            let pieces = random_pieces(&input, &mut rng, 40);
            let out = run(&mut base.fresh(), &pieces);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "round {round}"
            );
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(
                run(&mut base.fresh(), &bytes),
                expected,
                "round {round} bytewise"
            );
            for v in &values {
                assert!(!contains(&out, v), "round {round}: raw secret survived");
            }
        }
    }

    #[test]
    fn debug_never_shows_values() {
        let masker = Masker::new(&secrets(&[b"topsecret"])).expect("valid");
        let shown = format!("{masker:?}");
        assert!(!shown.contains("topsecret"), "{shown}");
        assert!(shown.contains("secrets: 1"), "{shown}");
    }
}
