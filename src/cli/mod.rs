//! The command line (DESIGN.md "CLI"): one binary, one module per command.

pub mod agent;
pub mod bench;
pub mod client;
pub mod demo;
pub mod dev;
pub mod doctor;
pub mod local;
pub mod migrate;
pub mod redis;
pub mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// muster: distributed task processing on Redis.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `text` or `json`.
    #[arg(long, global = true, env = "MUSTER_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (HTTP API, dispatcher, reconciler, timers).
    Serve(serve::ServeArgs),
    /// Run a node agent that leases tasks and runs them.
    Agent(agent::AgentArgs),
    /// Private redis-server + control plane + local agents, for development.
    Dev(dev::DevArgs),
    /// Run the demo workload (word frequencies over a generated corpus) and exit.
    Demo(demo::DemoArgs),
    /// Submit a task.
    Submit(client::SubmitArgs),
    /// Inspect or act on one task.
    Task(client::TaskArgs),
    /// List queues with their counts.
    Queues(client::ListArgs),
    /// List nodes.
    Nodes(client::ListArgs),
    /// List cron schedules with their next and last fires.
    Schedules(client::ListArgs),
    /// Check the Redis invariants; exit 1 on any violation.
    Doctor(doctor::DoctorArgs),
    /// End-to-end benchmark on a private Redis.
    Bench(bench::BenchArgs),
    /// Convert a stored keyspace to this version's schema (stop every server first).
    Migrate(migrate::MigrateArgs),
}

impl Command {
    /// Commands whose logs stay at warnings by default (their output is the point).
    pub fn quiet(&self) -> bool {
        matches!(
            self,
            Command::Submit(_)
                | Command::Task(_)
                | Command::Queues(_)
                | Command::Nodes(_)
                | Command::Schedules(_)
                | Command::Demo(_)
                | Command::Bench(_)
        )
    }
}

/// Runs the command and maps errors to a one-line message and a non-zero exit.
pub fn main(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Agent(a) => agent::run(a).await,
            Command::Dev(a) => dev::run(a).await,
            Command::Demo(a) => demo::run(a).await,
            Command::Submit(a) => client::submit(a).await,
            Command::Task(a) => client::task(a).await,
            Command::Queues(a) => client::queues(a).await,
            Command::Nodes(a) => client::nodes(a).await,
            Command::Schedules(a) => client::schedules(a).await,
            Command::Doctor(a) => doctor::run(a).await,
            Command::Bench(a) => bench::run(a).await,
            Command::Migrate(a) => migrate::run(a).await,
        }
    });
    match res {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes.
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                // Error types often repeat their source in their own message.
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
