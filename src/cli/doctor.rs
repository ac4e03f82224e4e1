//! `muster doctor`: checks DESIGN.md's invariants in Redis.

use crate::store::Store;
use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;

/// The keyspace a maintenance command works on (`doctor`, `migrate`).
#[derive(Debug, Clone, clap::Args)]
pub struct KeyspaceArgs {
    /// Redis holding the keyspace.
    #[command(flatten)]
    pub redis: super::redis::RedisArgs,
    /// Key namespace.
    #[arg(long, env = "MUSTER_NAMESPACE", default_value = crate::config::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl KeyspaceArgs {
    /// A store on that keyspace (not prepared: its schema version is not checked).
    ///
    /// # Errors
    /// Redis unreachable or a bad URL.
    pub async fn connect(&self, timeout: Duration) -> anyhow::Result<Store> {
        self.redis.connect(&self.namespace, timeout).await
    }
}

/// Flags of `muster doctor`.
#[derive(Debug, Clone, clap::Args)]
pub struct DoctorArgs {
    /// Redis and namespace to check.
    #[command(flatten)]
    pub keyspace: KeyspaceArgs,
}

/// Runs the checks.
///
/// # Errors
/// Redis unreachable.
pub async fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let store = args.keyspace.connect(Duration::from_secs(5)).await?;
    let report = store.doctor().await.context("reading the keyspace")?;
    // Advice is not a violation: printed (to stderr with --json), the exit code unchanged.
    for a in store.tuning_advice().await.unwrap_or_default() {
        eprintln!("advice: {a}");
    }
    if args.keyspace.json {
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
