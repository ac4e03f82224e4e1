//! Typed calls of the user-facing routes: tasks, queues, nodes (listing), schedules.

use super::{Answer, Client, ClientError, REQUEST_TIMEOUT};
use crate::domain::coord::ScheduleList;
use crate::domain::{BatchCreated, NewTask, NewTaskBatch, NodeList, QueueInfo, QueueList, Task};
use reqwest::Method;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Longest single long-poll of [`Client::tasks_wait_terminal`].
pub const WAIT_CHUNK_MS: u64 = 30_000;

impl Client {
    /// `POST /v1/tasks`, with an `Idempotency-Key` header when given.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_create(
        &self,
        new: &NewTask,
        idempotency_key: Option<&str>,
    ) -> Result<Answer<Task>, ClientError> {
        let mut req = self.request(Method::POST, &["v1", "tasks"]).json(new);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        req.answer().await
    }

    /// `POST /v1/tasks/batch`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_create_batch(
        &self,
        batch: &NewTaskBatch,
    ) -> Result<BatchCreated, ClientError> {
        self.request(Method::POST, &["v1", "tasks", "batch"])
            .json(batch)
            .fetch()
            .await
    }

    /// `GET /v1/tasks/{id}`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_get(&self, id: &str) -> Result<Answer<Task>, ClientError> {
        self.request(Method::GET, &["v1", "tasks", id])
            .answer()
            .await
    }

    /// `GET /v1/tasks?queue=&limit=&cursor=`: one page, undecoded (a page of results
    /// can be megabytes: callers decode it off the async threads).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_list_raw(
        &self,
        queue: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Vec<u8>, ClientError> {
        let limit = limit.to_string();
        let mut req = self
            .request(Method::GET, &["v1", "tasks"])
            .query("queue", queue)
            .query("limit", &limit);
        if let Some(c) = cursor {
            req = req.query("cursor", c);
        }
        Ok(req.send().await?.body)
    }

    /// `GET /v1/tasks/{id}/wait?timeout_ms=`: one long-poll; the task once terminal or
    /// as it stands at the timeout.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_wait(&self, id: &str, timeout_ms: u64) -> Result<Answer<Task>, ClientError> {
        // Leave the server room to answer at its own timeout before ours fires.
        let deadline = Duration::from_millis(timeout_ms) + REQUEST_TIMEOUT;
        self.request(Method::GET, &["v1", "tasks", id, "wait"])
            .query("timeout_ms", &timeout_ms.to_string())
            .timeout(deadline)
            .answer()
            .await
    }

    /// Long-polls in chunks of at most [`WAIT_CHUNK_MS`] until the task is terminal or
    /// `total` has passed (`None`: no limit); returns the task as it last stood.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_wait_terminal(
        &self,
        id: &str,
        total: Option<Duration>,
    ) -> Result<Answer<Task>, ClientError> {
        let start = Instant::now();
        loop {
            let chunk = match total {
                None => WAIT_CHUNK_MS,
                Some(total) => {
                    let left = total.saturating_sub(start.elapsed());
                    u64::try_from(left.as_millis())
                        .unwrap_or(u64::MAX)
                        .min(WAIT_CHUNK_MS)
                }
            };
            let asked = Instant::now();
            let answer = self.tasks_wait(id, chunk).await?;
            if answer.value.state.is_terminal() || chunk == 0 {
                return Ok(answer);
            }
            if total.is_some_and(|t| start.elapsed() >= t) {
                return Ok(answer);
            }
            // Guard against a server that answers early without a terminal state.
            if asked.elapsed() < Duration::from_millis(100) {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }

    /// `POST /v1/tasks/{id}/cancel`; the task as it stands after the cancel.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_cancel(&self, id: &str) -> Result<Answer<Task>, ClientError> {
        self.act_on_task(id, "cancel").await
    }

    /// `POST /v1/tasks/{id}/retry`; the task as it stands after the retry.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn tasks_retry(&self, id: &str) -> Result<Answer<Task>, ClientError> {
        self.act_on_task(id, "retry").await
    }

    /// POSTs `{}` to `/v1/tasks/{id}/{action}`. A body-less success (e.g. 202/204) is
    /// followed by a `GET` so that the task can still be shown.
    async fn act_on_task(&self, id: &str, action: &str) -> Result<Answer<Task>, ClientError> {
        let reply = self
            .request(Method::POST, &["v1", "tasks", id, action])
            .json(&serde_json::json!({}))
            .send()
            .await?;
        match reply.answer()? {
            Some(answer) => Ok(answer),
            None => self.tasks_get(id).await,
        }
    }

    /// `GET /v1/queues`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn queues_list(&self) -> Result<Answer<QueueList>, ClientError> {
        self.request(Method::GET, &["v1", "queues"]).answer().await
    }

    /// `GET /v1/queues/{name}`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn queues_get(&self, name: &str) -> Result<Answer<QueueInfo>, ClientError> {
        self.request(Method::GET, &["v1", "queues", name])
            .answer()
            .await
    }

    /// `GET /v1/nodes`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_list(&self) -> Result<Answer<NodeList>, ClientError> {
        self.request(Method::GET, &["v1", "nodes"]).answer().await
    }

    /// `GET /v1/schedules`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn schedules_list(&self) -> Result<Answer<ScheduleList>, ClientError> {
        self.request(Method::GET, &["v1", "schedules"])
            .answer()
            .await
    }

    /// `GET /healthz`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn healthz(&self) -> Result<Value, ClientError> {
        self.request(Method::GET, &["healthz"]).fetch().await
    }
}
