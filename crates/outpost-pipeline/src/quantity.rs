//! Resource quantities in the pipeline file, in Kubernetes' quantity syntax: CPUs (`2`, `1.5`,
//! `500m`) to millicores, and memory (`512Mi`, `1Gi`, `100M`) to bytes. Errors are complete
//! messages naming the expected form, with a suggestion for the usual slips (`512MB`, `500M`).

/// The smallest memory a step may ask for: below it, the unit was almost surely forgotten, and
/// no container runtime starts a container that small.
pub const MIN_MEMORY: u64 = 1024 * 1024;

const CPU_EXPECTED: &str = "expected a number of CPUs like `2` or `1.5`, or millicores like `500m`";
const MEMORY_EXPECTED: &str = "expected a number of bytes with an optional unit k, M, G, T, P, \
                               E (powers of 1000) or Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), \
                               like `512Mi` or `1Gi`";

/// Units of memory and their sizes in bytes.
const MEMORY_UNITS: [(&str, u128); 13] = [
    ("", 1),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
    ("P", 1_000_000_000_000_000),
    ("E", 1_000_000_000_000_000_000),
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("Pi", 1 << 50),
    ("Ei", 1 << 60),
];

/// A decimal number as written: its whole part and its fraction's digits.
struct Decimal<'a> {
    whole: &'a str,
    fraction: &'a str,
}

impl Decimal<'_> {
    /// `self × unit / divisor` when that is a whole number; `Err(true)` when it is not,
    /// `Err(false)` when it overflows.
    fn times(&self, unit: u128, divisor: u128) -> Result<u128, bool> {
        let digits = format!("{}{}", self.whole, self.fraction);
        let scale = u32::try_from(self.fraction.len()).map_err(|_| false)?;
        let denominator = 10u128
            .checked_pow(scale)
            .and_then(|d| d.checked_mul(divisor))
            .ok_or(false)?;
        let numerator = digits
            .parse::<u128>()
            .ok()
            .and_then(|n| n.checked_mul(unit))
            .ok_or(false)?;
        if numerator % denominator == 0 {
            Ok(numerator / denominator)
        } else {
            Err(true)
        }
    }
}

/// Splits `12.5Mi` into the number and the unit; `None` when there is no number in front.
fn split(text: &str) -> Option<(Decimal<'_>, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    Some((Decimal { whole, fraction }, unit))
}

/// Parses a CPU quantity (`2`, `1.5`, `500m`) into millicores, as the pipeline's `cpu` reads it;
/// public so that runner settings in the same syntax read the same way.
///
/// # Errors
///
/// A complete message naming the quantity and the expected form.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let invalid = |reason: String| format!("invalid CPU quantity `{text}`: {reason}");
    if text.is_empty() {
        return Err(invalid(format!("it is empty; {CPU_EXPECTED}")));
    }
    if text.starts_with('-') {
        return Err(invalid(format!("it is negative; {CPU_EXPECTED}")));
    }
    let Some((number, unit)) = split(text) else {
        return Err(invalid(CPU_EXPECTED.to_owned()));
    };
    let (unit_millis, divisor) = match unit {
        "" => (1000, 1),
        "m" => (1, 1),
        other => {
            let shown = format!("{}{}{}", number.whole, dot(&number), number.fraction);
            let hint = match other.trim().to_ascii_lowercase().as_str() {
                "m" => format!(" (did you mean `{shown}m`?)"),
                "cpu" | "cpus" | "core" | "cores" | "vcpu" | "vcpus" => {
                    format!(" (did you mean `{shown}`?)")
                }
                _ => String::new(),
            };
            return Err(invalid(format!("{CPU_EXPECTED}{hint}")));
        }
    };
    let millis = match number.times(unit_millis, divisor) {
        Ok(m) => m,
        Err(true) => {
            return Err(invalid(
                "CPU is counted in whole millicores, and this is finer than `1m`".to_owned(),
            ));
        }
        Err(false) => return Err(invalid("it is too large".to_owned())),
    };
    match u64::try_from(millis) {
        Ok(0) => Err(invalid("it must be more than zero".to_owned())),
        Ok(m) => Ok(m),
        Err(_) => Err(invalid("it is too large".to_owned())),
    }
}

/// Parses a memory quantity (`512Mi`, `1Gi`, `100M`) into bytes, at least [`MIN_MEMORY`], as the
/// pipeline's `memory` reads it; public so that runner settings in the same syntax read the same
/// way.
///
/// # Errors
///
/// A complete message naming the quantity and the expected form, with a suggestion for the
/// usual slips (`512MB`, `512m`, a forgotten unit).
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let invalid = |reason: String| format!("invalid memory quantity `{text}`: {reason}");
    if text.is_empty() {
        return Err(invalid(format!("it is empty; {MEMORY_EXPECTED}")));
    }
    if text.starts_with('-') {
        return Err(invalid(format!("it is negative; {MEMORY_EXPECTED}")));
    }
    let Some((number, unit)) = split(text) else {
        return Err(invalid(MEMORY_EXPECTED.to_owned()));
    };
    let shown = format!("{}{}{}", number.whole, dot(&number), number.fraction);
    let Some(&(_, size)) = MEMORY_UNITS.iter().find(|(u, _)| *u == unit) else {
        let hint = memory_hint(&shown, unit);
        return Err(invalid(format!(
            "unknown unit `{unit}`; {MEMORY_EXPECTED}{hint}"
        )));
    };
    let bytes = match number.times(size, 1) {
        Ok(b) => b,
        Err(true) => return Err(invalid("it is not a whole number of bytes".to_owned())),
        Err(false) => return Err(invalid("it is too large".to_owned())),
    };
    let Ok(bytes) = u64::try_from(bytes) else {
        return Err(invalid("it is too large".to_owned()));
    };
    if bytes < MIN_MEMORY {
        let hint = if unit.is_empty() {
            format!(" (a number without a unit is bytes: did you mean `{shown}Mi`?)")
        } else {
            String::new()
        };
        return Err(invalid(format!("it is less than the minimum of 1Mi{hint}")));
    }
    Ok(bytes)
}

/// "." when the number was written with one.
fn dot(number: &Decimal<'_>) -> &'static str {
    if number.fraction.is_empty() { "" } else { "." }
}

/// " (did you mean `512M` or `512Mi`?)" for the usual ways of writing a unit that Kubernetes
/// spells differently (`MB`, `MiB`, `gi`, `K`, `m`), else "".
fn memory_hint(number: &str, unit: &str) -> String {
    let mut chars = unit.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let rest = chars.as_str();
    let letter = first.to_ascii_uppercase();
    if !"KMGTPE".contains(letter)
        || !["", "i", "I", "b", "B", "ib", "iB", "IB", "Ib"].contains(&rest)
    {
        return String::new();
    }
    if unit == "m" {
        // `m` is a valid suffix (thousandths), but of a byte: never what was meant.
        return format!(" (`m` means thousandths; did you mean `{number}M` or `{number}Mi`?)");
    }
    let decimal = if letter == 'K' { 'k' } else { letter };
    format!(" (did you mean `{number}{decimal}` or `{number}{letter}i`?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text` with `parse` and compares with the value or the message.
    #[track_caller]
    fn check(parse: fn(&str) -> Result<u64, String>, text: &str, expected: Result<u64, &str>) {
        assert_eq!(parse(text), expected.map_err(str::to_owned), "{text:?}");
    }

    #[test]
    fn cpu_quantities() {
        for (text, millis) in [
            ("2", 2000),
            ("1.5", 1500),
            ("0.5", 500),
            (".25", 250),
            ("3.", 3000),
            ("500m", 500),
            ("1m", 1),
            ("0.001", 1),
            ("64", 64_000),
        ] {
            check(parse_cpu, text, Ok(millis));
        }
        let expected = "expected a number of CPUs like `2` or `1.5`, or millicores like `500m`";
        check(
            parse_cpu,
            "",
            Err(&format!("invalid CPU quantity ``: it is empty; {expected}")),
        );
        check(
            parse_cpu,
            "-1",
            Err(&format!(
                "invalid CPU quantity `-1`: it is negative; {expected}"
            )),
        );
        check(
            parse_cpu,
            "lots",
            Err(&format!("invalid CPU quantity `lots`: {expected}")),
        );
        check(
            parse_cpu,
            "500M",
            Err(&format!(
                "invalid CPU quantity `500M`: {expected} (did you mean `500m`?)"
            )),
        );
        check(
            parse_cpu,
            "2 cores",
            Err(&format!(
                "invalid CPU quantity `2 cores`: {expected} (did you mean `2`?)"
            )),
        );
        check(
            parse_cpu,
            "1.2.3",
            Err(&format!("invalid CPU quantity `1.2.3`: {expected}")),
        );
        check(
            parse_cpu,
            "1e3",
            Err(&format!("invalid CPU quantity `1e3`: {expected}")),
        );
        check(
            parse_cpu,
            "0.0005",
            Err(
                "invalid CPU quantity `0.0005`: CPU is counted in whole millicores, and this is \
                 finer than `1m`",
            ),
        );
        check(
            parse_cpu,
            "1.5m",
            Err(
                "invalid CPU quantity `1.5m`: CPU is counted in whole millicores, and this is \
                 finer than `1m`",
            ),
        );
        check(
            parse_cpu,
            "0",
            Err("invalid CPU quantity `0`: it must be more than zero"),
        );
        check(
            parse_cpu,
            "0m",
            Err("invalid CPU quantity `0m`: it must be more than zero"),
        );
        check(
            parse_cpu,
            &"9".repeat(40),
            Err(&format!(
                "invalid CPU quantity `{}`: it is too large",
                "9".repeat(40)
            )),
        );
    }

    #[test]
    fn memory_quantities() {
        for (text, bytes) in [
            ("512Mi", 512 << 20),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("100M", 100_000_000),
            ("2G", 2_000_000_000),
            ("1048576", 1 << 20),
            ("1024Ki", 1 << 20),
            ("8Ei", 1 << 63),
            ("0.5Ti", 1 << 39),
        ] {
            check(parse_memory, text, Ok(bytes));
        }
        let expected = "expected a number of bytes with an optional unit k, M, G, T, P, E \
                        (powers of 1000) or Ki, Mi, Gi, Ti, Pi, Ei (powers of 1024), like \
                        `512Mi` or `1Gi`";
        for (text, hint) in [
            ("512MB", " (did you mean `512M` or `512Mi`?)"),
            ("512MiB", " (did you mean `512M` or `512Mi`?)"),
            ("1gi", " (did you mean `1G` or `1Gi`?)"),
            ("1GB", " (did you mean `1G` or `1Gi`?)"),
            ("64K", " (did you mean `64k` or `64Ki`?)"),
            ("64kb", " (did you mean `64k` or `64Ki`?)"),
            (
                "512m",
                " (`m` means thousandths; did you mean `512M` or `512Mi`?)",
            ),
            ("2 Gi", ""),
            ("3bytes", ""),
        ] {
            let unit = text.trim_start_matches(|c: char| c.is_ascii_digit());
            check(
                parse_memory,
                text,
                Err(&format!(
                    "invalid memory quantity `{text}`: unknown unit `{unit}`; {expected}{hint}"
                )),
            );
        }
        check(
            parse_memory,
            "Gi",
            Err(&format!("invalid memory quantity `Gi`: {expected}")),
        );
        check(
            parse_memory,
            "-1Gi",
            Err(&format!(
                "invalid memory quantity `-1Gi`: it is negative; {expected}"
            )),
        );
        check(
            parse_memory,
            "512",
            Err(
                "invalid memory quantity `512`: it is less than the minimum of 1Mi (a number \
                 without a unit is bytes: did you mean `512Mi`?)",
            ),
        );
        check(
            parse_memory,
            "0Gi",
            Err("invalid memory quantity `0Gi`: it is less than the minimum of 1Mi"),
        );
        check(
            parse_memory,
            "1.0000001M",
            Err("invalid memory quantity `1.0000001M`: it is not a whole number of bytes"),
        );
        check(
            parse_memory,
            "16Ei",
            Err("invalid memory quantity `16Ei`: it is too large"),
        );
    }
}
