//! Durations in the pipeline file: `90s`, `10m`, `1h`, `1h30m` — whole hours, minutes and
//! seconds, in that order, each unit at most once.

use std::time::Duration;

/// The longest accepted duration: 7 days, so that deadlines computed from it never overflow.
pub(crate) const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

const EXPECTED: &str = "expected a whole number with a unit (h, m or s), like `90s`, `10m`, `1h` \
                        or `1h30m`";

/// Parses a duration; the error is a complete message naming the expected form.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let garbage = |reason: &str| format!("invalid duration `{text}`: {reason}; {EXPECTED}");
    if text.is_empty() {
        return Err(garbage("it is empty"));
    }
    if text.starts_with('-') {
        return Err(garbage("it is negative"));
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(garbage("it has no unit"));
    }
    let mut total: u64 = 0;
    // Units seen so far must come in decreasing order: h, then m, then s.
    let mut last_rank = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(garbage("it is not of that form"));
        }
        let (number, tail) = rest.split_at(digits);
        let mut chars = tail.chars();
        let (unit_secs, rank) = match chars.next() {
            Some('h') => (3600u64, 1),
            Some('m') => (60, 2),
            Some('s') => (1, 3),
            None => return Err(garbage("its last number has no unit")),
            Some(_) => return Err(garbage("it is not of that form")),
        };
        if rank <= last_rank {
            return Err(garbage(
                "units must come in the order h, m, s, each at most once",
            ));
        }
        last_rank = rank;
        // Anything that overflows is far beyond MAX anyway.
        let value = number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_secs))
            .and_then(|n| n.checked_add(total));
        total = match value {
            Some(v) if v <= MAX.as_secs() => v,
            _ => {
                return Err(format!(
                    "invalid duration `{text}`: longer than the limit of {}",
                    format(MAX)
                ));
            }
        };
        rest = chars.as_str();
    }
    if total == 0 {
        return Err(format!(
            "invalid duration `{text}`: it must be longer than zero"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration in the form [`parse`] reads (pipeline durations are whole seconds and
/// never zero, which `outpost_time::format` writes as `1h30m`, `90s`, …).
pub(crate) fn format(d: Duration) -> String {
    outpost_time::format(d)
}

/// `serialize_with` for `Duration`: the same text form as the file (`1h30m`).
pub(crate) fn serialize<S: serde::Serializer>(
    value: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format(*value))
}

/// `serialize_with` for `Option<Duration>`: the same text form as the file (`1h30m`).
pub(crate) fn serialize_opt<S: serde::Serializer>(
    value: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => serializer.serialize_some(&format(*d)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<u64, &str>) {
        let got = parse(text).map(|d| d.as_secs());
        match (&got, expected) {
            (Ok(secs), Ok(want)) => assert_eq!(*secs, want, "{text:?}"),
            (Err(msg), Err(want)) => assert!(
                msg.contains(want),
                "{text:?}: message {msg:?} does not contain {want:?}"
            ),
            _ => panic!("{text:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn parses_valid_durations() {
        check("90s", Ok(90));
        check("10m", Ok(600));
        check("1h", Ok(3600));
        check("1h30m", Ok(5400));
        check("1h30m15s", Ok(5415));
        check("2m0s", Ok(120));
        check("0h5s", Ok(5));
        check("168h", Ok(604_800));
        check("0090s", Ok(90));
    }

    #[test]
    fn rejects_invalid_durations() {
        check("", Err("it is empty"));
        check("0s", Err("longer than zero"));
        check("0h0m", Err("longer than zero"));
        check("-5m", Err("it is negative"));
        check("90", Err("it has no unit; expected a whole number"));
        check("1h30", Err("its last number has no unit"));
        check("1d", Err("not of that form"));
        check("1.5h", Err("not of that form"));
        check("m", Err("not of that form"));
        check("1h 30m", Err("not of that form"));
        check("30m1h", Err("order h, m, s"));
        check("1m1m", Err("order h, m, s"));
        check("169h", Err("longer than the limit of 168h"));
        check("99999999999999999999999s", Err("longer than the limit"));
        check("18446744073709551615h", Err("longer than the limit"));
        check("１h", Err("not of that form"));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["90s", "1m30s", "10m", "1h", "1h30m", "2h0m1s", "168h"] {
            let d = parse(text).expect(text);
            assert_eq!(parse(&format(d)), Ok(d), "{text}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
    }
}
