//! Typed calls of the agent protocol: register, heartbeat, lease, extend (one lease or
//! many), reports and
//! deregister. Every call but `nodes_register` carries the node's own token.

use super::{Client, ClientError};
use crate::domain::{
    ExtendBatch, ExtendBatchReply, ExtendReply, ExtendRequest, HeartbeatReply, LeaseReply,
    LeaseRequest, NodeRegistered, RegisterNode, ReportBatch, ReportBatchReply,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Extra time a lease long-poll gets beyond its `wait_ms`.
pub const LONG_POLL_SLACK: Duration = Duration::from_secs(10);

impl Client {
    /// `POST /v1/nodes` with a token allowed to register nodes (`None`: the client's).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_register(
        &self,
        token: Option<&str>,
        body: &RegisterNode,
    ) -> Result<NodeRegistered, ClientError> {
        let mut req = self.request(Method::POST, &["v1", "nodes"]).json(body);
        if token.is_some() {
            req = req.token(token);
        }
        req.fetch().await
    }

    /// `POST /v1/nodes/{id}/heartbeat`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_heartbeat(
        &self,
        node_id: &str,
        token: &str,
    ) -> Result<HeartbeatReply, ClientError> {
        self.node_post(
            &["v1", "nodes", node_id, "heartbeat"],
            token,
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST /v1/nodes/{id}/lease`, long-polling up to `wait_ms`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_lease(
        &self,
        node_id: &str,
        token: &str,
        max: u32,
        wait_ms: u64,
    ) -> Result<LeaseReply, ClientError> {
        let body = LeaseRequest {
            max: Some(i64::from(max)),
            wait_ms: Some(i64::try_from(wait_ms).unwrap_or(i64::MAX)),
        };
        self.request(Method::POST, &["v1", "nodes", node_id, "lease"])
            .token(Some(token))
            .json(&body)
            .timeout(Duration::from_millis(wait_ms) + LONG_POLL_SLACK)
            .fetch()
            .await
    }

    /// `POST /v1/tasks/{id}/extend`.
    ///
    /// # Errors
    /// See [`ClientError`]; 409 and 404 mean the lease is lost.
    pub async fn tasks_extend(
        &self,
        task_id: &str,
        token: &str,
        body: &ExtendRequest,
    ) -> Result<ExtendReply, ClientError> {
        self.node_post(&["v1", "tasks", task_id, "extend"], token, body)
            .await
    }

    /// `POST /v1/nodes/{id}/extend`: renew many leases of the node in one call.
    ///
    /// # Errors
    /// See [`ClientError`]; lost leases are per-item results, not errors.
    pub async fn nodes_extend(
        &self,
        node_id: &str,
        token: &str,
        body: &ExtendBatch,
    ) -> Result<ExtendBatchReply, ClientError> {
        self.request(Method::POST, &["v1", "nodes", node_id, "extend"])
            .token(Some(token))
            .json(body)
            .fetch()
            .await
    }

    /// `POST /v1/nodes/{id}/reports`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_reports(
        &self,
        node_id: &str,
        token: &str,
        body: &ReportBatch,
    ) -> Result<ReportBatchReply, ClientError> {
        self.node_post(&["v1", "nodes", node_id, "reports"], token, body)
            .await
    }

    /// `DELETE /v1/nodes/{id}`.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn nodes_deregister(&self, node_id: &str, token: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, &["v1", "nodes", node_id])
            .token(Some(token))
            .fetch::<serde::de::IgnoredAny>()
            .await
            .map(|_| ())
    }

    /// POSTs `body` with the node's token and decodes the answer.
    async fn node_post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        segments: &[&str],
        token: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        self.request(Method::POST, segments)
            .token(Some(token))
            .json(body)
            .fetch()
            .await
    }
}
