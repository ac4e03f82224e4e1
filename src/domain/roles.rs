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
    /// A bad `max_*=N` quota.
    #[error("{0}")]
    Quota(String),
    /// Something after the token other than `queues=...` or a quota.
    #[error(
        "unknown option {0:?} after the token: known are queues=PATTERN,PATTERN and \
         max_queues=N, max_schedules=N, max_locks=N, max_streams=N"
    )]
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

/// How much of the shared deployment one token may hold at once, from the tokens
/// file (`max_queues=100 max_schedules=10 max_locks=1000 max_streams=32`); `None`
/// for no quota (the admin token has none). What each protects: docs/security.md.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenQuotas {
    /// Queues this token's submissions brought into being that still exist (a queue
    /// is pruned once it is empty and idle, and then no longer counts).
    pub queues: Option<u32>,
    /// Cron schedules it created that still exist.
    pub schedules: Option<u32>,
    /// Handler locks it holds (held and not yet expired).
    pub locks: Option<u32>,
    /// Event streams, task waits and its nodes' lease long-polls open at once (instead
    /// of the server's `--max-streams-per-caller`).
    pub streams: Option<u32>,
}

/// Largest quota a tokens file may give (beyond it a quota protects nothing).
pub const MAX_QUOTA: u32 = 1_000_000;

impl TokenQuotas {
    /// Whether no quota is set.
    pub fn is_empty(&self) -> bool {
        *self == TokenQuotas::default()
    }
}

/// One entry of a tokens file: `ROLE:TOKEN` and, for `submit`, `read` and `agent`
/// tokens, optionally `queues=PATTERN[,PATTERN...]` and quotas after a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The role.
    pub role: Role,
    /// The token.
    pub token: String,
    /// The queues it may reach (`None`: every queue).
    pub queues: Option<QueueScope>,
    /// What it may hold at once.
    pub quotas: TokenQuotas,
}

/// Parses a tokens-file entry: `ROLE:TOKEN [queues=PATTERN,PATTERN...] [max_queues=N]
/// [max_schedules=N] [max_locks=N] [max_streams=N]`.
///
/// # Errors
/// What [`parse_role_token`] refuses; an unknown option; `queues=` or a quota on an
/// admin token (it reaches everything); a bad pattern; a quota that is not 0 to
/// [`MAX_QUOTA`] or given twice.
pub fn parse_token_entry(line: &str) -> Result<TokenEntry, RoleTokenError> {
    let mut words = line.split_whitespace();
    let (role, token) = parse_role_token(words.next().unwrap_or(""))?;
    let mut queues = None;
    let mut quotas = TokenQuotas::default();
    for w in words {
        let (name, value) = w
            .split_once('=')
            .ok_or_else(|| RoleTokenError::Option(w.to_string()))?;
        let slot = match name {
            "queues" => {
                if role == Role::Admin {
                    return Err(RoleTokenError::Queues(
                        "an admin token reaches every queue; give queues= to submit, read or agent tokens".into(),
                    ));
                }
                queues = Some(QueueScope::parse(value)?);
                continue;
            }
            "max_queues" => &mut quotas.queues,
            "max_schedules" => &mut quotas.schedules,
            "max_locks" => &mut quotas.locks,
            "max_streams" => &mut quotas.streams,
            _ => return Err(RoleTokenError::Option(w.to_string())),
        };
        if role == Role::Admin {
            return Err(RoleTokenError::Quota(format!(
                "{name}: the admin token has no quotas; give them to submit, read or agent tokens"
            )));
        }
        if slot.is_some() {
            return Err(RoleTokenError::Quota(format!("{name} is given twice")));
        }
        let n = value
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_QUOTA)
            .ok_or_else(|| {
                RoleTokenError::Quota(format!(
                    "{name}={value:?}: a quota is a whole number from 0 to {MAX_QUOTA}"
                ))
            })?;
        *slot = Some(n);
    }
    Ok(TokenEntry {
        role,
        token,
        queues,
        quotas,
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
    fn token_entries_carry_their_quotas() {
        let e = parse_token_entry(
            "submit:submit-0123456789abcdef max_queues=100 queues=a.* max_schedules=0 max_locks=5 max_streams=7",
        )
        .expect("ok");
        assert_eq!(
            e.quotas,
            TokenQuotas {
                queues: Some(100),
                schedules: Some(0),
                locks: Some(5),
                streams: Some(7),
            }
        );
        assert!(e.queues.is_some());
        assert!(
            parse_token_entry("read:read-0123456789abcdef")
                .expect("ok")
                .quotas
                .is_empty()
        );
        for bad in [
            "submit:submit-0123456789abcdef max_queues=-1",
            "submit:submit-0123456789abcdef max_queues=x",
            "submit:submit-0123456789abcdef max_queues=1000001",
            "submit:submit-0123456789abcdef max_queues=1 max_queues=2",
            "admin:admin-0123456789abcdef max_locks=1",
        ] {
            assert!(
                matches!(parse_token_entry(bad), Err(RoleTokenError::Quota(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_token_entry("submit:submit-0123456789abcdef max_nodes=1"),
            Err(RoleTokenError::Option(_))
        ));
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
