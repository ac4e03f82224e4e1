//! Parsing of names and ids that end up inside Redis keys. Everything user-supplied
//! that becomes part of a key goes through here first (RELIABILITY.md S4).

/// Longest queue name.
pub const MAX_QUEUE_LEN: usize = 128;
/// Longest kind.
pub const MAX_KIND_LEN: usize = 256;
/// Length of a ULID in text.
pub const ULID_LEN: usize = 26;

/// JSON Schema pattern of a ULID (batch and node ids): what [`is_ulid`] accepts.
pub const ULID_PATTERN: &str = r"^[0-9A-HJKMNP-TV-Z]{26}$";
/// JSON Schema pattern of a queue, lock or schedule name: what [`queue_name`] accepts.
pub const NAME_PATTERN: &str = r"^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,128}$";
/// JSON Schema pattern of a task id: what [`task_queue`] accepts (`~<shard>` only on a
/// task of shard 1.. of a sharded queue).
pub const TASK_ID_PATTERN: &str =
    r"^[0-9A-HJKMNP-TV-Z]{26}\.(?!\.{1,2}(?:~|$))[A-Za-z0-9._:-]{1,128}(?:~(?:[1-9]|1[0-5]))?$";

/// Most shards of one queue (`PUT /v1/queues/{name}` `{"shards": N}`, 1..=16).
pub const MAX_SHARDS: u32 = 16;

/// A queue name matches `[A-Za-z0-9._:-]{1,128}` and is neither `.` nor `..`.
pub fn queue_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_QUEUE_LEN {
        return Err(format!(
            "queue name must be 1 to {MAX_QUEUE_LEN} characters, got {}",
            s.len()
        ));
    }
    if s == "." || s == ".." {
        return Err("queue name cannot be '.' or '..'".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(format!(
            "queue name may only contain A-Z a-z 0-9 . _ : - (found {c:?})"
        ));
    }
    Ok(())
}

/// Characters that change how text is shown without being seen: Unicode format
/// characters (bidi overrides and isolates, zero-width joiners, the BOM, the soft
/// hyphen) and the line and paragraph separators. In a name they spoof logs and tables.
pub fn is_hidden(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// JSON Schema pattern of names shown to people (kinds, node names, keys): no control
/// and no [`is_hidden`] characters. Mirrored in the schema attributes of `domain`.
pub const TEXT_PATTERN: &str =
    r"^[^\x00-\x1F\x7F-\x9F\u00AD\u061C\u180E\u200B-\u200F\u2028-\u202E\u2060-\u2069\uFEFF]+$";

/// `what` is 1..=`max` bytes of visible text: no control, no [`is_hidden`] characters.
pub fn text(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1 to {max} bytes"));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} cannot contain control characters"));
    }
    if let Some(c) = s.chars().find(|c| is_hidden(*c)) {
        return Err(format!(
            "{what} cannot contain invisible formatting characters (found U+{:04X})",
            c as u32
        ));
    }
    Ok(())
}

/// A kind is 1..=256 bytes of visible text ([`text`]).
pub fn kind(s: &str) -> Result<(), String> {
    text("kind", s, MAX_KIND_LEN)
}

/// A node tag: like a queue name.
pub fn tag(s: &str) -> Result<(), String> {
    queue_name(s).map_err(|e| e.replace("queue name", "tag"))
}

/// True when `s` is a ULID in canonical text (Crockford base32, upper case).
pub fn is_ulid(s: &str) -> bool {
    s.len() == ULID_LEN
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || (b.is_ascii_uppercase() && !matches!(b, b'I' | b'L' | b'O' | b'U'))
        })
}

/// A task id is `<ULID>.<queue>`, or `<ULID>.<queue>~<k>` for a task of shard `k`
/// (1..=15) of a sharded queue; returns the queue (without the shard).
///
/// Carrying the queue in the id gives `GET /v1/tasks/{id}` an O(1) lookup that also
/// works on Redis Cluster, where every key of a task carries the queue's hash tag.
pub fn task_queue(id: &str) -> Option<&str> {
    task_shard(id).map(|s| split_shard(s).0)
}

/// The shard holding task `id`, as named in its keys' hash tag: `<queue>` (shard 0,
/// every task of an unsharded queue) or `<queue>~<k>`.
pub fn task_shard(id: &str) -> Option<&str> {
    let (ulid, home) = (id.get(..ULID_LEN)?, id.get(ULID_LEN..)?);
    let home = home.strip_prefix('.')?;
    let (queue, k) = match home.split_once('~') {
        Some((q, k)) => (q, shard_number(k).filter(|k| *k > 0)?),
        None => (home, 0),
    };
    (is_ulid(ulid) && queue_name(queue).is_ok() && k < MAX_SHARDS).then_some(home)
}

/// `k` in canonical decimal (no sign, no leading zero).
fn shard_number(k: &str) -> Option<u32> {
    (!k.is_empty() && k.len() <= 2 && k.bytes().all(|b| b.is_ascii_digit()))
        .then(|| k.parse().ok())
        .flatten()
        .filter(|n: &u32| n.to_string() == k)
}

/// The name of shard `k` of `queue` (the hash tag of its keys): `queue` itself for
/// shard 0, so an unsharded queue is its own shard 0; `<queue>~<k>` otherwise (`~`
/// cannot occur in a queue name).
pub fn shard_name(queue: &str, k: u32) -> String {
    if k == 0 {
        queue.to_string()
    } else {
        format!("{queue}~{k}")
    }
}

/// A shard's (or a dispatcher's "dirty" entry's) queue and shard number: `q~2` →
/// (`q`, Some(2)), `q~0` → (`q`, Some(0)), `q` → (`q`, None).
pub fn split_shard_opt(name: &str) -> (&str, Option<u32>) {
    match name.split_once('~') {
        Some((q, k)) => match shard_number(k) {
            Some(k) => (q, Some(k)),
            None => (name, None),
        },
        None => (name, None),
    }
}

/// A shard's queue and number: `q~2` → (`q`, 2), `q` → (`q`, 0).
pub fn split_shard(name: &str) -> (&str, u32) {
    let (q, k) = split_shard_opt(name);
    (q, k.unwrap_or(0))
}

/// Task `id` moved to shard `k` of its queue (the id of an unsharded queue's task is
/// its shard 0's); a malformed id is returned as it is.
pub fn with_shard(id: &str, k: u32) -> String {
    match (task_queue(id), id.get(..ULID_LEN)) {
        (Some(queue), Some(ulid)) => format!("{ulid}.{}", shard_name(queue, k)),
        _ => id.to_string(),
    }
}

/// Makes a new task id for `queue` (its shard 0; `Store::place` may move it).
pub fn new_task_id(queue: &str) -> String {
    format!("{}.{queue}", ulid::Ulid::generate())
}

/// A node id is a ULID.
pub fn node_id(s: &str) -> bool {
    is_ulid(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_key_grammar() {
        for ok in ["default", "a", "emails.high", "x:y-z_1", &"q".repeat(128)] {
            assert!(queue_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a*",
            "a{b}",
            "é",
            "a\nb",
            &"q".repeat(129),
        ] {
            assert!(queue_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn task_ids_carry_their_queue() {
        let id = new_task_id("emails.high");
        assert_eq!(task_queue(&id), Some("emails.high"));
        assert_eq!(task_queue("nope"), None);
        assert_eq!(task_queue("01ARZ3NDEKTSV4RRFFQ69G5FAV"), None);
        assert_eq!(task_queue("01ARZ3NDEKTSV4RRFFQ69G5FAV.a*"), None);
        assert_eq!(task_queue("01ARZ3NDEKTSV4RRFFQ69G5FAV.q"), Some("q"));
    }

    #[test]
    fn task_ids_of_a_shard_carry_it_and_old_ids_are_shard_zero() {
        let id = "01ARZ3NDEKTSV4RRFFQ69G5FAV.q.a";
        assert_eq!(task_shard(id), Some("q.a"));
        let s3 = with_shard(id, 3);
        assert_eq!(s3, "01ARZ3NDEKTSV4RRFFQ69G5FAV.q.a~3");
        assert_eq!(task_queue(&s3), Some("q.a"));
        assert_eq!(task_shard(&s3), Some("q.a~3"));
        assert_eq!(with_shard(&s3, 0), id);
        assert_eq!(with_shard(&s3, 15), format!("{id}~15"));
        for bad in ["~0", "~16", "~03", "~", "~a", "~1~2", "~-1", "~+1"] {
            assert_eq!(task_shard(&format!("{id}{bad}")), None, "{bad}");
        }
        assert_eq!(split_shard("q~2"), ("q", 2));
        assert_eq!(split_shard("q"), ("q", 0));
        assert_eq!(split_shard_opt("q~0"), ("q", Some(0)));
        assert_eq!(shard_name("q", 0), "q");
        assert_eq!(shard_name("q", 4), "q~4");
    }

    #[test]
    fn kinds_reject_control_characters_and_empty() {
        assert!(kind("resize").is_ok());
        assert!(kind("").is_err());
        assert!(kind("a\u{0}").is_err());
        assert!(kind(&"k".repeat(257)).is_err());
    }

    /// The schema patterns say what the validators accept (the `regex` crate has no
    /// look-ahead, so the `(?!\.{1,2}$)` part is checked by hand).
    #[test]
    fn schema_patterns_agree_with_the_validators() {
        let plain = |p: &str| {
            regex::Regex::new(
                &p.replace(r"(?!\.{1,2}$)", "")
                    .replace(r"(?!\.{1,2}(?:~|$))", ""),
            )
            .unwrap()
        };
        let (ulid, name, task) = (
            plain(ULID_PATTERN),
            plain(NAME_PATTERN),
            plain(TASK_ID_PATTERN),
        );
        let id = "01J9ZV7Q5X7M3S1RZ0B6H8K2QW";
        for s in [
            id,
            "01J9ZV7Q5X7M3S1RZ0B6H8K2Q",
            "01J9ZV7Q5X7M3S1RZ0B6H8K2QI",
            "",
        ] {
            assert_eq!(ulid.is_match(s), is_ulid(s), "{s:?}");
        }
        for s in ["images", "a.b:c-d_e", ".", "..", "...", "sp ace", "é", ""] {
            let pattern = name.is_match(s) && s != "." && s != "..";
            assert_eq!(pattern, queue_name(s).is_ok(), "{s:?}");
        }
        for q in [
            "images", ".", "..", "...", "a b", "q~1", "q~15", "q~16", "q~0", "q~01", "..~1",
        ] {
            let s = format!("{id}.{q}");
            let base = q.split('~').next().unwrap_or(q);
            let pattern = task.is_match(&s) && base != "." && base != "..";
            assert_eq!(pattern, task_queue(&s).is_some(), "{s:?}");
        }
    }

    #[test]
    fn names_refuse_invisible_formatting_characters() {
        for bad in [
            "pay\u{202E}lyap",
            "a\u{200B}b",
            "\u{FEFF}kind",
            "line\u{2028}two",
            "x\u{2066}y",
        ] {
            assert!(kind(bad).is_err(), "{bad:?}");
        }
        assert!(kind("résumé.render — v2").is_ok());
        // The schema pattern (ECMA `\uXXXX` escapes) agrees with the validator.
        let ecma = regex::Regex::new(r"\\u([0-9A-F]{4})").unwrap();
        let pattern = regex::Regex::new(&ecma.replace_all(TEXT_PATTERN, r"\x{$1}")).unwrap();
        for s in [
            "pay\u{202E}lyap",
            "a\u{200B}b",
            "\u{FEFF}k",
            "l\u{2029}",
            "\u{AD}",
            "ok",
            "é—ü",
            "t\tab",
        ] {
            assert_eq!(pattern.is_match(s), text("x", s, 256).is_ok(), "{s:?}");
        }
    }
}
