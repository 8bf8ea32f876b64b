//! The live view of one job in the terminal: the job's log as it is committed, a line per step as
//! it starts and ends, a spinner with the running step's elapsed time (on a terminal), and a
//! summary with durations and the result. Step names and failure messages come from the runner:
//! their control characters are printed as escapes, so a runner cannot drive the terminal.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use outpost_client::HubClient;
use outpost_protocol::text::escape_control;
use outpost_protocol::{Failure, JobDetails, JobState, StepInfo, StepState};

use crate::CliError;

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];

/// Follows `job_id` until it ends and every log byte is shown; returns the final job.
pub async fn watch(client: &HubClient, org: &str, job_id: &str) -> Result<JobDetails, CliError> {
    let stdout = std::io::stdout();
    let fancy = stdout.is_terminal();
    let color = fancy && std::env::var_os("NO_COLOR").is_none();
    let mut view = View::new(fancy, color);

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let follower = {
        let client = client.clone();
        let (org, job_id) = (org.to_owned(), job_id.to_owned());
        tokio::spawn(async move { follow(client, &org, &job_id, tx).await })
    };

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut poll = tokio::time::interval(Duration::from_millis(250));
    let mut log_done = false;
    let mut shown: u64 = 0;
    let mut last: Option<JobDetails> = None;
    loop {
        tokio::select! {
            chunk = rx.recv(), if !log_done => match chunk {
                Some(bytes) => {
                    shown += bytes.len() as u64;
                    view.output(&bytes);
                }
                None => log_done = true,
            },
            _ = tick.tick() => view.redraw_status(),
            _ = poll.tick() => {
                let details = client.get_job(org, job_id).await?;
                view.steps(&details.steps);
                last = Some(details);
            }
        }
        if let Some(details) = &last
            && details.state.is_terminal()
            && (log_done || shown >= details.log_bytes)
        {
            break;
        }
    }
    follower.abort();
    let details = client.get_job(org, job_id).await?;
    view.steps(&details.steps);
    view.finish(&details);
    Ok(details)
}

/// Streams the log from offset 0 into `tx`, reconnecting from where it stopped if the stream
/// breaks before the job ends.
async fn follow(client: HubClient, org: &str, job_id: &str, tx: tokio::sync::mpsc::Sender<Bytes>) {
    let mut offset = 0;
    loop {
        let Ok(mut stream) = client.follow_log(org, job_id, offset).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        loop {
            match stream.next_chunk().await {
                Ok(Some(chunk)) => {
                    offset += chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
                // The hub ends the stream when the job has ended and everything was sent.
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct View {
    fancy: bool,
    color: bool,
    /// Output bytes after the last newline, held back on a terminal so the status line can be
    /// drawn below complete lines.
    partial: Vec<u8>,
    status_drawn: bool,
    frame: usize,
    steps: BTreeMap<u32, StepInfo>,
    running_since: BTreeMap<u32, Instant>,
    started: Instant,
}

impl View {
    fn new(fancy: bool, color: bool) -> Self {
        Self {
            fancy,
            color,
            partial: Vec::new(),
            status_drawn: false,
            frame: 0,
            steps: BTreeMap::new(),
            running_since: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    fn clear_status(&mut self, out: &mut impl Write) {
        if self.status_drawn {
            let _ = out.write_all(b"\r\x1b[2K");
            self.status_drawn = false;
        }
    }

    fn output(&mut self, bytes: &[u8]) {
        let mut out = std::io::stdout().lock();
        if !self.fancy {
            let _ = out.write_all(bytes);
            let _ = out.flush();
            return;
        }
        self.partial.extend_from_slice(bytes);
        if let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') {
            self.clear_status(&mut out);
            let rest = self.partial.split_off(last_nl + 1);
            let _ = out.write_all(&self.partial);
            self.partial = rest;
        }
        drop(out);
        self.redraw_status();
    }

    fn redraw_status(&mut self) {
        if !self.fancy || !self.partial.is_empty() {
            return;
        }
        let Some((&index, since)) = self.running_since.iter().next() else {
            return;
        };
        let name = self
            .steps
            .get(&index)
            .map(|s| escape_control(&s.name).into_owned())
            .unwrap_or_default();
        self.frame = (self.frame + 1) % SPINNER.len();
        let line = format!(
            "{} {}  {}",
            self.paint("36", SPINNER[self.frame]),
            name,
            self.paint("2", &outpost_time::format(since.elapsed()))
        );
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K{line}");
        let _ = out.flush();
        self.status_drawn = true;
    }

    /// Prints a line for every step that started or ended since the last snapshot.
    fn steps(&mut self, steps: &[StepInfo]) {
        for step in steps {
            let previous = self.steps.get(&step.index).map(|s| s.state);
            if previous == Some(step.state) {
                continue;
            }
            match step.state {
                StepState::Running => {
                    self.running_since.insert(step.index, Instant::now());
                }
                state if state.is_terminal() => {
                    self.running_since.remove(&step.index);
                    // Without a terminal the log's own step headers and the summary suffice.
                    if self.fancy {
                        let line = self.step_line(step);
                        self.line(&line);
                    }
                }
                _ => {}
            }
            self.steps.insert(step.index, step.clone());
        }
    }

    fn step_line(&self, step: &StepInfo) -> String {
        let took = step_duration(step)
            .map(outpost_time::format)
            .unwrap_or_default();
        let (mark, detail) = match step.state {
            StepState::Success => (self.paint("32", "✔"), String::new()),
            StepState::Skipped => (self.paint("2", "–"), "skipped".to_owned()),
            StepState::Failed => (
                self.paint("31", "✘"),
                step.exit_code
                    .map(|c| format!("exit {c}"))
                    .unwrap_or_else(|| "failed".into()),
            ),
            StepState::TimedOut => (self.paint("31", "✘"), "timed out".to_owned()),
            StepState::Cancelled => (self.paint("33", "⊘"), "cancelled".to_owned()),
            StepState::Pending | StepState::Running => (" ".to_owned(), String::new()),
        };
        format!(
            "{mark} {:<20} {:>8}  {detail}",
            escape_control(&step.name),
            took
        )
        .trim_end()
        .to_owned()
    }

    fn line(&mut self, text: &str) {
        let mut out = std::io::stdout().lock();
        self.clear_status(&mut out);
        if !self.partial.is_empty() {
            let _ = out.write_all(&std::mem::take(&mut self.partial));
            let _ = out.write_all(b"\n");
        }
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }

    fn finish(&mut self, job: &JobDetails) {
        {
            let mut out = std::io::stdout().lock();
            self.clear_status(&mut out);
            if !self.partial.is_empty() {
                let _ = out.write_all(&std::mem::take(&mut self.partial));
                let _ = out.write_all(b"\n");
            }
        }
        let mut text = String::from("\n");
        text.push_str(&format!(
            "{}\n",
            self.paint("1", &format!("job {}", job.job_id))
        ));
        for step in &job.steps {
            text.push_str(&format!("  {}\n", self.step_line(step)));
        }
        let total = match (job.started_at, job.finished_at) {
            (Some(a), Some(b)) => b
                .system_time()
                .duration_since(a.system_time())
                .unwrap_or_default(),
            _ => self.started.elapsed(),
        };
        let result = match job.state {
            JobState::Success => self.paint("32", "success"),
            JobState::Cancelled => self.paint("33", "cancelled"),
            other => self.paint("31", other.as_str()),
        };
        text.push_str(&format!(
            "result: {result} in {}",
            outpost_time::format(total)
        ));
        if let Some(f) = &job.failure {
            text.push_str(&failure_text(f));
        }
        self.line(&text);
    }
}

/// ` (class: message)` for the summary line. The message comes from the runner: its control
/// characters are shown as escapes, never sent to the terminal.
fn failure_text(failure: &Failure) -> String {
    format!(" ({}: {})", failure.class, escape_control(&failure.message))
}

fn step_duration(step: &StepInfo) -> Option<Duration> {
    let (a, b) = (step.started_at?, step.finished_at?);
    b.system_time().duration_since(a.system_time()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_say_how_a_step_ended() {
        let view = View::new(false, false);
        let step = StepInfo {
            index: 1,
            name: "test".into(),
            state: StepState::Failed,
            exit_code: Some(2),
            started_at: Some(outpost_protocol::Timestamp::from_unix_millis(1_000)),
            finished_at: Some(outpost_protocol::Timestamp::from_unix_millis(13_340)),
            failure: None,
            log_offset: None,
        };
        assert_eq!(
            view.step_line(&step),
            "✘ test                    12.3s  exit 2"
        );
    }

    #[test]
    fn what_a_runner_named_cannot_drive_the_terminal() {
        let view = View::new(false, false);
        let step = StepInfo {
            index: 0,
            name: "\x1b]0;pwned\x07x\n✔ deploy".into(),
            state: StepState::Skipped,
            exit_code: None,
            started_at: None,
            finished_at: None,
            failure: None,
            log_offset: None,
        };
        let line = view.step_line(&step);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("\\u{1b}]0;pwned\\u{7}x\\n✔ deploy"),
            "{line:?}"
        );
        let failure = outpost_protocol::Failure::new(
            outpost_protocol::FailureClass::Script,
            "exit 2\x1b[1A\x1b[2K✔ success",
        );
        let text = failure_text(&failure);
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert_eq!(text, " (script: exit 2\\u{1b}[1A\\u{1b}[2K✔ success)");
    }
}
