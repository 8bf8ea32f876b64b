//! The rules every backend shares: which step runs after a failure or a cancel, and how the
//! steps' outcomes add up to the job's. The `when` rule itself lives in `outpost-steprules`
//! (std only), so that the process and Docker backends here and the Kubernetes step wrapper run
//! the same code and cannot disagree.

use std::time::Duration;

use outpost_protocol::{Failure, FailureClass, JobResult, StepState};
use outpost_steprules::History;

use crate::model::{JobOutcome, StepOutcome, When};

/// What to do with the next step.
pub use outpost_steprules::Decision as StepDecision;

/// Tracks the steps of one job as they end, decides about the next ones, and adds the outcomes
/// up to the job's ([`StepPlan::outcome`]).
#[derive(Debug, Clone, Default)]
pub struct StepPlan {
    /// Every recorded step outcome, in pipeline order.
    outcomes: Vec<StepOutcome>,
    /// What the shared `when` rule knows of the steps so far (failed, cancelled, job timeout).
    history: History,
    /// A cancel seen between steps, before the step named here: no step was running, so no
    /// step's outcome says `cancelled`, but the job is.
    cancelled_before: Option<String>,
    job_timeout: Option<Failure>,
}

impl StepPlan {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a step with this `when` runs now.
    pub fn decide(&self, when: When) -> StepDecision {
        self.history.decide(match when {
            When::OnSuccess => outpost_steprules::When::OnSuccess,
            When::OnFailure => outpost_steprules::When::OnFailure,
            When::Always => outpost_steprules::When::Always,
        })
    }

    /// Records how a step ended (in pipeline order).
    pub fn record(&mut self, outcome: &StepOutcome) {
        use outpost_steprules::Outcome;
        let rule = match outcome.state {
            StepState::Success => Some(Outcome::Success),
            StepState::Failed => Some(Outcome::Failed),
            StepState::TimedOut => Some(Outcome::TimedOut),
            StepState::Cancelled => Some(Outcome::Cancelled),
            StepState::Skipped => Some(Outcome::Skipped),
            // Not an ending; the rule has nothing to learn from it.
            StepState::Pending | StepState::Running => None,
        };
        if let Some(rule) = rule {
            self.history.record(rule);
        }
        self.outcomes.push(outcome.clone());
    }

    /// Records a cancel seen between steps, before step `step` would have started: nothing more
    /// runs, and the job is `cancelled` even though no step was.
    pub fn record_cancel(&mut self, step: &str) {
        self.history.record_cancel();
        self.cancelled_before.get_or_insert_with(|| step.to_owned());
    }

    /// Records that the whole job ran out of time ([`job_timeout_failure`]): nothing more runs,
    /// and the job is `timed_out` with this failure whatever its steps did.
    pub fn record_job_timeout(&mut self, failure: Failure) {
        self.history.record_job_timeout();
        self.job_timeout.get_or_insert(failure);
    }

    pub fn is_cancelled(&self) -> bool {
        self.history.cancelled()
    }

    /// The outcomes recorded so far, in pipeline order.
    pub fn outcomes(&self) -> &[StepOutcome] {
        &self.outcomes
    }

    /// The job's outcome: [`job_outcome`] of the recorded steps, made `cancelled` by a cancel seen
    /// between steps.
    pub fn outcome(&self) -> JobOutcome {
        let outcome = job_outcome(&self.outcomes, self.job_timeout.clone());
        match &self.cancelled_before {
            Some(step) if outcome.result != JobResult::Cancelled => JobOutcome {
                result: JobResult::Cancelled,
                failure: Some(Failure::new(
                    FailureClass::Cancelled,
                    format!("the job was cancelled before step `{step}`"),
                )),
            },
            _ => outcome,
        }
    }
}

/// The failure of a job that ran out of time after `after`, the same on every backend.
pub fn job_timeout_failure(after: Duration) -> Failure {
    Failure::new(
        FailureClass::Timeout,
        format!("the job timed out after {}", outpost_time::format(after)),
    )
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
        plan.record(&StepOutcome::exited(1, "a"));
        let f = job_timeout_failure(std::time::Duration::from_secs(90));
        plan.record_job_timeout(f.clone());
        assert_eq!(plan.decide(When::Always), StepDecision::Skip);
        assert_eq!(plan.decide(When::OnFailure), StepDecision::Skip);
        assert_eq!(f.message, "the job timed out after 1m30s");
        assert_eq!(
            plan.outcome(),
            JobOutcome {
                result: JobResult::TimedOut,
                failure: Some(f)
            }
        );
    }

    #[test]
    fn a_cancel_between_steps_cancels_the_job() {
        let mut plan = StepPlan::new();
        plan.record(&StepOutcome::exited(1, "a"));
        assert_eq!(plan.decide(When::Always), StepDecision::Run);
        plan.record_cancel("b");
        assert_eq!(plan.decide(When::Always), StepDecision::Skip);
        plan.record(&StepOutcome::skipped());
        let o = plan.outcome();
        assert_eq!(o.result, JobResult::Cancelled);
        let f = o.failure.expect("a failure");
        assert_eq!(f.class, FailureClass::Cancelled);
        assert_eq!(f.message, "the job was cancelled before step `b`");
        assert_eq!(plan.outcomes().len(), 2);
    }

    #[test]
    fn a_cancelled_step_names_itself_in_the_job_outcome() {
        let mut plan = StepPlan::new();
        plan.record(&StepOutcome::cancelled("a"));
        plan.record_cancel("b");
        let o = plan.outcome();
        assert_eq!(o.result, JobResult::Cancelled);
        assert_eq!(
            o.failure.map(|f| f.message),
            Some("step `a` was cancelled".to_owned())
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
}
