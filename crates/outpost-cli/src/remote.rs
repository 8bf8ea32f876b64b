//! `outpost submit | jobs | logs | cancel`: the commands a person runs against a hub.

use std::io::Write;
use std::path::Path;

use outpost_client::{ClientConfig, HubClient};
use outpost_protocol::{GitSource, JobState, Source, SubmitJobRequest};

use crate::{CliError, HubArgs, SubmitArgs};

/// A client for the admin side, from `--hub`/`OUTPOST_HUB` and `OUTPOST_API_KEY`.
pub fn client(hub: &HubArgs) -> Result<(HubClient, String), CliError> {
    let url = hub
        .hub
        .clone()
        .ok_or_else(|| CliError::Usage("no hub URL: pass --hub URL or set OUTPOST_HUB".into()))?;
    let key = hub.api_key.clone().ok_or_else(|| {
        CliError::Usage("no API key: set OUTPOST_API_KEY to the organization's API key".into())
    })?;
    let org = hub.org.clone().ok_or_else(|| {
        CliError::Usage("no organization: pass --org NAME or set OUTPOST_ORG".into())
    })?;
    let client = HubClient::new(ClientConfig::new(url, key))?;
    Ok((client, org))
}

/// Builds the submission: an inline pipeline file, or a git source.
pub fn submission(args: &SubmitArgs) -> Result<SubmitJobRequest, CliError> {
    let variables = crate::parse_vars(&args.vars)?;
    let (pipeline, source) = match (&args.pipeline, &args.git) {
        (Some(path), None) => (Some(read_pipeline(path)?), None),
        (None, Some(url)) => (
            None,
            Some(Source {
                git: GitSource {
                    url: url.clone(),
                    git_ref: args.git_ref.clone(),
                },
                path: args
                    .path
                    .clone()
                    .unwrap_or_else(|| outpost_protocol::DEFAULT_PIPELINE_PATH.to_owned()),
            }),
        ),
        (Some(_), Some(_)) => {
            return Err(CliError::Usage(
                "give either a pipeline file or --git, not both".into(),
            ));
        }
        (None, None) => return Err(CliError::Usage("give a pipeline file or --git URL".into())),
    };
    Ok(SubmitJobRequest {
        pipeline,
        source,
        labels: args.labels.clone(),
        variables,
    })
}

/// Reads a pipeline file and checks it locally first, so a mistake shows with its line and column
/// before anything is sent.
pub fn read_pipeline(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    outpost_pipeline::parse(&path.display().to_string(), &text)?;
    Ok(text)
}

pub async fn submit(hub: &HubArgs, args: &SubmitArgs) -> Result<bool, CliError> {
    let (client, org) = client(hub)?;
    let request = submission(args)?;
    let job = client.submit_job(&org, &request).await?;
    println!("submitted job {}", job.job_id);
    if !args.follow {
        return Ok(true);
    }
    let details = crate::view::watch(&client, &org, job.job_id.as_str()).await?;
    Ok(details.state == JobState::Success)
}

pub async fn jobs(
    hub: &HubArgs,
    state: Option<JobState>,
    limit: Option<u32>,
) -> Result<bool, CliError> {
    let (client, org) = client(hub)?;
    let jobs = client.list_jobs(&org, state, limit).await?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:<25} LABELS",
        "JOB", "STATE", "CREATED"
    );
    for job in jobs {
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<25} {}",
            job.job_id,
            job.state.as_str(),
            job.created_at.to_string(),
            job.labels.join(",")
        );
    }
    Ok(true)
}

pub async fn logs(hub: &HubArgs, job_id: &str, follow: bool) -> Result<bool, CliError> {
    let (client, org) = client(hub)?;
    let mut out = std::io::stdout().lock();
    if !follow {
        let bytes = client.read_log(&org, job_id, 0).await?;
        let _ = out.write_all(&bytes);
        return Ok(true);
    }
    let mut stream = client.follow_log(&org, job_id, 0).await?;
    while let Some(chunk) = stream.next_chunk().await? {
        let _ = out.write_all(&chunk);
        let _ = out.flush();
    }
    Ok(true)
}

pub async fn cancel(hub: &HubArgs, job_id: &str) -> Result<bool, CliError> {
    let (client, org) = client(hub)?;
    let answer = client.cancel_job(&org, job_id).await?;
    if answer.state == JobState::Cancelled {
        println!("job {} cancelled", answer.job_id);
    } else {
        println!(
            "cancel of job {} requested; it is {} and its runner will stop it",
            answer.job_id, answer.state
        );
    }
    Ok(true)
}
