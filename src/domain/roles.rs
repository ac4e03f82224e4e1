//! Token roles: what a bearer token may do, and the `ROLE:TOKEN` form in which
//! `--token`, `MUSTER_TOKENS` and `--tokens-file` give them.

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

#[cfg(test)]
mod tests {
    use super::*;

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
