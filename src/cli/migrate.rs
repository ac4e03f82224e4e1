//! `muster migrate`: converts a stored keyspace to this muster's schema version.

use super::doctor::KeyspaceArgs;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `muster migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Redis and namespace to convert.
    #[command(flatten)]
    pub keyspace: KeyspaceArgs,
}

/// Converts the keyspace, showing progress per queue. Stop every `muster serve` of the
/// namespace first.
///
/// # Errors
/// Redis unreachable, or a schema version this muster cannot convert.
pub async fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let args = args.keyspace;
    let store = args.connect(Duration::from_secs(30)).await?;
    let pb = ProgressBar::hidden();
    if !args.json {
        pb.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        pb.set_style(
            ProgressStyle::with_template("migrating {pos}/{len} queues {wide_bar}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
    }
    let done = store
        .migrate(|i, n| {
            pb.set_length(n);
            pb.set_position(i);
        })
        .await
        .context("migrating the keyspace")?;
    pb.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&done)?);
    } else {
        match &done.from {
            None => println!(
                "namespace '{}' is empty: nothing to migrate",
                args.namespace
            ),
            Some(v) if *v == done.to => println!("schema version {v} already: nothing to do"),
            Some(v) => println!(
                "schema {v} -> {}: {} tasks converted, {} fields removed",
                done.to, done.tasks, done.fields_removed
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}
