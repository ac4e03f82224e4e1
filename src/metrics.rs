//! Prometheus metrics. Process-local figures (HTTP durations, latencies, dispatcher
//! assignments) live in a registry; queue and node figures are read from Redis at
//! scrape time, so every replica reports the same cluster-wide values.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// Process-local metrics.
pub struct Metrics {
    registry: Registry,
    /// HTTP request durations by method, route and status.
    pub http: HistogramVec,
    /// Submit (or due time) → lease start, by queue.
    pub wait: HistogramVec,
    /// Lease start → accepted completion, by queue.
    pub run: HistogramVec,
    /// Tasks assigned by this process's dispatcher, by queue.
    pub assigned: IntCounterVec,
}

fn buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ]
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let http = HistogramVec::new(
            HistogramOpts::new(
                "muster_http_request_duration_seconds",
                "HTTP request durations",
            )
            .buckets(buckets()),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let wait = HistogramVec::new(
            HistogramOpts::new(
                "muster_task_wait_seconds",
                "Time from a task being due to its lease start",
            )
            .buckets(buckets()),
            &["queue"],
        )
        .expect("valid metric");
        let run = HistogramVec::new(
            HistogramOpts::new(
                "muster_task_run_seconds",
                "Time from lease start to accepted completion",
            )
            .buckets(buckets()),
            &["queue"],
        )
        .expect("valid metric");
        let assigned = IntCounterVec::new(
            Opts::new(
                "muster_dispatcher_assigned_total",
                "Tasks assigned to nodes by this process",
            ),
            &["queue"],
        )
        .expect("valid metric");
        for c in [&http, &wait, &run] {
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
        }
        registry
            .register(Box::new(assigned.clone()))
            .expect("unique metric");
        Metrics {
            registry,
            http,
            wait,
            run,
            assigned,
        }
    }

    /// The process-local metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Escapes a label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
