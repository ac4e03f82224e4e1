//! Lock routes: fenced, cluster-wide locks for handlers (docs/locks.md). Who may use
//! them: node tokens (handlers run on nodes), and the `agent`, `submit` and `admin`
//! roles; a `read` token may not (taking a lock is a write).

use super::auth::{Authorized, Caller, NeedLocker, Principal, Role};
use super::error::{ApiError, ApiResult};
use super::openapi::parts::{BadRequest, Guarded, Invalid};
use super::quota;
use super::{AppState, Json};
use crate::domain::coord::{
    Lock, LockAcquire, LockExtend, LockRelease, MAX_LOCK_TTL_MS, MIN_LOCK_TTL_MS,
};
use crate::domain::{Problem, rfc3339_ms, validate};
use crate::store::locks::{LockTaken, parse_lock_token};
use crate::store::quota::QuotaKind;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

fn may_lock(who: &Principal) -> ApiResult<()> {
    match who {
        Principal::Node(_) | Principal::Role(Role::Agent) => Ok(()),
        other => other.require(Role::Submit),
    }
}

fn lock_name(name: &str) -> ApiResult<()> {
    validate::queue_name(name)
        .map_err(|e| ApiError::bad("bad_lock_name", e.replace("queue name", "lock name")))
}

fn ttl(ttl_ms: i64) -> ApiResult<i64> {
    if !(MIN_LOCK_TTL_MS..=MAX_LOCK_TTL_MS).contains(&ttl_ms) {
        return Err(ApiError::invalid(
            "invalid_lock",
            format!(
                "ttl_ms must be {MIN_LOCK_TTL_MS} ms to one day ({MAX_LOCK_TTL_MS}), got {ttl_ms}"
            ),
        ));
    }
    Ok(ttl_ms)
}

fn token_fence(token: &str) -> ApiResult<i64> {
    parse_lock_token(token).ok_or_else(|| {
        ApiError::invalid(
            "invalid_lock_token",
            "token must be the '<fence>.<32 hex>' value POST /v1/locks/{name} returned",
        )
    })
}

fn not_holder(name: &str) -> ApiError {
    ApiError::conflict(
        "lock_not_held",
        format!(
            "this token does not hold lock {name:?} (it expired, was released, or another \
             holder took it): stop using the resource"
        ),
    )
}

#[utoipa::path(
    post,
    path = "/v1/locks/{name}",
    tag = "locks",
    summary = "Take a fenced lock",
    request_body = LockAcquire,
    responses(
        (status = 201, body = Lock, description = "Held: keep the token, pass the fence to the storage you protect"),
        (status = 409, body = Problem, description = "Held by someone else (`lock_held`); Retry-After says when it expires at the latest", content_type = "application/problem+json",
        headers(("Retry-After" = String, description = "Seconds until the holder's lease ends unless extended"))),
        (status = 415, body = Problem, description = "Not JSON", content_type = "application/problem+json"),
        BadRequest,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/locks/{name}`: take the lock when it is free.
///
/// # Errors
/// 409 `lock_held` with Retry-After, 422 bad TTL, 400 bad name.
pub async fn locks_acquire(
    State(st): State<AppState>,
    who: Authorized<NeedLocker>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<LockAcquire>,
) -> ApiResult<Response> {
    may_lock(&who)?;
    lock_name(&name)?;
    let ttl_ms = ttl(body.ttl_ms)?;
    let claim = quota::claim_lock(&st, &caller, &name, ttl_ms).await?;
    let taken = st.store.lock_acquire(&name, ttl_ms).await?;
    if matches!(taken, LockTaken::Held { .. }) {
        claim.keep();
    } else {
        claim.give_back(&st).await;
    }
    match taken {
        LockTaken::Held {
            token,
            fence,
            expires_ms,
        } => Ok((
            StatusCode::CREATED,
            Json(Lock {
                name,
                token,
                fence,
                expires_at: rfc3339_ms(expires_ms),
            }),
        )
            .into_response()),
        LockTaken::Busy { remaining_ms } => {
            let secs = ((remaining_ms.max(1) + 999) / 1000).max(1);
            let mut res = ApiError::conflict(
                "lock_held",
                format!("lock {name:?} is held by someone else for up to {remaining_ms} ms more"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Ok(res)
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/locks/{name}/extend",
    tag = "locks",
    summary = "Extend a held lock",
    request_body = LockExtend,
    responses(
        (status = 200, body = Lock, description = "Still held, with the new expiry"),
        (status = 409, body = Problem, description = "The token is not the current holder's (`lock_not_held`); nothing changed", content_type = "application/problem+json"),
        (status = 415, body = Problem, description = "Not JSON", content_type = "application/problem+json"),
        BadRequest,
        Invalid,
        Guarded
    )
)]
/// `POST /v1/locks/{name}/extend`: new expiry = now + `ttl_ms`, for the holder only.
///
/// # Errors
/// 409 `lock_not_held`, 422 bad TTL or token.
pub async fn locks_extend(
    State(st): State<AppState>,
    who: Authorized<NeedLocker>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<LockExtend>,
) -> ApiResult<Json<Lock>> {
    may_lock(&who)?;
    lock_name(&name)?;
    let ttl_ms = ttl(body.ttl_ms)?;
    let fence = token_fence(&body.token)?;
    let claim = quota::claim_lock(&st, &caller, &name, ttl_ms).await?;
    let extended = st.store.lock_extend(&name, &body.token, ttl_ms).await?;
    if extended.is_some() {
        claim.keep();
    } else {
        claim.give_back(&st).await;
    }
    match extended {
        Some(expires_ms) => Ok(Json(Lock {
            name,
            token: body.token,
            fence,
            expires_at: rfc3339_ms(expires_ms),
        })),
        None => Err(not_holder(&name)),
    }
}

#[utoipa::path(
    delete,
    path = "/v1/locks/{name}",
    tag = "locks",
    summary = "Release a held lock",
    description = "The token goes in the JSON body (`{\"token\": ...}`), not in the URL, so that it never lands in access logs.",
    request_body = LockRelease,
    responses(
        (status = 204, description = "Released"),
        (status = 409, body = Problem, description = "The token is not the current holder's (`lock_not_held`); nothing changed", content_type = "application/problem+json"),
        (status = 415, body = Problem, description = "Not JSON", content_type = "application/problem+json"),
        BadRequest,
        Invalid,
        Guarded
    )
)]
/// `DELETE /v1/locks/{name}` with body `{ token }`: free the lock, for the holder only.
///
/// # Errors
/// 409 `lock_not_held`, 422 bad token.
pub async fn locks_release(
    State(st): State<AppState>,
    who: Authorized<NeedLocker>,
    caller: Caller,
    Path(name): Path<String>,
    Json(body): Json<LockRelease>,
) -> ApiResult<StatusCode> {
    may_lock(&who)?;
    lock_name(&name)?;
    token_fence(&body.token)?;
    if st.store.lock_release(&name, &body.token).await? {
        quota::release(&st, &caller, QuotaKind::Locks, &name).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_holder(&name))
    }
}
