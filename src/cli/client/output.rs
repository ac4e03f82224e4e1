//! What the client commands print: JSON, the task block, durations for people.

use super::errors::one_line;
use crate::domain::Task;
use anyhow::Context as _;
use serde_json::Value;

/// Prints JSON, pretty, on stdout.
pub(super) fn print_json(v: &Value) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot encode JSON")?
    );
    Ok(())
}

/// `task <id> <state>: <error>` for a task that ended without success.
pub(super) fn terminal_failure_line(task: &Task) -> String {
    match task.error.as_deref().map(one_line) {
        Some(err) if !err.is_empty() => format!("task {} {}: {err}", task.id, task.state),
        _ => format!("task {} {}", task.id, task.state),
    }
}

/// Milliseconds since the Unix epoch, now.
pub(super) fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

/// A duration in ms for people: `850ms`, `3.2s`, `4m05s`, `2h03m`, `3d04h`.
pub fn humanize_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths, rounded down so that 59_999 stays below a minute.
        return format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100);
    }
    let secs = ms / 1_000;
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    if secs < 86_400 {
        return format!("{}h{:02}m", secs / 3_600, (secs % 3_600) / 60);
    }
    format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3_600)
}

/// A JSON value for a key/value line: compact when short, indented pretty otherwise.
fn json_field(v: &Value) -> String {
    let compact = v.to_string();
    if compact.len() <= 100 {
        return compact;
    }
    serde_json::to_string_pretty(v).unwrap_or(compact)
}

/// The human view of a task: one `key: value` line per field that is set.
pub fn render_task(t: &Task) -> String {
    let mut rows: Vec<(&str, String)> = vec![
        ("id", t.id.clone()),
        ("queue", t.queue.clone()),
        ("kind", t.kind.clone()),
        (
            "state",
            if t.cancel_requested && !t.state.is_terminal() {
                format!("{} (cancel requested)", t.state)
            } else {
                t.state.to_string()
            },
        ),
        ("priority", t.priority.to_string()),
        ("attempts", format!("{}/{}", t.attempts, t.max_attempts)),
    ];
    let optional = [
        ("node", t.node.clone()),
        ("created", Some(t.created_at.clone())),
        ("run at", t.run_at.clone()),
        ("started", t.started_at.clone()),
        ("finished", t.finished_at.clone()),
        ("lease until", t.lease_expires_at.clone()),
        ("error", t.error.as_deref().map(one_line)),
        ("result", t.result.as_ref().map(json_field)),
        ("progress", t.progress.as_ref().map(json_field)),
    ];
    rows.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
    // Fixed key width (the longest key, `lease until:`) so the layout never shifts.
    let width = "lease until:".len();
    let mut out = String::new();
    for (k, v) in rows {
        // Multi-line values (pretty JSON) continue under the value column.
        let v = v.replace('\n', &format!("\n{:width$} ", ""));
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_are_humanized() {
        assert_eq!(humanize_ms(-5), "0ms");
        assert_eq!(humanize_ms(0), "0ms");
        assert_eq!(humanize_ms(850), "850ms");
        assert_eq!(humanize_ms(1_000), "1.0s");
        assert_eq!(humanize_ms(3_240), "3.2s");
        assert_eq!(humanize_ms(59_999), "59.9s");
        assert_eq!(humanize_ms(60_000), "1m00s");
        assert_eq!(humanize_ms(245_000), "4m05s");
        assert_eq!(humanize_ms(7_380_000), "2h03m");
        assert_eq!(humanize_ms(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
    }

    #[test]
    fn task_block_lists_the_set_fields() -> anyhow::Result<()> {
        let task: Task = serde_json::from_value(json!({
            "id": "01HZTASK.default",
            "queue": "default",
            "kind": "echo",
            "payload": {"x": 1},
            "priority": 5,
            "state": "failed",
            "attempts": 3,
            "max_attempts": 3,
            "timeout_ms": 30000,
            "requires": [],
            "node": "01HZNODE",
            "result": null,
            "error": "boom\nat line 2",
            "progress": {"done": 7},
            "fence": 3,
            "created_at": "2030-01-01T00:00:00.000Z",
            "run_at": null,
            "started_at": "2030-01-01T00:00:01.000Z",
            "finished_at": "2030-01-01T00:00:02.000Z",
            "lease_expires_at": null
        }))?;
        let out = render_task(&task);
        let want = "\
id:          01HZTASK.default
queue:       default
kind:        echo
state:       failed
priority:    5
attempts:    3/3
node:        01HZNODE
created:     2030-01-01T00:00:00.000Z
started:     2030-01-01T00:00:01.000Z
finished:    2030-01-01T00:00:02.000Z
error:       boom at line 2
progress:    {\"done\":7}
";
        assert_eq!(out, want);
        assert_eq!(
            terminal_failure_line(&task),
            "task 01HZTASK.default failed: boom at line 2"
        );
        Ok(())
    }
}
