//! Kubernetes resource quantities (`100m`, `512Mi`, `1.5`, `2e3`): enough to compare requests,
//! limits and the node's allocatable, and to size Docker's memory and CPU limits.

/// The apiserver's message for a malformed quantity.
pub(crate) const QUANTITY_MSG: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

/// The value of a quantity in base units (bytes, cores), or `None` when malformed.
pub(crate) fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.chars().skip(1).any(|c| c == '+' || c == '-') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            let exp: i32 = exp.parse().ok()?;
            10f64.powi(exp)
        }
    };
    Some(value * factor)
}

/// Bytes, rounded up (Docker takes whole bytes).
pub(crate) fn bytes(s: &str) -> Option<u64> {
    parse(s).map(|v| v.max(0.0).ceil() as u64)
}

/// Millicores, rounded up.
pub(crate) fn millis(s: &str) -> Option<u64> {
    parse(s).map(|v| (v.max(0.0) * 1000.0).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (s, v) in [
            ("1", Some(1.0)),
            ("100m", Some(0.1)),
            ("512Mi", Some(536870912.0)),
            ("1G", Some(1e9)),
            ("1.5", Some(1.5)),
            ("2e3", Some(2000.0)),
            ("1Q", None),
            ("", None),
            ("Mi", None),
            ("1-2", None),
        ] {
            assert_eq!(parse(s), v, "{s}");
        }
        assert_eq!(millis("250m"), Some(250));
        assert_eq!(bytes("1Ki"), Some(1024));
    }
}
