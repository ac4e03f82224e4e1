//! Bearer-token authentication. Tokens are compared as SHA-256 hashes in constant
//! time; the admin token may do everything, a node token only its own node's agent
//! routes. Node tokens are `<node id>.<secret>`; only their hash is stored.

use super::AppState;
use super::error::ApiError;
use crate::store::token_sha;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use subtle::ConstantTimeEq;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The admin token (or `--no-auth`).
    Admin,
    /// A node's own token.
    Node(String),
}

impl Principal {
    /// Admin only.
    ///
    /// # Errors
    /// 403 for node tokens.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Node(_) => Err(ApiError::Forbidden(
                "a node token may only call its own node's agent routes; use an admin token".into(),
            )),
        }
    }

    /// Admin or the node `id` itself.
    ///
    /// # Errors
    /// 403 for another node's token.
    pub fn require_node(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::Node(n) if n == id => Ok(()),
            Principal::Node(_) => Err(ApiError::Forbidden("this token belongs to another node".into())),
        }
    }

    /// The node to check leases against: `None` for admin (any lease holder).
    pub fn lease_node(&self) -> Option<&str> {
        match self {
            Principal::Admin => None,
            Principal::Node(n) => Some(n),
        }
    }
}

fn eq_sha(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if state.no_auth {
            return Ok(Principal::Admin);
        }
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::Unauthorized("missing 'Authorization: Bearer <token>' header".into()))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".into()))?;
        let sha = token_sha(token);
        if let Some(admin) = &state.admin_sha {
            if eq_sha(&sha, admin) {
                return Ok(Principal::Admin);
            }
        }
        if let Some((node_id, _)) = token.split_once('.') {
            if crate::domain::validate::node_id(node_id) {
                if let Some(rec) = state.directory.get(&state.store, node_id).await? {
                    if eq_sha(&sha, &rec.token_sha) {
                        return Ok(Principal::Node(node_id.to_string()));
                    }
                }
            }
        }
        Err(ApiError::Unauthorized("unknown token".into()))
    }
}
