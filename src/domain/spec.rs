//! A task submission validated into the form the store writes: [`TaskSpec::parse`]
//! is the one place where every field of `POST /v1/tasks` is checked. The API, batches,
//! the coordinator and the scheduler all go through it.

use super::parse_rfc3339_ms;
use super::{Backoff, NewTask, OnDependencyFailure, validate};

/// Largest payload, as JSON text.
pub const MAX_PAYLOAD: usize = 1024 * 1024;

/// Latest `run_at` kept as given: 9999-12-31T23:59:59.999Z (later ones are clamped to it).
pub const MAX_RUN_AT_MS: i64 = 253_402_300_799_999;

/// Longest `delay_ms`: one year.
pub const MAX_DELAY_MS: i64 = 365 * 24 * 3600 * 1000;

/// Default attempts.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Default lease TTL.
pub const DEFAULT_TIMEOUT_MS: i64 = 30_000;
/// Default retention of finished tasks: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long an Idempotency-Key is remembered: 24 h.
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Why a submission is refused. The API answers 422 (`Invalid`, with its `code`) or 413.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field breaks a rule; `code` is the problem code (`invalid_task`, ...).
    #[error("{detail}")]
    Invalid {
        /// Stable problem code.
        code: &'static str,
        /// The field and the rule.
        detail: String,
    },
    /// The payload is over [`MAX_PAYLOAD`].
    #[error("{0}")]
    TooLarge(String),
}

/// A validated task ready to be stored.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// `<ULID>.<queue>`.
    pub id: String,
    /// Queue.
    pub queue: String,
    /// Kind.
    pub kind: String,
    /// Payload as JSON text.
    pub payload: String,
    /// 0..=9.
    pub priority: i64,
    /// Absolute due time (ms), if any.
    pub run_at_ms: Option<i64>,
    /// Relative delay (ms), resolved against Redis TIME.
    pub delay_ms: Option<i64>,
    /// Attempts allowed.
    pub max_attempts: i64,
    /// Lease TTL.
    pub timeout_ms: i64,
    /// Hard run-time limit of one attempt.
    pub max_run_ms: Option<i64>,
    /// Backoff.
    pub backoff: Backoff,
    /// Required tags.
    pub requires: Vec<String>,
    /// Retention after finishing.
    pub retention_ms: i64,
    /// Tasks that must succeed first (they exist: checked before submitting).
    pub depends_on: Vec<String>,
    /// What to do when a dependency fails (`None`: fail).
    pub on_dependency_failure: Option<OnDependencyFailure>,
    /// Uniqueness key and its optional TTL.
    pub unique_key: Option<String>,
    /// TTL of the unique key from submission.
    pub unique_ttl_ms: Option<i64>,
    /// Concurrency key and limit.
    pub concurrency: Option<(String, i64)>,
    /// JSON Schema of the result (JSON text).
    pub result_schema: Option<String>,
    /// Batch the task belongs to.
    pub batch: Option<String>,
    /// What created the task (`batch:<id>`, `schedule:<name>`).
    pub origin: Option<String>,
    /// The id already names the task's shard (`Store::place` chose it, or it was
    /// restored from a record): placing it again leaves it.
    pub placed: bool,
}

impl TaskSpec {
    /// The shard holding the task: its queue, or `<queue>~<k>` (the id says which).
    pub fn shard(&self) -> &str {
        validate::task_shard(&self.id).unwrap_or(&self.queue)
    }

    /// Validates a submission (`at` prefixes field names in errors: `tasks[3].`).
    ///
    /// # Errors
    /// [`SpecError::Invalid`] naming the field and the rule; [`SpecError::TooLarge`].
    pub fn parse(t: NewTask, at: &str) -> Result<Self, SpecError> {
        let bad = |field: &str, msg: String| SpecError::Invalid {
            code: "invalid_task",
            detail: format!("{at}{field}: {msg}"),
        };
        validate::kind(&t.kind).map_err(|e| bad("kind", e))?;
        let queue = t.queue.unwrap_or_else(|| "default".into());
        validate::queue_name(&queue).map_err(|e| bad("queue", e))?;
        let priority = t.priority.unwrap_or(0);
        if !(0..=9).contains(&priority) {
            return Err(bad(
                "priority",
                format!("must be 0 to 9 (higher runs first), got {priority}"),
            ));
        }
        let payload = serde_json::to_string(&t.payload.unwrap_or(serde_json::Value::Null))
            .map_err(|e| bad("payload", e.to_string()))?;
        if payload.len() > MAX_PAYLOAD {
            return Err(SpecError::TooLarge(format!(
                "{at}payload is {} bytes, the limit is {MAX_PAYLOAD}",
                payload.len()
            )));
        }
        let run_at_ms = match &t.run_at {
            Some(s) => {
                let ms = parse_rfc3339_ms(s)
                    .ok_or_else(|| bad("run_at", format!("{s:?} is not an RFC 3339 time")))?;
                // Every RFC 3339 time is accepted (the schema cannot say less), and held
                // to what the API can show: a time before 1970 is due now (the epoch),
                // one past the year 9999 is the last millisecond of 9999.
                let ms = ms.clamp(0, MAX_RUN_AT_MS);
                Some(ms)
            }
            None => None,
        };
        let delay_ms = t.delay_ms;
        if let Some(d) = delay_ms
            && !(0..=MAX_DELAY_MS).contains(&d)
        {
            return Err(bad("delay_ms", "must be 0 to one year".into()));
        }
        let max_attempts = t.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if !(1..=1000).contains(&max_attempts) {
            return Err(bad("max_attempts", "must be 1 to 1000".into()));
        }
        let timeout_ms = t.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(100..=7 * 24 * 3600 * 1000).contains(&timeout_ms) {
            return Err(bad("timeout_ms", "must be 100 ms to 7 days".into()));
        }
        let max_run_ms = t.max_run_ms;
        if let Some(m) = max_run_ms
            && !(100..=7 * 24 * 3600 * 1000).contains(&m)
        {
            return Err(bad("max_run_ms", "must be 100 ms to 7 days".into()));
        }
        let mut backoff = t.backoff.unwrap_or_default();
        if backoff.max_ms > 7 * 24 * 3600 * 1000 || backoff.initial_ms > 7 * 24 * 3600 * 1000 {
            return Err(bad(
                "backoff",
                "initial_ms and max_ms must be at most 7 days".into(),
            ));
        }
        // max_ms caps every delay, the first one included.
        backoff.initial_ms = backoff.initial_ms.min(backoff.max_ms);
        let requires = t.requires.unwrap_or_default();
        if requires.len() > 64 {
            return Err(bad("requires", "at most 64 tags".into()));
        }
        for tag in &requires {
            validate::tag(tag).map_err(|e| bad("requires", e))?;
        }
        let retention_ms = t.retention_ms.unwrap_or(DEFAULT_RETENTION_MS);
        if !(1000..=365 * 24 * 3600 * 1000).contains(&retention_ms) {
            return Err(bad("retention_ms", "must be 1 s to one year".into()));
        }
        let depends_on = t.depends_on.unwrap_or_default();
        if depends_on.len() > 1000 {
            return Err(bad("depends_on", "at most 1000 task ids".into()));
        }
        for d in &depends_on {
            if validate::task_queue(d).is_none() {
                return Err(SpecError::Invalid {
                    code: "unknown_dependency",
                    detail: format!("{at}depends_on: {d:?} is not a task id"),
                });
            }
        }
        let mut depends_on = depends_on;
        depends_on.sort();
        depends_on.dedup();
        if let Some(k) = &t.unique_key {
            validate::text("unique_key", k, 256).map_err(|e| bad("unique_key", e))?;
        }
        // (unique_ttl_ms without unique_key, like on_dependency_failure without
        // depends_on, has nothing to apply to and is ignored.)
        if let Some(ttl) = t.unique_ttl_ms
            && !(1000..=365 * 24 * 3600 * 1000).contains(&ttl)
        {
            return Err(bad("unique_ttl_ms", "must be 1 s to one year".into()));
        }
        // A key alone allows one at a time; a limit alone applies to the task's kind.
        let concurrency = match (t.concurrency_key, t.concurrency_limit) {
            (None, None) => None,
            (key, limit) => {
                let k = key.unwrap_or_else(|| format!("kind:{}", t.kind));
                // `kind:<kind>` names a kind's limit; anything else is a name like a queue's.
                match k.strip_prefix("kind:") {
                    Some(kind) if !kind.is_empty() => validate::kind(kind),
                    _ => validate::queue_name(&k),
                }
                .map_err(|e| bad("concurrency_key", e))?;
                let n = limit.unwrap_or(1);
                if !(1..=100_000).contains(&n) {
                    return Err(bad("concurrency_limit", "must be 1 to 100000".into()));
                }
                Some((k, n))
            }
        };
        let result_schema = match t.result_schema {
            None => None,
            Some(v @ serde_json::Value::Object(_)) => Some(v.to_string()),
            Some(_) => return Err(bad("result_schema", "must be a JSON object".into())),
        };
        Ok(TaskSpec {
            id: validate::new_task_id(&queue),
            queue,
            kind: t.kind,
            payload,
            priority,
            run_at_ms,
            delay_ms,
            max_attempts,
            timeout_ms,
            max_run_ms,
            backoff,
            requires,
            retention_ms,
            depends_on,
            on_dependency_failure: t.on_dependency_failure,
            unique_key: t.unique_key,
            unique_ttl_ms: t.unique_ttl_ms,
            concurrency,
            result_schema,
            batch: None,
            origin: None,
            placed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(extra: serde_json::Value) -> NewTask {
        let mut v = serde_json::json!({"kind": "resize", "queue": "images"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    fn refused(extra: serde_json::Value) -> String {
        match TaskSpec::parse(task(extra.clone()), "") {
            Err(SpecError::Invalid { detail, .. }) => detail,
            other => panic!("{extra} was not refused: {other:?}"),
        }
    }

    #[test]
    fn a_plain_task_gets_its_defaults() {
        let t = TaskSpec::parse(task(serde_json::json!({})), "").unwrap();
        assert_eq!(t.queue, "images");
        assert_eq!(t.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert_eq!(t.timeout_ms, DEFAULT_TIMEOUT_MS);
        assert!(t.id.ends_with(".images"));
    }

    #[test]
    fn run_at_is_held_to_what_the_api_can_show() {
        let at = |v: &str| {
            TaskSpec::parse(task(serde_json::json!({ "run_at": v })), "")
                .unwrap()
                .run_at_ms
                .unwrap()
        };
        // Year 10000 in UTC (the offset pushes it over): the last millisecond of 9999.
        assert_eq!(at("9999-12-31T23:59:59-23:59"), MAX_RUN_AT_MS);
        assert_eq!(
            crate::domain::rfc3339_ms(MAX_RUN_AT_MS),
            "9999-12-31T23:59:59.999Z"
        );
        // Before the epoch: due now.
        assert_eq!(at("0129-02-10T21:29:14Z"), 0);
        assert_eq!(at("2020-01-01T00:00:00Z"), 1_577_836_800_000);
    }

    #[test]
    fn a_kind_concurrency_key_is_validated_too() {
        let junk = format!("kind:{}", "\u{1}".repeat(1000));
        assert!(refused(serde_json::json!({"concurrency_key": junk})).contains("concurrency_key"));
        let long = format!("kind:{}", "k".repeat(300));
        assert!(refused(serde_json::json!({"concurrency_key": long})).contains("concurrency_key"));
        let ok = TaskSpec::parse(
            task(serde_json::json!({"concurrency_key": "kind:resize"})),
            "",
        );
        assert_eq!(ok.unwrap().concurrency, Some(("kind:resize".into(), 1)));
    }

    #[test]
    fn names_with_invisible_characters_are_refused() {
        assert!(refused(serde_json::json!({"kind": "pay\u{202E}lyap"})).starts_with("kind"));
        assert!(refused(serde_json::json!({"unique_key": "a\u{200B}b"})).starts_with("unique_key"));
    }
}
