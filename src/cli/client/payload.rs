//! The payload of `muster submit`: `--payload JSON`, `--payload -` (stdin), or
//! `--payload-file F`.

use serde_json::Value;
use std::io::Read;
use std::path::Path;

/// Reads and validates the payload of `muster submit`: `--payload JSON`, `--payload -`
/// (stdin), `--payload-file F` (`-` is stdin too), or none (`Ok(None)`, no `payload`
/// field is sent).
///
/// # Errors
/// An unreadable source, or text that is not JSON; the message names the source.
pub fn read_payload(
    payload: Option<&str>,
    payload_file: Option<&Path>,
    mut stdin: impl Read,
) -> anyhow::Result<Option<Value>> {
    let (text, source) = match (payload, payload_file) {
        (Some(_), Some(_)) => anyhow::bail!("pass either --payload or --payload-file, not both"),
        (None, None) => return Ok(None),
        (Some("-"), None) => (read_stdin(&mut stdin)?, "stdin (--payload -)".to_owned()),
        (Some(arg), None) => (arg.to_owned(), "--payload".to_owned()),
        (None, Some(path)) if path == Path::new("-") => (
            read_stdin(&mut stdin)?,
            "stdin (--payload-file -)".to_owned(),
        ),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("cannot read --payload-file {}: {e}", path.display())
            })?;
            (text, format!("--payload-file {}", path.display()))
        }
    };
    parse_payload(&text, &source).map(Some)
}

/// Parses payload text; `source` names where it came from in the error.
fn parse_payload(text: &str, source: &str) -> anyhow::Result<Value> {
    if text.trim().is_empty() {
        anyhow::bail!("{source} is empty; pass JSON such as '{{}}' or 'null'");
    }
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{source} is not valid JSON: {e}"))
}

/// Reads all of stdin as UTF-8.
fn read_stdin(stdin: &mut impl Read) -> anyhow::Result<String> {
    let mut s = String::new();
    stdin
        .read_to_string(&mut s)
        .map_err(|e| anyhow::anyhow!("cannot read the payload from stdin: {e}"))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::NewTask;
    use serde_json::json;

    fn no_stdin() -> &'static [u8] {
        b""
    }

    #[test]
    fn payload_from_the_argument_is_parsed() {
        let v = read_payload(Some(r#"{"n": 3, "s": "x"}"#), None, no_stdin()).ok();
        assert_eq!(v, Some(Some(json!({"n": 3, "s": "x"}))));
    }

    #[test]
    fn no_payload_means_no_field() {
        assert_eq!(read_payload(None, None, no_stdin()).ok(), Some(None));
        let body = serde_json::to_value(NewTask {
            kind: "echo".into(),
            ..NewTask::default()
        })
        .ok();
        assert_eq!(body, Some(json!({"kind": "echo"})));
    }

    #[test]
    fn payload_dash_reads_stdin() {
        let v = read_payload(Some("-"), None, &b"[1, 2]\n"[..]).ok();
        assert_eq!(v, Some(Some(json!([1, 2]))));
        let v = read_payload(None, Some(Path::new("-")), &b"\"s\""[..]).ok();
        assert_eq!(v, Some(Some(json!("s"))));
    }

    #[test]
    fn invalid_payload_names_its_source() {
        let err = read_payload(Some("{nope"), None, no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("--payload is not valid JSON: "), "{err}");
        assert!(!err.contains('\n'));

        let err = read_payload(Some("-"), None, &b"{"[..])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("stdin (--payload -) is not valid JSON: "),
            "{err}"
        );

        let err = read_payload(Some(""), None, no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("--payload is empty"), "{err}");
    }

    #[test]
    fn payload_file_is_read_and_checked() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let good = dir.path().join("good.json");
        std::fs::write(&good, r#"{"a": [true]}"#)?;
        assert_eq!(
            read_payload(None, Some(&good), no_stdin())?,
            Some(json!({"a": [true]}))
        );
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "not json")?;
        let err = read_payload(None, Some(&bad), no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with(&format!(
                "--payload-file {} is not valid JSON: ",
                bad.display()
            )),
            "{err}"
        );
        let missing = dir.path().join("missing.json");
        let err = read_payload(None, Some(&missing), no_stdin())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("cannot read --payload-file "), "{err}");
        Ok(())
    }
}
