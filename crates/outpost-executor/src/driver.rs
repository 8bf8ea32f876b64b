//! The one step loop of the backends that drive a job's steps one by one (process, Docker): which
//! step runs ([`StepPlan`]), the job's deadline and a cancel between steps, the takeover of a step
//! after a runner restart, and every step's `StepFinished`. A backend only says how to run, take
//! over and recall one step ([`StepRunner`]).

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::model::{ExecEvent, JobOutcome, PreparedJob, Resume, StepOutcome, StepSpec};
use crate::plan::{StepDecision, StepPlan, job_timeout_failure};
use crate::{CancellationToken, EventSender, ExecutorError};

/// How a step that the backend ran (or took over) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEnd {
    pub outcome: StepOutcome,
    /// The backend stopped the step because the job's deadline passed: nothing more runs and the
    /// job is `timed_out`.
    pub job_timed_out: bool,
}

impl StepEnd {
    /// A step that ended by itself, by a cancel or by its own time limit.
    pub fn of(outcome: StepOutcome) -> Self {
        Self {
            outcome,
            job_timed_out: false,
        }
    }

    /// A step stopped at the job's deadline; `after` is the job's time limit.
    pub fn job_timeout(step: &StepSpec, after: Duration, exit_code: Option<i32>) -> Self {
        Self {
            outcome: StepOutcome::stopped_by_job_timeout(&step.name, after, exit_code),
            job_timed_out: true,
        }
    }
}

/// What a backend does for [`StepDriver`], one step at a time. The backend sends a step's
/// `StepStarted` (only from [`run_step`](StepRunner::run_step)) and its `Output`; the driver
/// sends every `StepFinished`.
pub trait StepRunner: Send {
    /// Starts `step` and runs it to its end. Sends `StepStarted` once the step has started (or
    /// could not be: a step that cannot start is a failed step, not an error), then its output.
    /// Stops the step when the job's cancel token fires (outcome `cancelled`), at the step's own
    /// `timeout` (`timed_out`), and at `job_deadline` ([`StepEnd::job_timeout`]).
    fn run_step(
        &mut self,
        step: &StepSpec,
        job_deadline: Option<Instant>,
    ) -> impl Future<Output = Result<StepEnd, ExecutorError>> + Send;

    /// Takes over `step`, which a previous runner process started and reported as started:
    /// sends its output after the first `resume.output_bytes` raw bytes, and stops it as
    /// [`run_step`](StepRunner::run_step) does.
    fn resume_step(
        &mut self,
        step: &StepSpec,
        resume: Resume,
        job_deadline: Option<Instant>,
    ) -> impl Future<Output = Result<StepEnd, ExecutorError>> + Send;

    /// How `step` ended, which ran under a previous runner process before the resumed step. Only
    /// the `when` rules of the later steps use it; it is not reported again. Asked only for the
    /// steps the rules ran.
    fn earlier_outcome(
        &mut self,
        step: &StepSpec,
    ) -> impl Future<Output = Result<StepOutcome, ExecutorError>> + Send;
}

/// The step loop of one job. [`drive`](StepDriver::drive) runs it with a backend's
/// [`StepRunner`].
///
/// Before a step starts, the loop asks [`StepPlan`] whether it runs (`when`); then, if it would,
/// whether the job was cancelled (the step is skipped and the job `cancelled`) or its deadline
/// passed (skipped, the job `timed_out`). The step a restarted runner takes over always goes to
/// [`StepRunner::resume_step`]: it was started already, so it is stopped if need be, never
/// reported skipped after its start.
#[derive(Debug)]
pub struct StepDriver<'a> {
    pub job: &'a PreparedJob,
    pub events: &'a EventSender,
    /// The job's cancel token, looked at before each step; the runner watches it during a step.
    pub cancel: &'a CancellationToken,
    /// When the whole job runs out of time (`job.timeout` after it started; after it first
    /// started, when resumed); `None` without a job timeout.
    pub job_deadline: Option<Instant>,
    /// Where a restarted runner takes the job over.
    pub resume: Option<Resume>,
}

impl StepDriver<'_> {
    /// Runs the job's steps in order and returns the job's outcome.
    pub async fn drive<R: StepRunner>(self, runner: &mut R) -> Result<JobOutcome, ExecutorError> {
        let job = self.job;
        let limit = job.timeout.unwrap_or_default();
        let mut plan = StepPlan::new();
        for step in &job.steps {
            if let Some(r) = self.resume
                && step.index < r.step_index
            {
                // Reported by the previous runner process; only needed for the `when` rules.
                let outcome = match plan.decide(step.when) {
                    StepDecision::Run => runner.earlier_outcome(step).await?,
                    StepDecision::Skip => StepOutcome::skipped(),
                };
                plan.record(&outcome);
                continue;
            }
            let outcome = if let Some(r) = self.resume.filter(|r| r.step_index == step.index) {
                let end = runner.resume_step(step, r, self.job_deadline).await?;
                self.absorb(&mut plan, end, limit)
            } else if plan.decide(step.when) == StepDecision::Skip {
                StepOutcome::skipped()
            } else if self.cancel.is_cancelled() {
                plan.record_cancel(&step.name);
                StepOutcome::skipped()
            } else if self.job_deadline.is_some_and(|d| Instant::now() >= d) {
                plan.record_job_timeout(job_timeout_failure(limit));
                StepOutcome::skipped()
            } else {
                let end = runner.run_step(step, self.job_deadline).await?;
                self.absorb(&mut plan, end, limit)
            };
            plan.record(&outcome);
            self.events
                .send(ExecEvent::StepFinished {
                    index: step.index,
                    at: SystemTime::now(),
                    outcome,
                })
                .await
                .map_err(|_| ExecutorError::EventsClosed {
                    job_id: job.job_id.clone(),
                })?;
        }
        Ok(plan.outcome())
    }

    fn absorb(&self, plan: &mut StepPlan, end: StepEnd, limit: Duration) -> StepOutcome {
        if end.job_timed_out {
            plan.record_job_timeout(job_timeout_failure(limit));
        }
        end.outcome
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Write as _;

    use outpost_protocol::{JobId, RunnerId};

    use super::*;
    use crate::model::When;
    use crate::{EventReceiver, event_channel};

    /// What a fake step does.
    #[derive(Debug, Clone, Copy)]
    enum Script {
        /// Exits with this code.
        Exit(i32),
        /// Is stopped by a cancel, which it fires itself.
        CancelledWhileRunning,
        /// Exits 0, and the job is cancelled as it ends (a cancel between steps).
        CancelAfter,
        /// Is stopped at the job's deadline.
        StoppedByJobTimeout,
        /// Exits 0 once the job's deadline has passed.
        Overrun,
    }

    /// A backend whose steps are [`Script`]s, logging what the loop asked of it.
    struct Fake {
        scripts: Vec<Script>,
        events: EventSender,
        cancel: CancellationToken,
        calls: Vec<String>,
    }

    impl Fake {
        fn end(&mut self, step: &StepSpec, job_deadline: Option<Instant>) -> StepEnd {
            match self.scripts[step.index as usize] {
                Script::Exit(code) => StepEnd::of(StepOutcome::exited(code, &step.name)),
                Script::CancelledWhileRunning => {
                    self.cancel.cancel();
                    StepEnd::of(StepOutcome::cancelled(&step.name))
                }
                Script::CancelAfter => {
                    self.cancel.cancel();
                    StepEnd::of(StepOutcome::success())
                }
                Script::StoppedByJobTimeout => {
                    assert!(job_deadline.is_some(), "a job timeout without a deadline");
                    StepEnd::job_timeout(step, Duration::from_secs(2), Some(137))
                }
                Script::Overrun => StepEnd::of(StepOutcome::success()),
            }
        }
    }

    impl StepRunner for Fake {
        async fn run_step(
            &mut self,
            step: &StepSpec,
            job_deadline: Option<Instant>,
        ) -> Result<StepEnd, ExecutorError> {
            self.calls.push(format!("run {}", step.name));
            let started = ExecEvent::StepStarted {
                index: step.index,
                at: SystemTime::now(),
            };
            self.events
                .send(started)
                .await
                .map_err(|_| ExecutorError::EventsClosed {
                    job_id: JobId::from("j_fake"),
                })?;
            if let (Script::Overrun, Some(deadline)) =
                (self.scripts[step.index as usize], job_deadline)
            {
                tokio::time::sleep_until(deadline).await;
            }
            Ok(self.end(step, job_deadline))
        }

        async fn resume_step(
            &mut self,
            step: &StepSpec,
            resume: Resume,
            job_deadline: Option<Instant>,
        ) -> Result<StepEnd, ExecutorError> {
            self.calls
                .push(format!("resume {}@{}", step.name, resume.output_bytes));
            Ok(self.end(step, job_deadline))
        }

        async fn earlier_outcome(&mut self, step: &StepSpec) -> Result<StepOutcome, ExecutorError> {
            self.calls.push(format!("recall {}", step.name));
            Ok(self.end(step, None).outcome)
        }
    }

    fn job(steps: &[(When, Script)], timeout: Option<Duration>) -> PreparedJob {
        PreparedJob {
            job_id: JobId::from("j_fake"),
            runner_id: RunnerId::from("r_fake"),
            cache_scope: String::new(),
            workspace: Default::default(),
            container_workspace: String::new(),
            default_image: None,
            env: BTreeMap::new(),
            secrets: Vec::new(),
            services: Vec::new(),
            caches: Vec::new(),
            steps: steps
                .iter()
                .enumerate()
                .map(|(i, &(when, _))| StepSpec {
                    index: u32::try_from(i).expect("few steps"),
                    name: char::from(b'a' + u8::try_from(i).expect("few steps")).to_string(),
                    image: None,
                    run: String::new(),
                    env: BTreeMap::new(),
                    timeout: None,
                    when,
                })
                .collect(),
            timeout,
        }
    }

    /// `a+` for a started step, `a:failed` for its end; one line of the loop's calls, one of the
    /// events, one of the job's outcome.
    fn render(
        calls: &[String],
        mut rx: EventReceiver,
        outcome: Result<JobOutcome, ExecutorError>,
    ) -> String {
        let mut events = Vec::new();
        while let Ok(event) = rx.try_recv() {
            events.push(match event {
                ExecEvent::StepStarted { index, .. } => format!("{}+", name(index)),
                ExecEvent::StepFinished { index, outcome, .. } => {
                    format!("{}:{}", name(index), outcome.state)
                }
                ExecEvent::Output { index, .. } => format!("{}>", name(index)),
            });
        }
        let mut out = format!(
            "calls: {}\nevents: {}\njob: ",
            calls.join(", "),
            events.join(" ")
        );
        match outcome {
            Ok(o) => {
                write!(out, "{}", o.result.state()).expect("write to a string");
                if let Some(f) = o.failure {
                    write!(out, " ({}) {}", f.class, f.message).expect("write to a string");
                }
            }
            Err(e) => write!(out, "error: {e}").expect("write to a string"),
        }
        out
    }

    fn name(index: u32) -> char {
        char::from(b'a' + u8::try_from(index).expect("few steps"))
    }

    /// Drives a job of `steps` (named a, b, c, …) through the fake backend.
    async fn check(
        steps: &[(When, Script)],
        resume: Option<Resume>,
        timeout: Option<Duration>,
        expected: &str,
    ) {
        let job = job(steps, timeout);
        let (events, rx) = event_channel();
        let cancel = CancellationToken::new();
        let mut fake = Fake {
            scripts: steps.iter().map(|&(_, s)| s).collect(),
            events: events.clone(),
            cancel: cancel.clone(),
            calls: Vec::new(),
        };
        let driver = StepDriver {
            job: &job,
            events: &events,
            cancel: &cancel,
            // Already a little in the past when the loop looks: `Overrun` waits for it.
            job_deadline: timeout.map(|_| Instant::now() + Duration::from_millis(1)),
            resume,
        };
        let outcome = driver.drive(&mut fake).await;
        let got = render(&fake.calls, rx, outcome);
        assert_eq!(got, expected.trim(), "\n--- got:\n{got}\n");
    }

    use Script::*;
    use When::*;

    #[tokio::test]
    async fn when_rules() {
        check(
            &[(OnSuccess, Exit(0)), (OnSuccess, Exit(0))],
            None,
            None,
            "calls: run a, run b\nevents: a+ a:success b+ b:success\njob: success",
        )
        .await;
        check(
            &[
                (OnSuccess, Exit(3)),
                (OnSuccess, Exit(0)),
                (OnFailure, Exit(0)),
                (Always, Exit(0)),
            ],
            None,
            None,
            "calls: run a, run c, run d\n\
             events: a+ a:failed b:skipped c+ c:success d+ d:success\n\
             job: failed (script) step `a` exited with code 3",
        )
        .await;
    }

    #[tokio::test]
    async fn a_cancel_during_a_step_skips_the_rest_even_always_steps() {
        check(
            &[(OnSuccess, CancelledWhileRunning), (Always, Exit(0))],
            None,
            None,
            "calls: run a\nevents: a+ a:cancelled b:skipped\n\
             job: cancelled (cancelled) step `a` was cancelled",
        )
        .await;
    }

    #[tokio::test]
    async fn a_cancel_between_steps_starts_nothing_more_and_cancels_the_job() {
        check(
            &[
                (OnSuccess, CancelAfter),
                (OnSuccess, Exit(0)),
                (Always, Exit(0)),
            ],
            None,
            None,
            "calls: run a\nevents: a+ a:success b:skipped c:skipped\n\
             job: cancelled (cancelled) the job was cancelled before step `b`",
        )
        .await;
        // A cancel that stops nothing (no step would have run after it) changes nothing.
        check(
            &[
                (OnSuccess, Exit(1)),
                (OnFailure, CancelAfter),
                (OnSuccess, Exit(0)),
            ],
            None,
            None,
            "calls: run a, run b\nevents: a+ a:failed b+ b:success c:skipped\n\
             job: failed (script) step `a` exited with code 1",
        )
        .await;
    }

    #[tokio::test]
    async fn a_job_timeout_during_a_step_ends_the_job() {
        check(
            &[
                (OnSuccess, StoppedByJobTimeout),
                (Always, Exit(0)),
                (OnFailure, Exit(0)),
            ],
            None,
            Some(Duration::from_secs(2)),
            "calls: run a\nevents: a+ a:timed_out b:skipped c:skipped\n\
             job: timed_out (timeout) the job timed out after 2s",
        )
        .await;
    }

    #[tokio::test]
    async fn a_deadline_passed_between_steps_starts_nothing_more() {
        check(
            &[(OnSuccess, Overrun), (Always, Exit(0))],
            None,
            Some(Duration::from_secs(5)),
            "calls: run a\nevents: a+ a:success b:skipped\n\
             job: timed_out (timeout) the job timed out after 5s",
        )
        .await;
    }

    #[tokio::test]
    async fn a_resumed_job_recalls_earlier_steps_and_takes_the_running_one_over() {
        check(
            &[
                (OnSuccess, Exit(2)),
                (OnSuccess, Exit(0)),
                (OnFailure, Exit(0)),
                (Always, Exit(0)),
                (OnSuccess, Exit(0)),
            ],
            Some(Resume {
                step_index: 2,
                output_bytes: 10,
            }),
            None,
            // `b` was skipped by the rules, so not recalled; nothing before `c` is reported again.
            "calls: recall a, resume c@10, run d\nevents: c:success d+ d:success e:skipped\n\
             job: failed (script) step `a` exited with code 2",
        )
        .await;
        // The step taken over is taken over even when the job is cancelled: it was started.
        check(
            &[
                (OnSuccess, Exit(0)),
                (OnSuccess, CancelledWhileRunning),
                (Always, Exit(0)),
            ],
            Some(Resume {
                step_index: 1,
                output_bytes: 0,
            }),
            None,
            "calls: recall a, resume b@0\nevents: b:cancelled c:skipped\n\
             job: cancelled (cancelled) step `b` was cancelled",
        )
        .await;
    }

    #[tokio::test]
    async fn a_dropped_event_receiver_ends_the_loop() {
        let job = job(&[(OnSuccess, Exit(0))], None);
        let (events, rx) = event_channel();
        drop(rx);
        let cancel = CancellationToken::new();
        let mut fake = Fake {
            scripts: vec![Exit(0)],
            events: events.clone(),
            cancel: cancel.clone(),
            calls: Vec::new(),
        };
        let driver = StepDriver {
            job: &job,
            events: &events,
            cancel: &cancel,
            job_deadline: None,
            resume: None,
        };
        let result = driver.drive(&mut fake).await;
        assert!(
            matches!(&result, Err(ExecutorError::EventsClosed { job_id }) if job_id == "j_fake"),
            "{result:?}"
        );
    }
}
