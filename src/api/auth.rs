//! Bearer-token authentication and roles. Tokens are compared as SHA-256 hashes in
//! constant time and never stored or logged in clear. Roles: `admin` (everything),
//! `submit` (submit and cancel tasks, and read), `read` (GET routes), `agent` (register
//! nodes). A node token (`<node id>.<secret>`, returned once by `POST /v1/nodes`) only
//! works for that node's own agent routes.
//!
//! Every authenticated response says which role its token has in the header
//! `X-Muster-Role` (`admin`, `submit`, `read`, `agent` or `node`), so that a client such
//! as the web console learns what it may do without trying an action.

use super::AppState;
use super::error::ApiError;
use crate::store::token_sha;
use axum::extract::{FromRequestParts, Request};
use axum::http::HeaderValue;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::{Arc, OnceLock};
use subtle::ConstantTimeEq;

/// Name of the response header that tells the caller its token's role.
pub const ROLE_HEADER: &str = "x-muster-role";

/// Where the [`Principal`] extractor leaves the caller's role for [`role_header`]: the
/// response is built after the extractor ran, so the role travels in a shared slot
/// rather than being worked out a second time.
#[derive(Clone, Default)]
struct RoleSlot(Arc<OnceLock<&'static str>>);

/// Middleware: adds `X-Muster-Role` to every response whose request was authenticated.
pub async fn role_header(mut req: Request, next: Next) -> Response {
    let slot = RoleSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut res = next.run(req).await;
    if let Some(role) = slot.0.get() {
        res.headers_mut()
            .insert(ROLE_HEADER, HeaderValue::from_static(role));
    }
    res
}

pub use crate::domain::roles::{QueueScope, Role, TokenQuotas};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A role token (the admin token, or `--no-auth`, is `Role(Admin)`).
    Role(Role),
    /// A node's own token.
    Node(String),
}

impl Principal {
    /// The admin principal.
    #[allow(non_upper_case_globals)]
    pub const Admin: Principal = Principal::Role(Role::Admin);

    /// Requires a role that includes `need`.
    ///
    /// # Errors
    /// 403 otherwise.
    pub fn require(&self, need: Role) -> Result<(), ApiError> {
        match self {
            Principal::Role(r) if r.grants(need) => Ok(()),
            Principal::Role(r) => Err(ApiError::Forbidden(format!(
                "a {} token may not do this; it needs the {} role",
                r.name(),
                need.name()
            ))),
            Principal::Node(_) => Err(ApiError::Forbidden(
                "a node token may only call its own node's agent routes".into(),
            )),
        }
    }

    /// Admin only.
    ///
    /// # Errors
    /// 403 for everyone else.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        self.require(Role::Admin)
    }

    /// Admin or the node `id` itself.
    ///
    /// # Errors
    /// 403 for another node's token or a non-admin role.
    pub fn require_node(&self, id: &str) -> Result<(), ApiError> {
        match self {
            Principal::Node(n) if n == id => Ok(()),
            Principal::Node(_) => Err(ApiError::Forbidden(
                "this token belongs to another node".into(),
            )),
            other => other.require(Role::Admin),
        }
    }

    /// Lease operations (extend, complete, fail): a node token, or admin acting for any
    /// node.
    ///
    /// # Errors
    /// 403 for other role tokens.
    pub fn require_lease_holder(&self) -> Result<(), ApiError> {
        match self {
            Principal::Node(_) => Ok(()),
            other => other.require(Role::Admin),
        }
    }

    /// The node to check leases against: `None` for admin (any lease holder).
    pub fn lease_node(&self) -> Option<&str> {
        match self {
            Principal::Node(n) => Some(n),
            Principal::Role(_) => None,
        }
    }
}

fn eq_sha(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Principal {
    /// The role name shown in `X-Muster-Role`.
    pub fn role_name(&self) -> &'static str {
        match self {
            Principal::Role(r) => r.name(),
            Principal::Node(_) => "node",
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The rate limiter authenticated this request already (its result rides along).
        let (who, identity) = match parts.extensions.remove::<Authenticated>() {
            Some(Authenticated(who, identity)) => (who, identity),
            None => authenticate(parts, state).await?,
        };
        if let Some(slot) = parts.extensions.get::<RoleSlot>() {
            let _ = slot.0.set(who.role_name());
        }
        parts.extensions.insert(Identity(identity));
        Ok(who)
    }
}

/// The authenticated identity (`admin`, `token:<sha>`, `node:<id>`), left by the
/// [`Principal`] extractor for [`Caller`].
#[derive(Clone)]
struct Identity(String);

/// Who is calling, by a stable identity, the queues it may reach and its quotas: what
/// the queue-scoped routes check ([`Caller::allow`]), what binds an `Idempotency-Key`
/// and what [`super::quota`] counts against.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `admin`, `token:<sha256 of the token>` or `node:<id>` (never the token itself).
    pub id: String,
    /// The queues its token is limited to (`None`: every queue).
    pub queues: Option<Arc<QueueScope>>,
    /// SHA-256 (hex) of the role token whose quotas apply: the caller's own, or for a
    /// node the token that registered it; `None` for the admin.
    pub quota_owner: Option<String>,
    /// Those quotas (empty: none).
    pub quotas: TokenQuotas,
}

impl Caller {
    /// Allows `queue` when the caller's token reaches it.
    ///
    /// # Errors
    /// 403 naming the queue.
    pub fn allow(&self, queue: &str) -> Result<(), ApiError> {
        match &self.queues {
            Some(s) if !s.allows(queue) => Err(ApiError::Forbidden(format!(
                "this token may not use queue {queue:?}; it is limited to {}",
                s.patterns().join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the caller reaches `queue`.
    pub fn reaches(&self, queue: &str) -> bool {
        self.queues.as_ref().is_none_or(|s| s.allows(queue))
    }

    /// Whether the caller's token is limited to some queues.
    pub fn scoped(&self) -> bool {
        self.queues.is_some()
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.extensions.get::<Identity>().is_none() {
            Principal::from_request_parts(parts, state).await?;
        }
        let id = parts
            .extensions
            .get::<Identity>()
            .map(|i| i.0.clone())
            .unwrap_or_else(|| "admin".into());
        let queues = id
            .strip_prefix("token:")
            .and_then(|sha| state.token_queues.get(sha).cloned());
        let quota_owner = match id.split_once(':') {
            Some(("token", sha)) => Some(sha.to_string()),
            Some(("node", node)) => quota_owner_of_node(state, node).await?,
            _ => None,
        };
        let quotas = quota_owner
            .as_deref()
            .and_then(|sha| state.token_quotas.get(sha).copied())
            .unwrap_or_default();
        Ok(Caller {
            id,
            queues,
            quota_owner,
            quotas,
        })
    }
}

/// The role token that registered `node` (its SHA-256), when it has quotas: a node's
/// streams and locks count against them.
///
/// # Errors
/// Redis errors.
pub(crate) async fn quota_owner_of_node(
    state: &AppState,
    node: &str,
) -> Result<Option<String>, ApiError> {
    if state.token_quotas.is_empty() {
        return Ok(None);
    }
    Ok(state
        .directory
        .get(&state.store, node)
        .await?
        .map(|r| r.owner)
        .filter(|o| state.token_quotas.contains_key(o)))
}

/// What a route needs of its caller. Checked by [`Authorized`] while the request's head
/// is extracted, so a caller without the right is refused before its body is read or
/// parsed (a low-privilege token cannot make the server parse 32 MiB for a 403).
pub trait Need: Send + Sync + 'static {
    /// Allows `who` on the request whose head is `parts`, or says why not.
    ///
    /// # Errors
    /// 403.
    fn check(who: &Principal, parts: &Parts) -> Result<(), ApiError>;
}

/// The `submit` role (or admin).
pub struct NeedSubmit;
/// The `agent` role (or admin).
pub struct NeedAgent;
/// The admin token.
pub struct NeedAdmin;
/// A node token, or admin acting for any node: the lease operations.
pub struct NeedLeaseHolder;
/// The token of the node named by the path's `{id}` (`/v1/nodes/{id}/...`), or admin.
pub struct NeedPathNode;
/// Handler locks: node and agent tokens, or `submit` and up.
pub struct NeedLocker;

impl Need for NeedSubmit {
    fn check(who: &Principal, _: &Parts) -> Result<(), ApiError> {
        who.require(Role::Submit)
    }
}
impl Need for NeedAgent {
    fn check(who: &Principal, _: &Parts) -> Result<(), ApiError> {
        who.require(Role::Agent)
    }
}
impl Need for NeedAdmin {
    fn check(who: &Principal, _: &Parts) -> Result<(), ApiError> {
        who.require_admin()
    }
}
impl Need for NeedLeaseHolder {
    fn check(who: &Principal, _: &Parts) -> Result<(), ApiError> {
        who.require_lease_holder()
    }
}
impl Need for NeedPathNode {
    fn check(who: &Principal, parts: &Parts) -> Result<(), ApiError> {
        // `/v1/nodes/{id}/...`: the id is the third segment (percent-decoding is not
        // needed: a node id is a ULID, and anything else matches no node).
        let id = parts.uri.path().split('/').nth(3).unwrap_or("");
        who.require_node(id)
    }
}
impl Need for NeedLocker {
    fn check(who: &Principal, _: &Parts) -> Result<(), ApiError> {
        match who {
            Principal::Node(_) | Principal::Role(Role::Agent) => Ok(()),
            other => other.require(Role::Submit),
        }
    }
}

/// A caller allowed by `N`, checked before the body (extractors of the head run first).
pub struct Authorized<N: Need>(pub Principal, std::marker::PhantomData<N>);

impl<N: Need> std::ops::Deref for Authorized<N> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<N: Need> FromRequestParts<AppState> for Authorized<N> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let who = Principal::from_request_parts(parts, state).await?;
        N::check(&who, parts)?;
        Ok(Authorized(who, std::marker::PhantomData))
    }
}

/// A request's caller and its identity, found by the rate limiter or the stream limit
/// before the handler runs.
#[derive(Clone)]
pub(crate) struct Authenticated(pub(crate) Principal, pub(crate) String);

/// The caller and its rate-limit identity (`admin`, `token:<sha>`, `node:<id>`).
pub(crate) async fn authenticate(
    parts: &Parts,
    state: &AppState,
) -> Result<(Principal, String), ApiError> {
    if state.no_auth {
        return Ok((Principal::Admin, "admin".into()));
    }
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing 'Authorization: Bearer <token>' header".into())
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            // The scheme is case-insensitive (RFC 9110 11.1); spaces around the token are not part of it.
            let (scheme, token) = h.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized("the Authorization header must be 'Bearer <token>'".into())
        })?;
    let sha = token_sha(token);
    if let Some(admin) = &state.admin_sha
        && eq_sha(&sha, admin)
    {
        return Ok((Principal::Admin, "admin".into()));
    }
    // Constant time per comparison; the list is short and fixed.
    if let Some((_, role)) = state.tokens.iter().find(|(h, _)| eq_sha(&sha, h)) {
        return Ok((Principal::Role(*role), format!("token:{sha}")));
    }
    if let Some((node_id, _)) = token.split_once('.')
        && crate::domain::validate::node_id(node_id)
        && let Some(rec) = state.directory.get(&state.store, node_id).await?
        && eq_sha(&sha, &rec.token_sha)
    {
        return Ok((
            Principal::Node(node_id.to_string()),
            format!("node:{node_id}"),
        ));
    }
    Err(ApiError::Unauthorized("unknown token".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_principals_only_reach_their_own_node() {
        assert!(Principal::Node("n".into()).require(Role::Read).is_err());
        assert!(Principal::Node("n".into()).require_node("n").is_ok());
        assert!(Principal::Node("n".into()).require_node("m").is_err());
        assert!(Principal::Role(Role::Read).require_node("n").is_err());
    }
}
