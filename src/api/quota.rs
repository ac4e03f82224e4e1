//! Token quotas at the routes: a token of the tokens file with `max_queues=`,
//! `max_schedules=` or `max_locks=` is counted here before what it asks for is stored
//! ([`crate::store::quota`] keeps the counts), and past its quota it gets 429
//! `quota_exceeded` with what it holds and how to free some. Its open streams are held
//! to `max_streams=` by [`super::limit::stream_limit`]. The admin and tokens without
//! quotas pass at no cost. docs/security.md says what each quota protects.

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use crate::store::quota::{Claim, QuotaKind};

/// The part of a token's SHA-256 that names its quota keys.
fn owner(sha: &str) -> &str {
    &sha[..sha.len().min(16)]
}

/// 429 `quota_exceeded`: `kind` would pass the quota.
fn exceeded(kind: QuotaKind, held: u64, quota: u64) -> ApiError {
    let (how, retry_after) = match kind {
        QuotaKind::Queues => (
            "submit to the queues it has, or let empty ones be pruned (a queue empty and \
             idle for a while no longer counts)",
            60,
        ),
        QuotaKind::Schedules => ("delete one of its schedules first", 60),
        QuotaKind::Locks => ("release one of its locks first, or let one expire", 1),
    };
    ApiError::TooMany {
        code: "quota_exceeded",
        detail: format!(
            "this token may hold {quota} {kind} at once and holds {held}: {how}; an admin \
             raises max_{kind}= in the tokens file",
            kind = kind.as_str()
        ),
        retry_after,
    }
}

/// Counts the queues among `queues` that do not exist yet against the caller's
/// `max_queues=`.
///
/// # Errors
/// 429 `quota_exceeded`; Redis errors.
pub(crate) async fn claim_queues(st: &AppState, caller: &Caller, queues: &[&str]) -> ApiResult<()> {
    let (Some(sha), Some(quota)) = (&caller.quota_owner, caller.quotas.queues) else {
        return Ok(());
    };
    let mut names: Vec<&str> = queues.to_vec();
    names.sort_unstable();
    names.dedup();
    match st.store.claim_queues(owner(sha), quota, &names).await? {
        Claim::Granted { .. } => Ok(()),
        Claim::Exceeded { held, quota } => Err(exceeded(QuotaKind::Queues, held, quota)),
    }
}

/// A claim that is given back unless [`Claimed::keep`] is called: the caller counts
/// what it claimed only once it has it.
#[must_use]
pub(crate) struct Claimed {
    owner: Option<String>,
    kind: QuotaKind,
    member: String,
}

impl Claimed {
    fn none(kind: QuotaKind) -> Claimed {
        Claimed {
            owner: None,
            kind,
            member: String::new(),
        }
    }

    /// Keeps the claim (what it was for happened).
    pub(crate) fn keep(mut self) {
        self.owner = None;
    }

    /// Gives the claim back (what it was for did not happen).
    pub(crate) async fn give_back(mut self, st: &AppState) {
        if let Some(o) = self.owner.take()
            && let Err(e) = st.store.quota_release(&o, self.kind, &self.member).await
        {
            tracing::warn!(error = %e, kind = self.kind.as_str(), "a quota claim was not given back; it is dropped when it is found gone");
        }
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.owner.is_some() {
            tracing::debug!(
                kind = self.kind.as_str(),
                "a quota claim was neither kept nor given back"
            );
        }
    }
}

/// Counts the schedule `name` against the caller's `max_schedules=`.
///
/// # Errors
/// 429 `quota_exceeded`; Redis errors.
pub(crate) async fn claim_schedule(
    st: &AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<Claimed> {
    let (Some(sha), Some(quota)) = (&caller.quota_owner, caller.quotas.schedules) else {
        return Ok(Claimed::none(QuotaKind::Schedules));
    };
    claimed(
        QuotaKind::Schedules,
        sha,
        name,
        st.store.claim_schedule(owner(sha), quota, name).await?,
    )
}

/// Counts the lock `name`, held for `ttl_ms`, against the caller's `max_locks=`
/// (extending a lock claims it again, for its new TTL).
///
/// # Errors
/// 429 `quota_exceeded`; Redis errors.
pub(crate) async fn claim_lock(
    st: &AppState,
    caller: &Caller,
    name: &str,
    ttl_ms: i64,
) -> ApiResult<Claimed> {
    let (Some(sha), Some(quota)) = (&caller.quota_owner, caller.quotas.locks) else {
        return Ok(Claimed::none(QuotaKind::Locks));
    };
    claimed(
        QuotaKind::Locks,
        sha,
        name,
        st.store.claim_lock(owner(sha), quota, name, ttl_ms).await?,
    )
}

fn claimed(kind: QuotaKind, sha: &str, name: &str, claim: Claim) -> ApiResult<Claimed> {
    match claim {
        Claim::Granted { newly } => Ok(Claimed {
            owner: (!newly.is_empty()).then(|| owner(sha).to_string()),
            kind,
            member: name.to_string(),
        }),
        Claim::Exceeded { held, quota } => Err(exceeded(kind, held, quota)),
    }
}

/// Stops counting `name` of `kind` for the caller (a lock released, a schedule
/// deleted). Whatever another caller removed is found gone at its owner's next claim.
///
/// # Errors
/// Redis errors.
pub(crate) async fn release(
    st: &AppState,
    caller: &Caller,
    kind: QuotaKind,
    name: &str,
) -> ApiResult<()> {
    let quota = match kind {
        QuotaKind::Queues => caller.quotas.queues,
        QuotaKind::Schedules => caller.quotas.schedules,
        QuotaKind::Locks => caller.quotas.locks,
    };
    if let (Some(sha), Some(_)) = (&caller.quota_owner, quota) {
        st.store.quota_release(owner(sha), kind, name).await?;
    }
    Ok(())
}
