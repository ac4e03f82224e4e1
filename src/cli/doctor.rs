//! `muster doctor`: checks DESIGN.md's invariants in Redis.

use crate::store::Store;
use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `muster doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Redis to check.
    #[arg(
        long,
        env = "MUSTER_REDIS_URL",
        default_value = crate::config::DEFAULT_REDIS_URL
    )]
    pub redis_url: String,
    /// Key namespace.
    #[arg(long, env = "MUSTER_NAMESPACE", default_value = crate::config::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the checks.
///
/// # Errors
/// Redis unreachable.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let store = Store::connect(&args.redis_url, &args.namespace, Duration::from_secs(5))
        .await
        .with_context(|| {
            format!(
                "cannot connect to redis at {}; pass --redis-url",
                args.redis_url
            )
        })?;
    let report = store.doctor().await.context("reading the keyspace")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for v in &report.violations {
            println!("violation: {v}");
        }
        println!(
            "checked {} queues, {} tasks: {} violation(s)",
            report.queues,
            report.tasks,
            report.violations.len()
        );
    }
    Ok(if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
