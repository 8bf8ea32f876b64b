//! The step rules every outpost backend shares, written once: whether a step runs given how the
//! steps before it ended (its `when`), and the marker file the Kubernetes step wrapper writes when
//! a step ends. Std only and without dependencies, so that the statically linked wrapper
//! (`bins/outpost-step`) and `outpost-executor`'s `StepPlan` use the very same code.
//!
//! # The rule
//!
//! - `on_success` (the default) runs while no earlier step failed or timed out;
//! - `on_failure` runs only once an earlier step failed or timed out;
//! - `always` runs whatever the earlier steps did;
//! - but nothing runs once a step was cancelled, a cancel was seen between steps, or the whole
//!   job ran out of time.
//!
//! [`History`] folds the outcomes of the earlier steps into what the rule needs; [`decide`] is the
//! same for a finished list of outcomes (what the wrapper reads from the markers).
//!
//! # Markers
//!
//! [`Marker`] is the one line the wrapper writes to `<markers>/<index>.done`
//! ([`marker_file_name`]), like `state=failed exit=3`; see its documentation for the format.

mod marker;

pub use crate::marker::{MAX_MARKER_BYTES, Marker, MarkerError, marker_file_name};

/// When a step runs, given how the steps before it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum When {
    /// Only while no earlier step failed (the default).
    #[default]
    OnSuccess,
    /// Only once an earlier step failed.
    OnFailure,
    /// Whatever happened before (but not after a cancel or a job timeout).
    Always,
}

impl When {
    /// Every value, in the order the docs list them.
    pub const ALL: [When; 3] = [When::OnSuccess, When::OnFailure, When::Always];

    /// The spelling in the pipeline file and on the wrapper's command line.
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::OnFailure => "on_failure",
            When::Always => "always",
        }
    }

    /// The value spelled `text` ([`When::as_str`]), if any.
    pub fn parse(text: &str) -> Option<When> {
        When::ALL.into_iter().find(|w| w.as_str() == text)
    }
}

/// How a step ended, as far as the rule and the marker care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Its command exited with code 0.
    Success,
    /// Its command exited with another code, was killed, or could not be started.
    Failed,
    /// It ran past its own time limit and was stopped.
    TimedOut,
    /// It was stopped by a cancel (or cancelled before it started).
    Cancelled,
    /// It did not run, by its `when`.
    Skipped,
}

impl Outcome {
    /// Every value.
    pub const ALL: [Outcome; 5] = [
        Outcome::Success,
        Outcome::Failed,
        Outcome::TimedOut,
        Outcome::Cancelled,
        Outcome::Skipped,
    ];

    /// The spelling in a marker, the same as the wire's step states.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
            Outcome::Skipped => "skipped",
        }
    }

    /// The value spelled `text` ([`Outcome::as_str`]), if any.
    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == text)
    }

    /// Whether this outcome counts as a failure for later steps' `when`.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }
}

/// What to do with the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Run,
    Skip,
}

/// What the rule needs to know of the steps so far, fed in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct History {
    failed: bool,
    cancelled: bool,
    job_timed_out: bool,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records how a step ended.
    pub fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Failed | Outcome::TimedOut => self.failed = true,
            Outcome::Cancelled => self.cancelled = true,
            Outcome::Success | Outcome::Skipped => {}
        }
    }

    /// Records a cancel seen between steps (no step was running to be cancelled).
    pub fn record_cancel(&mut self) {
        self.cancelled = true;
    }

    /// Records that the whole job ran out of time: it counts as a failure, and nothing more runs.
    pub fn record_job_timeout(&mut self) {
        self.failed = true;
        self.job_timed_out = true;
    }

    /// Whether a step with this `when` runs now.
    pub fn decide(&self, when: When) -> Decision {
        if self.cancelled || self.job_timed_out {
            return Decision::Skip;
        }
        let run = match when {
            When::OnSuccess => !self.failed,
            When::OnFailure => self.failed,
            When::Always => true,
        };
        if run { Decision::Run } else { Decision::Skip }
    }

    /// A step failed or timed out, or the job timed out.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// A step was cancelled, or a cancel was seen between steps.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// The whole job ran out of time.
    pub fn job_timed_out(&self) -> bool {
        self.job_timed_out
    }
}

/// Whether a step with this `when` runs after the steps that ended with `previous` (in pipeline
/// order). The same as feeding them to a [`History`].
pub fn decide(previous: &[Outcome], when: When) -> Decision {
    let mut history = History::new();
    for &outcome in previous {
        history.record(outcome);
    }
    history.decide(when)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `previous` as marker states (`"failed"`, …), and the decision for each `when`, in the
    /// order on_success, on_failure, always.
    #[track_caller]
    fn check(previous: &[&str], expected: [Decision; 3]) {
        let outcomes: Vec<Outcome> = previous
            .iter()
            .map(|s| Outcome::parse(s).expect("a known state"))
            .collect();
        let got = When::ALL.map(|w| decide(&outcomes, w));
        assert_eq!(got, expected, "after {previous:?}");
    }

    #[test]
    fn when_rules() {
        use Decision::{Run, Skip};
        check(&[], [Run, Skip, Run]);
        check(&["success"], [Run, Skip, Run]);
        check(&["skipped"], [Run, Skip, Run]);
        check(&["failed"], [Skip, Run, Run]);
        check(&["timed_out"], [Skip, Run, Run]);
        check(&["failed", "success"], [Skip, Run, Run]);
        check(&["failed", "skipped", "success"], [Skip, Run, Run]);
        check(&["cancelled"], [Skip, Skip, Skip]);
        check(&["failed", "cancelled"], [Skip, Skip, Skip]);
        check(&["cancelled", "skipped"], [Skip, Skip, Skip]);
    }

    #[test]
    fn a_cancel_or_a_job_timeout_stops_everything() {
        let mut h = History::new();
        h.record(Outcome::Failed);
        assert_eq!(h.decide(When::Always), Decision::Run);
        h.record_cancel();
        assert!(h.cancelled() && h.failed());
        assert_eq!(h.decide(When::Always), Decision::Skip);

        let mut h = History::new();
        h.record_job_timeout();
        assert!(h.failed() && h.job_timed_out() && !h.cancelled());
        for when in When::ALL {
            assert_eq!(h.decide(when), Decision::Skip, "{when:?}");
        }
    }

    #[test]
    fn spellings_round_trip() {
        for w in When::ALL {
            assert_eq!(When::parse(w.as_str()), Some(w));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(When::parse("On_Success"), None);
        assert_eq!(Outcome::parse("timedout"), None);
        assert_eq!(When::default(), When::OnSuccess);
    }
}
