//! Token roles: what a bearer token may do, the `ROLE:TOKEN` form in which
//! `--token`, `MUSTER_TOKENS` and `--tokens-file` give them, and the queues a token of
//! the tokens file may be limited to ([`QueueScope`], `ROLE:TOKEN queues=images.*`).

/// Fewest characters a role token may have (checked by `Config::validate`).
pub const MIN_TOKEN_LEN: usize = 16;

/// A token's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// GET routes.
    Read,
    /// Submit and cancel tasks, and read.
    Submit,
    /// Register nodes.
    Agent,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses `admin`, `submit`, `read` or `agent`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "submit" => Some(Role::Submit),
            "read" => Some(Role::Read),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }

    /// `admin`, `submit`, `read` or `agent`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Submit => "submit",
            Role::Agent => "agent",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes `need`.
    pub fn grants(self, need: Role) -> bool {
        match self {
            Role::Admin => true,
            Role::Submit => matches!(need, Role::Submit | Role::Read),
            Role::Read => need == Role::Read,
            Role::Agent => need == Role::Agent,
        }
    }
}

/// A `ROLE:TOKEN` entry that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleTokenError {
    /// No `:` between role and token.
    #[error("a token entry must be ROLE:TOKEN")]
    Form,
    /// The part before `:` is no role.
    #[error("unknown role {0:?}: use admin, submit, read or agent")]
    UnknownRole(String),
    /// A bad `queues=` list.
    #[error("queues=: {0}")]
    Queues(String),
    /// Something after the token other than `queues=...`.
    #[error("unknown option {0:?} after the token: only queues=PATTERN,PATTERN is known")]
    Option(String),
}

/// Parses `role:token` (as given to `--token` / `MUSTER_TOKENS`); the token's length
/// is checked with the rest of the settings by `Config::validate`.
///
/// # Errors
/// No `:`, or an unknown role.
pub fn parse_role_token(s: &str) -> Result<(Role, String), RoleTokenError> {
    let (r, t) = s.split_once(':').ok_or(RoleTokenError::Form)?;
    let role = Role::parse(r.trim()).ok_or_else(|| RoleTokenError::UnknownRole(r.to_string()))?;
    Ok((role, t.trim().to_string()))
}

/// The queues a role token may reach: every queue matching one of its patterns (`*`
/// matches any run of characters, `.` included: `images.*`, `*-eu`, `payroll`). Given
/// in the tokens file (`queues=PATTERN,PATTERN`); a token without it reaches every
/// queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueScope {
    patterns: Vec<String>,
}

/// Most patterns one token may carry.
pub const MAX_QUEUE_PATTERNS: usize = 64;

impl QueueScope {
    /// Parses `PATTERN[,PATTERN...]`: each 1 to 128 characters of a queue name
    /// (`A-Z a-z 0-9 . _ : -`) or `*`.
    ///
    /// # Errors
    /// An empty list, an empty or bad pattern, more than [`MAX_QUEUE_PATTERNS`].
    pub fn parse(list: &str) -> Result<QueueScope, RoleTokenError> {
        let patterns: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
        if patterns.len() > MAX_QUEUE_PATTERNS {
            return Err(RoleTokenError::Queues(format!(
                "at most {MAX_QUEUE_PATTERNS} queue patterns"
            )));
        }
        for p in &patterns {
            let ok = (1..=128).contains(&p.len())
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-*".contains(&b));
            if !ok {
                return Err(RoleTokenError::Queues(format!(
                    "{p:?} is not a queue pattern (1 to 128 of A-Z a-z 0-9 . _ : - and *)"
                )));
            }
        }
        Ok(QueueScope { patterns })
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether `queue` matches one of the patterns.
    pub fn allows(&self, queue: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), queue.as_bytes()))
    }
}

/// `*`-only glob match (iterative, with backtracking to the last `*`: linear enough for
/// 128-byte names and patterns).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// One entry of a tokens file: `ROLE:TOKEN` and, for `submit`, `read` and `agent`
/// tokens, optionally `queues=PATTERN[,PATTERN...]` after a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The role.
    pub role: Role,
    /// The token.
    pub token: String,
    /// The queues it may reach (`None`: every queue).
    pub queues: Option<QueueScope>,
}

/// Parses a tokens-file entry: `ROLE:TOKEN [queues=PATTERN,PATTERN...]`.
///
/// # Errors
/// What [`parse_role_token`] refuses; an unknown option; `queues=` on an admin token
/// (it reaches everything) or with a bad pattern.
pub fn parse_token_entry(line: &str) -> Result<TokenEntry, RoleTokenError> {
    let mut words = line.split_whitespace();
    let (role, token) = parse_role_token(words.next().unwrap_or(""))?;
    let mut queues = None;
    for w in words {
        match w.split_once('=') {
            Some(("queues", list)) => {
                if role == Role::Admin {
                    return Err(RoleTokenError::Queues(
                        "an admin token reaches every queue; give queues= to submit, read or agent tokens".into(),
                    ));
                }
                queues = Some(QueueScope::parse(list)?);
            }
            _ => return Err(RoleTokenError::Option(w.to_string())),
        }
    }
    Ok(TokenEntry {
        role,
        token,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_patterns_match_whole_names_with_star_for_any_run() {
        let s = QueueScope::parse("images.*,payroll,*-eu").expect("parses");
        for q in ["images.small", "images.", "payroll", "x-eu", "-eu"] {
            assert!(s.allows(q), "{q}");
        }
        for q in ["images", "payroll2", "apayroll", "eu", "x-eu2", "imagesx"] {
            assert!(!s.allows(q), "{q}");
        }
        assert!(QueueScope::parse("*").expect("star").allows("anything"));
        assert!(QueueScope::parse("a*b*c").expect("p").allows("aXbYbZc"));
        assert!(!QueueScope::parse("a*b*c").expect("p").allows("aXbYbZ"));
        for bad in ["", "a,,b", "a b", "q{x}", &"x".repeat(129)] {
            assert!(QueueScope::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_entries_carry_their_queues() {
        let e = parse_token_entry("agent:agent-0123456789abcdef queues=images.*,ocr").expect("ok");
        assert_eq!(e.role, Role::Agent);
        assert_eq!(e.token, "agent-0123456789abcdef");
        assert_eq!(
            e.queues.as_ref().map(QueueScope::patterns),
            Some(&["images.*".to_string(), "ocr".to_string()][..])
        );
        let plain = parse_token_entry("read:read-0123456789abcdef").expect("ok");
        assert_eq!(plain.queues, None);
        assert!(matches!(
            parse_token_entry("admin:admin-0123456789abcdef queues=a"),
            Err(RoleTokenError::Queues(_))
        ));
        assert_eq!(
            parse_token_entry("read:read-0123456789abcdef quota=3"),
            Err(RoleTokenError::Option("quota=3".into()))
        );
        assert!(parse_token_entry("read:read-0123456789abcdef queues=a*{").is_err());
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        assert!(Role::Admin.grants(Role::Agent));
        assert!(Role::Submit.grants(Role::Read));
        assert!(!Role::Submit.grants(Role::Admin));
        assert!(!Role::Read.grants(Role::Submit));
        assert!(!Role::Agent.grants(Role::Read));
    }

    #[test]
    fn role_names_parse_back() {
        for r in [Role::Read, Role::Submit, Role::Agent, Role::Admin] {
            assert_eq!(Role::parse(r.name()), Some(r));
        }
        assert_eq!(Role::parse("reader"), None);
    }

    #[test]
    fn role_token_entries_parse_or_explain() {
        assert_eq!(
            parse_role_token("read: 0123456789abcdef "),
            Ok((Role::Read, "0123456789abcdef".into()))
        );
        assert_eq!(
            parse_role_token("reader:0123456789abcdef"),
            Err(RoleTokenError::UnknownRole("reader".into()))
        );
        assert_eq!(
            parse_role_token("0123456789abcdef"),
            Err(RoleTokenError::Form)
        );
        assert_eq!(
            RoleTokenError::UnknownRole("x".into()).to_string(),
            "unknown role \"x\": use admin, submit, read or agent"
        );
    }
}
