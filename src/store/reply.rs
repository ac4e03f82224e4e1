//! Decoding of script replies: the return code every `{code, ...}` reply opens with,
//! and the generic helpers every resource's decoder builds on.

use super::{Result, StoreError};
use redis::Value;
use std::collections::HashMap;

pub(super) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

pub(super) fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(super) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        Value::Nil => Ok(Vec::new()),
        other => Err(StoreError::Protocol(format!(
            "expected an array, got {other:?}"
        ))),
    }
}

/// The first element of a script's `{code, ...}` reply: one set for every script,
/// mirrored in `lua/lib.lua` as the locals `OK`, `NOT_FOUND`, `CONFLICT`, `REPEAT`,
/// `NOT_LEADER` (a unit test in [`super::scripts`] compares the two). Each store method
/// says what a code means for its script and maps it to its answer or a typed error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum Code {
    /// Done; the rest of the reply says how.
    Ok = 0,
    /// What the script names (task, node, batch, schedule) does not exist.
    NotFound = 1,
    /// Its state refuses the call (stale lease, illegal transition, ended, finished,
    /// taken, held by another); a task's state follows.
    Conflict = 2,
    /// Already done exactly so (same lease, idempotency key or tick): nothing written.
    Repeat = 3,
    /// The caller's scheduler leader token is not current.
    NotLeader = 4,
}

impl Code {
    /// Every code, in value order.
    pub const ALL: [Code; 5] = [
        Code::Ok,
        Code::NotFound,
        Code::Conflict,
        Code::Repeat,
        Code::NotLeader,
    ];

    /// The error for a code `script` never returns where it was answered.
    pub(super) fn unexpected(self, script: &str) -> StoreError {
        StoreError::Protocol(format!("{script} returned {self:?}"))
    }
}

impl TryFrom<i64> for Code {
    type Error = StoreError;

    fn try_from(n: i64) -> Result<Code> {
        Code::ALL
            .into_iter()
            .find(|c| *c as i64 == n)
            .ok_or_else(|| StoreError::Protocol(format!("unknown return code {n}")))
    }
}

/// Checks that a script whose only answer is [`Code::Ok`] gave it.
pub(super) fn ok((code, _): (Code, Vec<Value>), script: &str) -> Result<()> {
    match code {
        Code::Ok => Ok(()),
        c => Err(c.unexpected(script)),
    }
}

/// `true` for [`Code::Ok`], `false` for `no` (the script's "nothing done"), an error
/// for any other code.
pub(super) fn ok_unless(code: Code, no: Code, script: &str) -> Result<bool> {
    match code {
        Code::Ok => Ok(true),
        c if c == no => Ok(false),
        c => Err(c.unexpected(script)),
    }
}

/// The integer after [`Code::Ok`] (a time, a deadline), `None` for `no`, an error for
/// any other code.
pub(super) fn int_unless(
    (code, rest): (Code, Vec<Value>),
    no: Code,
    script: &str,
) -> Result<Option<i64>> {
    Ok(ok_unless(code, no, script)?.then(|| rest.first().and_then(int).unwrap_or(0)))
}

/// Decodes a script's `{code, ...}` reply.
pub(super) fn coded(v: Value) -> Result<(Code, Vec<Value>)> {
    let mut a = array(v)?;
    if a.is_empty() {
        return Err(StoreError::Protocol("empty reply".into()));
    }
    let code = int(&a[0]).ok_or_else(|| StoreError::Protocol("no code".into()))?;
    a.remove(0);
    Ok((Code::try_from(code)?, a))
}

pub(super) fn flat_map(v: Value) -> Result<HashMap<String, String>> {
    let a = array(v)?;
    let mut m = HashMap::with_capacity(a.len() / 2);
    let mut it = a.iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        if let (Some(k), Some(v)) = (text(k), text(v)) {
            m.insert(k, v);
        }
    }
    Ok(m)
}

pub(super) fn state_of(code_state: Option<&Value>) -> String {
    code_state.and_then(text).unwrap_or_default()
}
