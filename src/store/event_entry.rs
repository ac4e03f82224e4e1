//! The entry format of a queue's event stream (`keys::events`), written by `lua/lib.lua`
//! (`emit`, `flush_events`): fields `type`, `node`, `state` and either `task` (one task)
//! or `tasks` (several, ids separated by one space: one entry per script call and kind
//! of event). Each task of an entry is one event; its id is `<stream id>@<queue>` when the
//! entry holds one task, `<stream id>.<index>@<queue>` when it holds more.

use std::collections::HashMap;

/// The tasks of an entry, in order (removes `task`/`tasks` from `fields`).
pub fn entry_tasks(fields: &mut HashMap<String, String>) -> Vec<String> {
    if let Some(t) = fields.remove("task") {
        return vec![t];
    }
    fields
        .remove("tasks")
        .map(|ts| {
            ts.split(' ')
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The event id of the `index`-th of the `of` tasks of entry `sid` in `queue`.
pub fn event_id(sid: &str, index: usize, of: usize, queue: &str) -> String {
    if of == 1 {
        format!("{sid}@{queue}")
    } else {
        format!("{sid}.{index}@{queue}")
    }
}

/// An event id as (stream id, index within its entry, queue); `None` when malformed.
pub fn parse_event_id(id: &str) -> Option<(String, Option<usize>, String)> {
    let (pos, queue) = id.split_once('@')?;
    let (sid, index) = match pos.split_once('.') {
        Some((sid, i)) => (sid, Some(i.parse().ok()?)),
        None => (pos, None),
    };
    parse_stream_id(sid)?;
    Some((sid.to_string(), index, queue.to_string()))
}

/// `<ms>-<seq>` as numbers.
pub fn parse_stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The stream id just before `sid`: reading after it reads `sid` again (to resume in
/// the middle of an entry).
pub fn before(sid: &str) -> Option<String> {
    let (ms, seq) = parse_stream_id(sid)?;
    Some(match (ms, seq) {
        (0, 0) => "0-0".to_string(),
        (ms, 0) => format!("{}-{}", ms - 1, u64::MAX),
        (ms, seq) => format!("{ms}-{}", seq - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_of_one_task_keeps_the_plain_id_and_one_of_several_numbers_them() {
        let mut one = HashMap::from([("task".to_string(), "a.q".to_string())]);
        assert_eq!(entry_tasks(&mut one), ["a.q"]);
        let mut many = HashMap::from([("tasks".to_string(), "a.q b.q c.q".to_string())]);
        let tasks = entry_tasks(&mut many);
        assert_eq!(tasks, ["a.q", "b.q", "c.q"]);
        assert_eq!(event_id("5-1", 0, 1, "q"), "5-1@q");
        assert_eq!(event_id("5-1", 2, 3, "q"), "5-1.2@q");
        assert_eq!(
            parse_event_id("5-1.2@q"),
            Some(("5-1".into(), Some(2), "q".into()))
        );
        assert_eq!(
            parse_event_id("5-1@q"),
            Some(("5-1".into(), None, "q".into()))
        );
        assert_eq!(parse_event_id("5-1.x@q"), None);
        assert_eq!(parse_event_id("nope@q"), None);
        assert_eq!(before("5-1").as_deref(), Some("5-0"));
        assert_eq!(
            before("5-0").as_deref(),
            Some(format!("4-{}", u64::MAX).as_str())
        );
    }
}
