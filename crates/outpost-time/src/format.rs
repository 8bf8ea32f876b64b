//! One way of showing a duration to a person, in the form the pipeline file uses: `250ms`,
//! `12.5s`, `2s`, `1m30s`, `10m`, `1h5m`.

use std::time::Duration;

/// Below a second, milliseconds; below a minute, seconds with one decimal when there is a
/// fraction; above, whole hours, minutes and seconds (the fraction dropped).
pub fn format(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    if secs < 60 {
        let tenths = d.subsec_millis() / 100;
        return if tenths == 0 {
            format!("{secs}s")
        } else {
            format!("{secs}.{tenths}s")
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_in_the_pipeline_file() {
        let check = |millis: u64, text: &str| {
            assert_eq!(format(Duration::from_millis(millis)), text, "{millis} ms");
        };
        check(0, "0ms");
        check(250, "250ms");
        check(2_000, "2s");
        check(12_540, "12.5s");
        check(90_000, "1m30s");
        check(185_700, "3m5s");
        check(600_000, "10m");
        check(3_600_000, "1h");
        check(3_900_000, "1h5m");
    }
}
