//! The result table: one [`Row`] per figure, measured value beside its target, with a mark, and
//! each row's notes (method, caveats) below the table.

use std::fmt;
use std::time::Duration;

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the target.
    Pass,
    /// Outside the target (printed, not an error).
    Miss,
    /// The measurement could not be made; the notes say why.
    Error,
}

impl Verdict {
    pub fn of(pass: bool) -> Verdict {
        if pass { Verdict::Pass } else { Verdict::Miss }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Error => "ERROR",
        })
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// The measurement that produced it (its `--only` name).
    pub bench: &'static str,
    /// What is measured, as in DESIGN.md §7.
    pub what: String,
    pub measured: String,
    pub target: String,
    pub verdict: Verdict,
    /// How it was measured, sample sizes, caveats.
    pub notes: Vec<String>,
}

/// The table as plain text (Markdown-compatible), then the notes of each row.
pub fn render(rows: &[Row]) -> String {
    let head = ["#", "what", "measured", "target", "ok"];
    let cells: Vec<[String; 5]> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            [
                (i + 1).to_string(),
                r.what.clone(),
                r.measured.clone(),
                r.target.clone(),
                r.verdict.to_string(),
            ]
        })
        .collect();
    let mut widths = head.map(|h| h.chars().count());
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::from("|");
        for (cell, w) in cells.iter().zip(widths) {
            let pad = w - cell.chars().count();
            out.push_str(&format!(" {cell}{} |", " ".repeat(pad)));
        }
        out.push('\n');
        out
    };
    let mut out = line(&head.map(str::to_owned));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out.push_str("\nnotes:\n");
    for (i, r) in rows.iter().enumerate() {
        for (j, note) in r.notes.iter().enumerate() {
            let lead = if j == 0 {
                format!("{:>3}. [{}] ", i + 1, r.bench)
            } else {
                " ".repeat(6 + r.bench.len() + 2)
            };
            out.push_str(&format!("{lead}{note}\n"));
        }
    }
    out
}

/// Sorted samples and their percentiles.
#[derive(Debug, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn new(mut samples: Vec<Duration>) -> Samples {
        samples.sort_unstable();
        Samples(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The `q`-quantile (0.0 to 1.0), nearest rank; zero without samples.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.0.len() as f64) * q).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }

    pub fn min(&self) -> Duration {
        self.0.first().copied().unwrap_or_default()
    }
}

/// A duration in milliseconds with sensible precision.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(samples: &[u64], q: f64, expected: u64) {
        let s = Samples::new(samples.iter().map(|&n| Duration::from_millis(n)).collect());
        assert_eq!(s.quantile(q), Duration::from_millis(expected), "q={q}");
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        check(&[5, 1, 3, 2, 4], 0.5, 3);
        check(&[5, 1, 3, 2, 4], 0.99, 5);
        check(&[5, 1, 3, 2, 4], 0.0, 1);
        check(&(1..=100).collect::<Vec<_>>(), 0.99, 99);
        check(&(1..=100).collect::<Vec<_>>(), 0.5, 50);
        check(&[], 0.5, 0);
    }

    #[test]
    fn the_table_lines_up_and_lists_notes() {
        let rows = vec![Row {
            bench: "pickup",
            what: "enqueue → job".to_owned(),
            measured: "p50 1.00 ms".to_owned(),
            target: "p50 ≤ 2 ms".to_owned(),
            verdict: Verdict::Miss,
            notes: vec!["first".to_owned(), "second".to_owned()],
        }];
        let text = render(&rows);
        let lines: Vec<&str> = text.lines().collect();
        let width = lines[0].chars().count();
        assert!(
            lines[..3].iter().all(|l| l.chars().count() == width),
            "{text}"
        );
        assert!(lines[2].contains("MISS"), "{text}");
        assert!(text.contains("  1. [pickup] first\n"), "{text}");
        assert!(text.contains("second\n"), "{text}");
    }
}
