//! The tables of `muster queues`, `muster nodes` and `muster schedules`: borderless,
//! independent of the terminal width, numbers aligned right.

use super::output::humanize_ms;
use crate::domain::coord::ScheduleList;
use crate::domain::{Node, NodeList, QueueInfo, QueueList};
use comfy_table::{CellAlignment, Table};

/// (by index) aligned right.
fn new_table(header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .force_no_tty()
        .set_header(header.to_vec());
    for (i, col) in table.column_iter_mut().enumerate() {
        col.set_padding((0, 2));
        if right.contains(&i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// Renders a table with trailing spaces trimmed from every line.
fn finish_table(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `muster queues` table.
pub fn render_queues(list: &QueueList) -> String {
    let header = [
        "QUEUE",
        "PAUSED",
        "PENDING",
        "SCHEDULED",
        "ASSIGNED",
        "RUNNING",
        "RETRYING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "OLDEST PENDING",
    ];
    let mut table = new_table(&header, &[2, 3, 4, 5, 6, 7, 8, 9, 10]);
    for q in &list.items {
        table.add_row(queue_row(q));
    }
    finish_table(&table)
}

/// One row of the queues table.
fn queue_row(q: &QueueInfo) -> Vec<String> {
    let c = &q.counts;
    vec![
        q.name.clone(),
        if q.paused { "yes" } else { "no" }.to_owned(),
        c.pending.to_string(),
        c.scheduled.to_string(),
        c.assigned.to_string(),
        c.running.to_string(),
        c.retrying.to_string(),
        c.succeeded.to_string(),
        c.failed.to_string(),
        c.cancelled.to_string(),
        q.oldest_pending_age_ms
            .map_or_else(|| "-".to_owned(), humanize_ms),
    ]
}

/// The `muster nodes` table; `now_ms` dates the LAST SEEN ages.
pub fn render_nodes(list: &NodeList, now_ms: i64) -> String {
    let header = [
        "ID",
        "NAME",
        "KIND",
        "STATUS",
        "QUEUES",
        "CAPACITY",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "MEAN RUN",
        "LAST SEEN",
    ];
    let mut table = new_table(&header, &[5, 6, 7, 8, 9, 10]);
    for n in &list.items {
        table.add_row(node_row(n, now_ms));
    }
    finish_table(&table)
}

/// One row of the nodes table.
fn node_row(n: &Node, now_ms: i64) -> Vec<String> {
    let last_seen = match crate::domain::parse_rfc3339_ms(&n.last_seen_at) {
        Some(at) => format!("{} ago", humanize_ms(now_ms.saturating_sub(at))),
        None => n.last_seen_at.clone(),
    };
    let mean = n
        .mean_run_ms
        .filter(|m| m.is_finite())
        .map_or_else(|| "-".to_owned(), |m| humanize_ms(m.round() as i64));
    vec![
        n.id.clone(),
        n.name.clone(),
        n.kind.as_str().to_owned(),
        n.status.as_str().to_owned(),
        if n.queues.is_empty() {
            "-".to_owned()
        } else {
            n.queues.join(",")
        },
        n.capacity.to_string(),
        n.running.to_string(),
        n.succeeded.to_string(),
        n.failed.to_string(),
        mean,
        last_seen,
    ]
}

/// The `muster schedules` table: one row per schedule with its next and last fire.
pub fn render_schedules(list: &ScheduleList) -> String {
    let header = [
        "SCHEDULE",
        "CRON",
        "TIMEZONE",
        "PAUSED",
        "NEXT FIRE",
        "LAST FIRE",
        "FIRED",
        "SKIPPED",
        "MISSED",
    ];
    let mut table = new_table(&header, &[6, 7, 8]);
    for s in &list.items {
        let last = s
            .last_fires
            .first()
            .map(|f| format!("{} {:?}", f.tick_at, f.outcome).to_lowercase())
            .unwrap_or_else(|| "-".into());
        table.add_row(vec![
            s.name.clone(),
            s.cron.clone(),
            s.timezone.clone(),
            if s.paused { "yes" } else { "no" }.to_owned(),
            s.next_fire_at.clone().unwrap_or_else(|| "-".into()),
            last,
            s.fired.to_string(),
            s.skipped.to_string(),
            s.missed.to_string(),
        ]);
    }
    finish_table(&table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{NodeKind, NodeStatus, QueueCounts};

    fn queue_fixture() -> QueueList {
        QueueList {
            items: vec![
                QueueInfo {
                    name: "default".into(),
                    paused: false,
                    weight: 1,
                    human_only: false,
                    counts: QueueCounts {
                        pending: 12,
                        scheduled: 3,
                        assigned: 2,
                        running: 4,
                        retrying: 1,
                        succeeded: 1234,
                        failed: 5,
                        cancelled: 6,
                        ..QueueCounts::default()
                    },
                    max_running: None,
                    rate_limit: None,
                    oldest_pending_age_ms: Some(3_200),
                    shards: 1,
                },
                QueueInfo {
                    name: "emails".into(),
                    paused: true,
                    weight: 2,
                    human_only: false,
                    counts: QueueCounts::default(),
                    max_running: None,
                    rate_limit: None,
                    oldest_pending_age_ms: None,
                    shards: 1,
                },
            ],
        }
    }

    fn cells(line: &str) -> Vec<&str> {
        line.split_whitespace().collect()
    }

    #[test]
    fn queues_table_shows_counts() {
        let out = render_queues(&queue_fixture());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("QUEUE"), "{out}");
        assert!(lines[0].ends_with("OLDEST PENDING"), "{out}");
        assert_eq!(
            cells(lines[1]),
            [
                "default", "no", "12", "3", "2", "4", "1", "1234", "5", "6", "3.2s"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            ["emails", "yes", "0", "0", "0", "0", "0", "0", "0", "0", "-"]
        );
        assert!(out.lines().all(|l| l == l.trim_end()));
        // Columns line up: every line has the same width up to the last column.
        let empty = render_queues(&QueueList { items: vec![] });
        assert_eq!(empty.lines().count(), 1);
    }

    #[test]
    fn nodes_table_shows_nodes() {
        let now = crate::domain::parse_rfc3339_ms("2030-01-01T00:00:10.000Z").unwrap_or(0);
        let list = NodeList {
            items: vec![
                Node {
                    id: "01HZNODEAAAA".into(),
                    name: "worker-1".into(),
                    kind: NodeKind::Machine,
                    status: NodeStatus::Active,
                    queues: vec!["default".into(), "emails".into()],
                    tags: vec!["gpu".into()],
                    capacity: 8,
                    running: 3,
                    succeeded: 120,
                    failed: 2,
                    mean_run_ms: Some(1_540.4),
                    registered_at: "2030-01-01T00:00:00.000Z".into(),
                    last_seen_at: "2030-01-01T00:00:08.500Z".into(),
                },
                Node {
                    id: "01HZNODEBBBB".into(),
                    name: "alice".into(),
                    kind: NodeKind::Human,
                    status: NodeStatus::Offline,
                    queues: vec![],
                    tags: vec![],
                    capacity: 1,
                    running: 0,
                    succeeded: 0,
                    failed: 0,
                    mean_run_ms: None,
                    registered_at: "2030-01-01T00:00:00.000Z".into(),
                    last_seen_at: "2029-12-31T23:55:00.000Z".into(),
                },
            ],
        };
        let out = render_nodes(&list, now);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert_eq!(
            cells(lines[0]),
            [
                "ID",
                "NAME",
                "KIND",
                "STATUS",
                "QUEUES",
                "CAPACITY",
                "RUNNING",
                "SUCCEEDED",
                "FAILED",
                "MEAN",
                "RUN",
                "LAST",
                "SEEN"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            [
                "01HZNODEAAAA",
                "worker-1",
                "machine",
                "active",
                "default,emails",
                "8",
                "3",
                "120",
                "2",
                "1.5s",
                "1.5s",
                "ago"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "01HZNODEBBBB",
                "alice",
                "human",
                "offline",
                "-",
                "1",
                "0",
                "0",
                "0",
                "-",
                "5m10s",
                "ago"
            ]
        );
    }
}
