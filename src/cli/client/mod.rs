//! Client commands against a running server: submit, task, queues, nodes, schedules.
//! Each maps its flags onto a [`crate::client::Client`] call and prints the answer.

mod errors;
mod output;
mod payload;
mod tables;

pub(crate) use errors::Explain;
pub use errors::{explain, format_error_answer};
pub use output::{humanize_ms, render_task};
pub use payload::read_payload;
pub use tables::{render_nodes, render_queues, render_schedules};

use crate::client::{Answer, Client, DEFAULT_SERVER};
use crate::domain::{NewTask, TaskState};
use output::{now_ms, print_json, terminal_failure_line};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// Connection flags shared by client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// Control-plane URL.
    #[arg(long, env = "MUSTER_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Bearer token.
    #[arg(long, env = "MUSTER_TOKEN")]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `muster submit`.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Handler name.
    #[arg(long)]
    pub kind: String,
    /// Queue.
    #[arg(long, default_value = "default")]
    pub queue: String,
    /// Payload JSON (`-` reads stdin).
    #[arg(long, conflicts_with = "payload_file")]
    pub payload: Option<String>,
    /// File holding the payload JSON.
    #[arg(long)]
    pub payload_file: Option<std::path::PathBuf>,
    /// 0..=9, higher first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Run no sooner than this many ms from now.
    #[arg(long)]
    pub delay_ms: Option<i64>,
    /// Attempts allowed.
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Lease TTL.
    #[arg(long)]
    pub timeout_ms: Option<i64>,
    /// Idempotency-Key header.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Wait for the task to finish and print its result.
    #[arg(long)]
    pub wait: bool,
    /// With `--wait`: give up after this long (exit 1); waits forever when absent.
    #[arg(long, requires = "wait")]
    pub wait_timeout_ms: Option<u64>,
}

/// Flags of `muster task`.
#[derive(Debug, Clone, clap::Args)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub action: TaskAction,
}

/// `muster task` actions.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TaskAction {
    /// Show a task.
    Get {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wait until a task is terminal and show it.
    Wait {
        /// Task id.
        id: String,
        /// Give up after this long (the task is shown as it stands).
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        #[command(flatten)]
        conn: Conn,
    },
    /// Cancel a task.
    Cancel {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Retry a failed or cancelled task.
    Retry {
        /// Task id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Flags of `muster queues` and `muster nodes`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// A client of the server named by the connection flags.
///
/// # Errors
/// An invalid `--server` URL.
pub fn connect(conn: &Conn) -> anyhow::Result<Client> {
    Client::builder(&[&conn.server])
        .token(conn.token.as_deref())
        .user_agent(concat!("muster-cli/", env!("CARGO_PKG_VERSION")))
        .build()
        .explain()
}

/// `muster submit`.
///
/// # Errors
/// Bad flags, an unreachable server, or an error answer.
pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let payload = read_payload(
        args.payload.as_deref(),
        args.payload_file.as_deref(),
        std::io::stdin(),
    )?;
    let client = connect(&args.conn)?;
    let new = NewTask {
        kind: args.kind.clone(),
        queue: Some(args.queue.clone()),
        payload,
        priority: args.priority,
        delay_ms: args.delay_ms,
        max_attempts: args.max_attempts,
        timeout_ms: args.timeout_ms,
        ..NewTask::default()
    };
    let created = client
        .tasks_create(&new, args.idempotency_key.as_deref())
        .await
        .explain()?;
    if !args.wait {
        if args.conn.json {
            print_json(&created.raw)?;
        } else {
            println!("{}", created.value.id);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = created.value.id.clone();
    let done = client
        .tasks_wait_terminal(&id, args.wait_timeout_ms.map(Duration::from_millis))
        .await
        .explain()?;
    let task = &done.value;
    if !task.state.is_terminal() {
        if args.conn.json {
            print_json(&done.raw)?;
        }
        anyhow::bail!(
            "task {id} still {} after {}",
            task.state,
            humanize_ms(i64::try_from(args.wait_timeout_ms.unwrap_or(0)).unwrap_or(i64::MAX))
        );
    }
    if args.conn.json {
        print_json(&done.raw)?;
    } else if task.state == TaskState::Succeeded {
        print_json(task.result.as_ref().unwrap_or(&Value::Null))?;
    }
    if task.state == TaskState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{}", terminal_failure_line(task));
        Ok(ExitCode::from(1))
    }
}

/// `muster task …`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn task(args: TaskArgs) -> anyhow::Result<ExitCode> {
    let (conn, answer) = match &args.action {
        TaskAction::Get { id, conn } => (conn, connect(conn)?.tasks_get(id).await.explain()?),
        TaskAction::Wait {
            id,
            timeout_ms,
            conn,
        } => {
            let answer = connect(conn)?
                .tasks_wait_terminal(id, Some(Duration::from_millis(*timeout_ms)))
                .await
                .explain()?;
            if !answer.value.state.is_terminal() {
                eprintln!(
                    "task {} still {} after {}",
                    answer.value.id,
                    answer.value.state,
                    humanize_ms(i64::try_from(*timeout_ms).unwrap_or(i64::MAX))
                );
            }
            (conn, answer)
        }
        TaskAction::Cancel { id, conn } => (conn, connect(conn)?.tasks_cancel(id).await.explain()?),
        TaskAction::Retry { id, conn } => (conn, connect(conn)?.tasks_retry(id).await.explain()?),
    };
    if conn.json {
        print_json(&answer.raw)?;
    } else {
        print!("{}", render_task(&answer.value));
    }
    Ok(ExitCode::SUCCESS)
}

/// `muster queues`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn queues(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = connect(&args.conn)?.queues_list().await.explain()?;
    show(&args.conn, &answer, render_queues)
}

/// `muster schedules`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn schedules(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = connect(&args.conn)?.schedules_list().await.explain()?;
    show(&args.conn, &answer, render_schedules)
}

/// `muster nodes`.
///
/// # Errors
/// An unreachable server or an error answer.
pub async fn nodes(args: ListArgs) -> anyhow::Result<ExitCode> {
    let answer = connect(&args.conn)?.nodes_list().await.explain()?;
    show(&args.conn, &answer, |list| render_nodes(list, now_ms()))
}

/// Prints a listing: its JSON as sent with `--json`, else `render` of it.
fn show<T>(
    conn: &Conn,
    answer: &Answer<T>,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<ExitCode> {
    if conn.json {
        print_json(&answer.raw)?;
    } else {
        println!("{}", render(&answer.value));
    }
    Ok(ExitCode::SUCCESS)
}
