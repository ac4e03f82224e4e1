//! Decoding of script replies: the generic helpers every resource's decoder builds on.

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

/// Decodes a script's `{code, ...}` reply.
pub(super) fn coded(v: Value) -> Result<(i64, Vec<Value>)> {
    let mut a = array(v)?;
    if a.is_empty() {
        return Err(StoreError::Protocol("empty reply".into()));
    }
    let code = int(&a[0]).ok_or_else(|| StoreError::Protocol("no code".into()))?;
    a.remove(0);
    Ok((code, a))
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
