//! The rules every backend shares: which step runs after a failure or a cancel, and how the
//! steps' outcomes add up to the job's. Kept here so that the process and Docker backends and the
//! Kubernetes step wrapper cannot disagree.

use outpost_protocol::{Failure, FailureClass, JobResult, StepState};

use crate::model::{JobOutcome, StepOutcome, When};

/// What to do with the next step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepDecision {
    Run,
    Skip,
}

/// Tracks the steps of one job as they end and decides about the next ones.
#[derive(Debug, Clone, Default)]
pub struct StepPlan {
    failed: bool,
    cancelled: bool,
    job_timed_out: bool,
}

impl StepPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a step with this `when` runs now.
    pub fn decide(&self, when: When) -> StepDecision {
        if self.cancelled || self.job_timed_out {
            return StepDecision::Skip;
        }
        let run = match when {
            When::OnSuccess => !self.failed,
            When::OnFailure => self.failed,
            When::Always => true,
        };
        if run {
            StepDecision::Run
        } else {
            StepDecision::Skip
        }
    }

    /// Records how a step ended.
    pub fn record(&mut self, outcome: &StepOutcome) {
        match outcome.state {
            StepState::Failed | StepState::TimedOut => self.failed = true,
            StepState::Cancelled => self.cancelled = true,
            _ => {}
        }
    }

    /// Records that the whole job ran out of time: nothing more runs.
    pub fn record_job_timeout(&mut self) {
        self.job_timed_out = true;
        self.failed = true;
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
}

/// The job's outcome from its steps' outcomes (in pipeline order): cancelled if any step was
/// cancelled, else timed out if any step timed out, else failed with the first failure, else
/// success. `job_timeout` marks a whole-job timeout, which wins over a step's failure.
pub fn job_outcome(steps: &[StepOutcome], job_timeout: Option<Failure>) -> JobOutcome {
    if let Some(failure) = job_timeout {
        return JobOutcome {
            result: JobResult::TimedOut,
            failure: Some(failure),
        };
    }
    if let Some(s) = steps.iter().find(|s| s.state == StepState::Cancelled) {
        return JobOutcome {
            result: JobResult::Cancelled,
            failure: s
                .failure
                .clone()
                .or(Some(Failure::new(FailureClass::Cancelled, "cancelled"))),
        };
    }
    let first_failure = steps
        .iter()
        .find(|s| matches!(s.state, StepState::Failed | StepState::TimedOut));
    match first_failure {
        Some(s) if s.state == StepState::TimedOut => JobOutcome {
            result: JobResult::TimedOut,
            failure: s.failure.clone(),
        },
        Some(s) => JobOutcome {
            result: JobResult::Failed,
            failure: s.failure.clone(),
        },
        None => JobOutcome {
            result: JobResult::Success,
            failure: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(state: StepState) -> StepOutcome {
        match state {
            StepState::Success => StepOutcome::success(),
            StepState::Failed => StepOutcome::exited(1, "s"),
            StepState::Cancelled => StepOutcome::cancelled("s"),
            StepState::TimedOut => StepOutcome::timed_out("s", std::time::Duration::from_secs(1)),
            _ => StepOutcome::skipped(),
        }
    }

    /// Runs a sequence of (when, state-if-run) and returns which ran plus the job result.
    fn check(steps: &[(When, StepState)], expected_ran: &[bool], expected: JobResult) {
        let mut plan = StepPlan::new();
        let mut outcomes = Vec::new();
        let mut ran = Vec::new();
        for &(when, state) in steps {
            let run = plan.decide(when) == StepDecision::Run;
            ran.push(run);
            let o = if run {
                outcome(state)
            } else {
                StepOutcome::skipped()
            };
            plan.record(&o);
            outcomes.push(o);
        }
        assert_eq!(ran, expected_ran, "which steps ran");
        assert_eq!(job_outcome(&outcomes, None).result, expected);
    }

    #[test]
    fn when_rules() {
        use StepState::*;
        use When::*;
        check(
            &[(OnSuccess, Success), (OnSuccess, Success)],
            &[true, true],
            JobResult::Success,
        );
        check(
            &[
                (OnSuccess, Failed),
                (OnSuccess, Success),
                (OnFailure, Success),
                (Always, Success),
            ],
            &[true, false, true, true],
            JobResult::Failed,
        );
        check(
            &[(OnSuccess, Success), (OnFailure, Success)],
            &[true, false],
            JobResult::Success,
        );
        check(
            &[(OnSuccess, TimedOut), (OnFailure, Success)],
            &[true, true],
            JobResult::TimedOut,
        );
        check(
            &[
                (OnSuccess, Cancelled),
                (Always, Success),
                (OnFailure, Success),
            ],
            &[true, false, false],
            JobResult::Cancelled,
        );
    }

    #[test]
    fn job_timeout_wins_and_stops_everything() {
        let mut plan = StepPlan::new();
        plan.record_job_timeout();
        assert_eq!(plan.decide(When::Always), StepDecision::Skip);
        let f = Failure::new(FailureClass::Timeout, "job timed out");
        let o = job_outcome(&[StepOutcome::success()], Some(f.clone()));
        assert_eq!(
            o,
            JobOutcome {
                result: JobResult::TimedOut,
                failure: Some(f)
            }
        );
    }

    #[test]
    fn first_failure_is_reported() {
        let o = job_outcome(
            &[StepOutcome::exited(3, "a"), StepOutcome::exited(4, "b")],
            None,
        );
        assert_eq!(
            o.failure.map(|f| f.message),
            Some("step `a` exited with code 3".to_owned())
        );
    }

    #[test]
    fn humanized_durations() {
        use crate::model::humanize;
        use std::time::Duration;
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(3600)), "1h");
        assert_eq!(humanize(Duration::from_millis(250)), "250ms");
    }
}
