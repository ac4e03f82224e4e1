//! The demo's progress: polls the queue until every task is terminal, draws the bar,
//! and kills one agent on the way so that recovery is real.

use super::stack::Stack;
use super::{DemoArgs, POLL, QUEUE, REAPER_MS, STALL_TIMEOUT, Say, TASK_TIMEOUT_MS};
use crate::cli::client::Explain as _;
use crate::client::Client;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// Polls the queue until every task is terminal, drawing the progress bar, and kills
/// one agent once `--kill-at-percent` of the tasks are done. Returns the killed agent's
/// name and the percentage it was killed at.
pub(super) async fn track_progress(
    args: &DemoArgs,
    api: &Client,
    stack: &mut Stack,
    total: u64,
    say: &Say,
) -> anyhow::Result<Option<(String, u64)>> {
    let pb = ProgressBar::new(total);
    if std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::stderr());
    } else {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} [{bar:24}] {pos}/{len} tasks {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.enable_steady_tick(Duration::from_millis(100));
    let mut killed: Option<(String, u64)> = None;
    let may_kill = !args.no_chaos && stack.agents.len() >= 2;
    let mut last_done = 0;
    let mut last_change = Instant::now();
    let run_started = Instant::now();
    let res = loop {
        let queues = match api.queues_list().await.explain() {
            Ok(q) => q.value,
            Err(e) => break Err(e),
        };
        let counts = queues
            .items
            .iter()
            .find(|q| q.name == QUEUE)
            .map(|q| q.counts.clone());
        let (succeeded, failed) = counts
            .map(|c| (c.succeeded as u64, (c.failed + c.cancelled) as u64))
            .unwrap_or((0, 0));
        let done = succeeded + failed;
        pb.set_position(done.min(total));
        if let Ok(nodes) = api.nodes_list().await.map(|a| a.value) {
            let mut parts = Vec::new();
            for a in &stack.agents {
                if let Some(n) = nodes.items.iter().find(|n| n.name == a.name) {
                    let dead = if killed.as_ref().is_some_and(|k| k.0 == a.name) {
                        " (killed)"
                    } else {
                        ""
                    };
                    parts.push(format!(
                        "{}:{}{dead}",
                        a.name.trim_start_matches("demo-"),
                        n.succeeded
                    ));
                }
            }
            let rate = done as f64 / run_started.elapsed().as_secs_f64().max(1e-3);
            pb.set_message(format!("{rate:.1}/s  {}", parts.join(" ")));
            if may_kill && killed.is_none() && done * 100 >= total * args.kill_at_percent {
                // Kill an agent that holds leases right now, so that recovery is real.
                let victim = stack
                    .agents
                    .iter()
                    .position(|a| {
                        nodes
                            .items
                            .iter()
                            .any(|n| n.name == a.name && n.running > 0)
                    })
                    .unwrap_or(0);
                let a = &mut stack.agents[victim];
                a.kill().await;
                let pct = done * 100 / total.max(1);
                let line = format!(
                    "killed {} (pid {}) with SIGKILL at {pct}% done: its leases expire within {:.1}s and its tasks run again elsewhere",
                    a.name,
                    a.pid,
                    (TASK_TIMEOUT_MS as f64 + REAPER_MS as f64) / 1000.0
                );
                if !say.quiet {
                    pb.suspend(|| say.line(&line));
                }
                killed = Some((a.name.clone(), pct));
            }
        }
        if done >= total {
            break Ok(());
        }
        if done != last_done {
            last_done = done;
            last_change = Instant::now();
        } else if last_change.elapsed() > STALL_TIMEOUT {
            break Err(anyhow::anyhow!(
                "no task finished for {}s ({done} of {total} done)",
                STALL_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    pb.finish_and_clear();
    res?;
    Ok(killed)
}
