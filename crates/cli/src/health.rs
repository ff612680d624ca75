//! `tollgate healthcheck`: the container image's `HEALTHCHECK`, which has no curl to run.

use crate::HealthcheckArgs;
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// Longest the check waits for `/readyz`.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Exits 0 when `URL/readyz` answers 200, else 1 with the reason.
pub async fn run(args: HealthcheckArgs) -> Result<()> {
    let url = format!("{}/readyz", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(HEALTHCHECK_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        bail!("{url} answered {status}");
    }
    Ok(())
}
