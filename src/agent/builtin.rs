//! The built-in executor: in-process handlers keyed by the task's `kind`, used by
//! `muster agent --builtin`, `muster dev`, the demo and the benchmark.
//!
//! Kinds: `echo`, `noop`, `sleep`, `fail`, `fail_once`, `wordcount`.

use super::handler::ExecError;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The kinds [`run_builtin`] knows.
pub const KINDS: &[&str] = &["echo", "noop", "sleep", "fail", "fail_once", "wordcount"];

/// The built-in handlers as a [`Registry`](super::Registry): what
/// [`Executor::Builtin`](super::Executor::Builtin) runs, through the same engine as the
/// Rust SDK's functions.
pub fn registry() -> super::Registry {
    let mut r = super::Registry::new("the built-in executor");
    for kind in KINDS {
        r.insert(
            *kind,
            std::sync::Arc::new(move |payload: Value, ctx: super::TaskContext| {
                Box::pin(async move { run_builtin(kind, &payload, ctx.attempt()).await })
            }),
        );
    }
    r
}

/// Runs the built-in handler for `kind` on `payload`; `attempt` is the task's attempt
/// number (1 for the first).
///
/// # Errors
/// The handler's failure; an unknown kind fails for good.
pub async fn run_builtin(kind: &str, payload: &Value, attempt: i64) -> Result<Value, ExecError> {
    match kind {
        "echo" => Ok(payload.clone()),
        "noop" => Ok(Value::Null),
        "sleep" => sleep(payload).await,
        "fail" => Err(fail(payload)),
        "fail_once" => {
            if attempt <= 1 {
                Err(ExecError::retryable(format!(
                    "failed on purpose on attempt {attempt}; the next attempt succeeds"
                )))
            } else if payload.get("text").is_some() {
                wordcount(payload).await
            } else {
                Ok(payload.clone())
            }
        }
        "wordcount" => wordcount(payload).await,
        other => Err(ExecError::fatal(format!(
            "unknown kind {other} for the built-in executor"
        ))),
    }
}

async fn sleep(payload: &Value) -> Result<Value, ExecError> {
    let ms = match payload.get("ms") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or_else(|| ExecError::fatal("sleep: payload.ms must be a non-negative number"))?,
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(json!({ "slept_ms": ms }))
}

fn fail(payload: &Value) -> ExecError {
    let message = payload
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("failed on purpose")
        .to_string();
    let retryable = payload.get("retryable").and_then(Value::as_bool) != Some(false);
    ExecError { message, retryable }
}

/// Counts lower-cased words, split on every character that is not alphanumeric.
/// Returns the count per word and the total number of words.
pub fn count_words(text: &str) -> (BTreeMap<String, u64>, u64) {
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0;
    for w in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *words.entry(w.to_lowercase()).or_insert(0) += 1;
        total += 1;
    }
    (words, total)
}

/// The `wordcount` result for `text`: `{"words": {word: count, ...}, "total": N}`.
pub fn wordcount_result(text: &str) -> Value {
    let (words, total) = count_words(text);
    json!({ "words": words, "total": total })
}

async fn wordcount(payload: &Value) -> Result<Value, ExecError> {
    if let Some(text) = payload.get("text") {
        let text = text
            .as_str()
            .ok_or_else(|| ExecError::fatal("wordcount: payload.text must be a string"))?;
        return Ok(wordcount_result(text));
    }
    let Some(path) = payload.get("path").and_then(Value::as_str) else {
        return Err(ExecError::fatal(
            "wordcount: give payload.text, or payload.path with optional offset and len",
        ));
    };
    let offset = opt_u64(payload, "offset")?.unwrap_or(0);
    let len = opt_u64(payload, "len")?;
    let text = read_range(path, offset, len).await.map_err(|e| {
        let msg = format!("wordcount: cannot read {path}: {e}");
        if e.kind() == std::io::ErrorKind::NotFound {
            ExecError::fatal(msg)
        } else {
            ExecError::retryable(msg)
        }
    })?;
    Ok(wordcount_result(&text))
}

fn opt_u64(payload: &Value, field: &str) -> Result<Option<u64>, ExecError> {
    match payload.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ExecError::fatal(format!(
                "wordcount: payload.{field} must be a non-negative integer"
            ))
        }),
    }
}

/// Reads `len` bytes (or up to the end) of `path` from byte `offset`; a range that
/// cuts a UTF-8 character turns its pieces into U+FFFD, which splits words there.
async fn read_range(path: &str, offset: u64, len: Option<u64>) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    match len {
        Some(n) => {
            file.take(n).read_to_end(&mut buf).await?;
        }
        None => {
            file.read_to_end(&mut buf).await?;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn echo_returns_the_payload_and_noop_null() {
        let p = json!({"a": [1, 2, {"b": null}]});
        assert_eq!(run_builtin("echo", &p, 1).await, Ok(p.clone()));
        assert_eq!(run_builtin("noop", &p, 1).await, Ok(Value::Null));
    }

    #[tokio::test]
    async fn sleep_sleeps_and_reports_it() {
        let t = std::time::Instant::now();
        let r = run_builtin("sleep", &json!({"ms": 50}), 1).await;
        assert_eq!(r, Ok(json!({"slept_ms": 50})));
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            run_builtin("sleep", &json!({}), 1).await,
            Ok(json!({"slept_ms": 0}))
        );
        assert!(
            !run_builtin("sleep", &json!({"ms": "x"}), 1)
                .await
                .unwrap_err()
                .retryable
        );
    }

    #[tokio::test]
    async fn fail_uses_message_and_retryable() {
        let e = run_builtin("fail", &json!({}), 1).await.unwrap_err();
        assert_eq!(e, ExecError::retryable("failed on purpose"));
        let e = run_builtin("fail", &json!({"message": "boom", "retryable": false}), 1)
            .await
            .unwrap_err();
        assert_eq!(e, ExecError::fatal("boom"));
        let e = run_builtin("fail", &Value::Null, 1).await.unwrap_err();
        assert!(e.retryable);
    }

    #[tokio::test]
    async fn fail_once_fails_the_first_attempt_only() {
        let p = json!({"text": "a b a"});
        let e = run_builtin("fail_once", &p, 1).await.unwrap_err();
        assert!(e.retryable);
        assert!(run_builtin("fail_once", &p, 0).await.is_err());
        assert_eq!(
            run_builtin("fail_once", &p, 2).await,
            Ok(json!({"words": {"a": 2, "b": 1}, "total": 3}))
        );
        let p = json!({"x": 1});
        assert_eq!(run_builtin("fail_once", &p, 2).await, Ok(p.clone()));
    }

    #[tokio::test]
    async fn unknown_kind_fails_for_good() {
        let e = run_builtin("teleport", &Value::Null, 1).await.unwrap_err();
        assert_eq!(
            e,
            ExecError::fatal("unknown kind teleport for the built-in executor")
        );
    }

    #[test]
    fn count_words_lowercases_and_splits_on_non_alphanumerics() {
        let (w, total) = count_words("The cat; the CAT's hat -- Été été 42x\n\tdone");
        assert_eq!(total, 10);
        assert_eq!(w.get("the"), Some(&2));
        assert_eq!(w.get("cat"), Some(&2));
        assert_eq!(w.get("s"), Some(&1));
        assert_eq!(w.get("hat"), Some(&1));
        assert_eq!(w.get("été"), Some(&2));
        assert_eq!(w.get("42x"), Some(&1));
        assert_eq!(w.get("done"), Some(&1));
        assert_eq!(count_words(""), (BTreeMap::new(), 0));
        assert_eq!(count_words(" ,.;-- ").1, 0);
    }

    #[tokio::test]
    async fn wordcount_counts_text() {
        let r = run_builtin("wordcount", &json!({"text": "Hello, hello world!"}), 1).await;
        assert_eq!(
            r,
            Ok(json!({"words": {"hello": 2, "world": 1}, "total": 3}))
        );
        let r = run_builtin("wordcount", &json!({"text": ""}), 1).await;
        assert_eq!(r, Ok(json!({"words": {}, "total": 0})));
    }

    #[tokio::test]
    async fn wordcount_reads_a_byte_range_of_a_file() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(b"alpha beta gamma delta").expect("write");
        let path = f.path().to_str().expect("utf-8 path").to_string();
        let r = run_builtin(
            "wordcount",
            &json!({"path": path, "offset": 6, "len": 10}),
            1,
        )
        .await;
        assert_eq!(r, Ok(json!({"words": {"beta": 1, "gamma": 1}, "total": 2})));
        let r = run_builtin("wordcount", &json!({"path": path}), 1).await;
        assert_eq!(r.expect("whole file")["total"], json!(4));
        let r = run_builtin("wordcount", &json!({"path": path, "offset": 100}), 1).await;
        assert_eq!(r, Ok(json!({"words": {}, "total": 0})));
    }

    #[tokio::test]
    async fn wordcount_rejects_bad_payloads() {
        for p in [
            json!({}),
            json!({"text": 3}),
            json!({"path": "/x", "len": -1}),
        ] {
            let e = run_builtin("wordcount", &p, 1).await.unwrap_err();
            assert!(!e.retryable, "{p}");
        }
        let e = run_builtin("wordcount", &json!({"path": "/definitely/not/here"}), 1)
            .await
            .unwrap_err();
        assert!(!e.retryable);
        assert!(e.message.contains("/definitely/not/here"));
    }
}
