//! The demo's fan-in: every result is fetched, page by page, and the word counts of
//! the succeeded tasks merged.

use super::QUEUE;
use crate::cli::client::Explain as _;
use crate::client::Client;
use crate::domain::{TaskPage, TaskState};
use anyhow::Context as _;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// Tasks listed per page in the fan-in (a page of results is a few MB of JSON).
const FAN_IN_PAGE: usize = 100;

/// The merged results of the fan-in so far.
#[derive(Default)]
struct FanIn {
    wanted: HashSet<String>,
    seen: HashSet<String>,
    words: HashMap<String, u64>,
    total: u64,
    retries: u64,
    succeeded: u64,
}

impl FanIn {
    /// Decodes one page of `GET /v1/tasks` and merges its results; returns the next
    /// cursor. CPU work: run it off the async threads.
    fn absorb(&mut self, body: &[u8]) -> anyhow::Result<Option<String>> {
        let page: TaskPage =
            serde_json::from_slice(body).context("GET /v1/tasks: unexpected answer")?;
        for t in page.items {
            if !self.wanted.contains(&t.id) || !self.seen.insert(t.id.clone()) {
                continue;
            }
            self.retries += t.attempts.saturating_sub(1).max(0) as u64;
            if t.state != TaskState::Succeeded {
                continue;
            }
            let result = t.result.unwrap_or(Value::Null);
            let words = result
                .get("words")
                .and_then(Value::as_object)
                .with_context(|| format!("task {} has no word counts in its result", t.id))?;
            for (w, c) in words {
                let c = c
                    .as_u64()
                    .with_context(|| format!("task {}: count of {w} is not a number", t.id))?;
                *self.words.entry(w.clone()).or_insert(0) += c;
            }
            self.total += result
                .get("total")
                .and_then(Value::as_u64)
                .with_context(|| format!("task {} has no total in its result", t.id))?;
            self.succeeded += 1;
        }
        Ok(page.next_cursor.filter(|c| !c.is_empty()))
    }
}

/// Fetches every task of the demo queue and merges the word counts of the succeeded
/// ones. Returns (words, total, retries, succeeded, others).
pub(super) async fn fan_in(
    api: &Client,
    ids: &[String],
) -> anyhow::Result<(HashMap<String, u64>, u64, u64, u64, u64)> {
    let mut acc = FanIn {
        wanted: ids.iter().cloned().collect(),
        ..FanIn::default()
    };
    let mut cursor: Option<String> = None;
    loop {
        let body = api
            .tasks_list_raw(QUEUE, FAN_IN_PAGE, cursor.as_deref())
            .await
            .explain()
            .context("cannot list the finished tasks")?;
        let (back, next) = tokio::task::spawn_blocking(move || {
            let next = acc.absorb(&body);
            (acc, next)
        })
        .await
        .context("the fan-in panicked")?;
        acc = back;
        match next? {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    anyhow::ensure!(
        acc.seen.len() == ids.len(),
        "listed {} of the {} submitted tasks",
        acc.seen.len(),
        ids.len()
    );
    let others = acc.seen.len() as u64 - acc.succeeded;
    Ok((acc.words, acc.total, acc.retries, acc.succeeded, others))
}
