//! Token quotas: what one token holds at once against the `max_queues=`,
//! `max_schedules=` and `max_locks=` of its tokens-file entry (docs/security.md). Each
//! token's holdings of one kind are a small ZSET ([`super::keys::Keys::quota`]), bounded
//! by the quota; `quota_claim.lua` counts and claims in one step. What no longer exists
//! (a pruned queue, a deleted schedule) is found here and dropped by the claim; what
//! expires (a lock) carries its expiry as its score.

use super::{Code, Result, Store, StoreError, coded, int, text};
use redis::AsyncCommands;

/// What a token's quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Queues its submissions (or its nodes' registrations) brought into being.
    Queues,
    /// Cron schedules it created.
    Schedules,
    /// Handler locks it holds.
    Locks,
}

impl QuotaKind {
    /// `queues`, `schedules` or `locks`: the key's last part and the word in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaKind::Queues => "queues",
            QuotaKind::Schedules => "schedules",
            QuotaKind::Locks => "locks",
        }
    }
}

/// The answer of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Counted; `newly` are the members that were not counted before (to release if
    /// what they were claimed for does not happen).
    Granted {
        /// Members new to the count.
        newly: Vec<String>,
    },
    /// Claiming would pass the quota: nothing was claimed.
    Exceeded {
        /// How many the token holds.
        held: u64,
        /// Its quota.
        quota: u64,
    },
}

impl Store {
    /// Claims `members` of `kind` for `owner` under `quota`, after dropping `gone`;
    /// `life_ms` gives the claimed members an expiry.
    async fn quota_claim(
        &self,
        owner: &str,
        kind: QuotaKind,
        quota: u32,
        life_ms: Option<i64>,
        gone: &[String],
        members: &[&str],
    ) -> Result<Claim> {
        let mut inv = self.scripts.quota_claim.prepare_invoke();
        inv.key(self.keys.quota(owner, kind.as_str()));
        inv.arg(quota)
            .arg(life_ms.map(|l| l.to_string()).unwrap_or_default())
            .arg(gone.len())
            .arg(gone)
            .arg(members);
        let mut c = self.conn();
        let (code, rest) = coded(inv.invoke_async(&mut c).await?)?;
        match code {
            Code::Ok => Ok(Claim::Granted {
                newly: rest
                    .first()
                    .and_then(text)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.split(',').map(str::to_string).collect())
                    .unwrap_or_default(),
            }),
            Code::Conflict => Ok(Claim::Exceeded {
                held: rest.first().and_then(int).unwrap_or(0).max(0) as u64,
                quota: rest.get(1).and_then(int).unwrap_or(0).max(0) as u64,
            }),
            c => Err(c.unexpected("quota_claim")),
        }
    }

    /// What `owner` holds of `kind`, as counted (expired members included until the
    /// next claim drops them).
    async fn quota_members(&self, owner: &str, kind: QuotaKind) -> Result<Vec<String>> {
        let mut c = self.conn();
        Ok(c.zrange(self.keys.quota(owner, kind.as_str()), 0, -1)
            .await?)
    }

    /// Claims the queues among `queues` that do not exist yet for `owner`, whose
    /// quota is `quota` queues; the queues it brought into being that were pruned
    /// since no longer count. Nothing to claim (every queue exists): granted at the
    /// cost of one SMISMEMBER.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn claim_queues(&self, owner: &str, quota: u32, queues: &[&str]) -> Result<Claim> {
        let mut c = self.conn();
        let known: Vec<bool> = c.smismember(self.keys.queues(), queues).await?;
        let new: Vec<&str> = queues
            .iter()
            .zip(known)
            .filter(|(_, k)| !k)
            .map(|(q, _)| *q)
            .collect();
        if new.is_empty() {
            return Ok(Claim::Granted { newly: Vec::new() });
        }
        let held = self.quota_members(owner, QuotaKind::Queues).await?;
        let gone = if held.is_empty() {
            Vec::new()
        } else {
            let live: Vec<bool> = c.smismember(self.keys.queues(), &held).await?;
            held.into_iter()
                .zip(live)
                .filter(|(_, l)| !l)
                .map(|(q, _)| q)
                .collect()
        };
        self.quota_claim(owner, QuotaKind::Queues, quota, None, &gone, &new)
            .await
    }

    /// Claims the schedule `name` for `owner` under `quota`; the schedules it created
    /// that were deleted since no longer count.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn claim_schedule(&self, owner: &str, quota: u32, name: &str) -> Result<Claim> {
        let held = self.quota_members(owner, QuotaKind::Schedules).await?;
        let gone = if held.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for h in &held {
                pipe.exists(self.keys.schedule(h));
            }
            let mut c = self.conn();
            let live: Vec<bool> = pipe.query_async(&mut c).await?;
            held.into_iter()
                .zip(live)
                .filter(|(_, l)| !l)
                .map(|(s, _)| s)
                .collect()
        };
        self.quota_claim(owner, QuotaKind::Schedules, quota, None, &gone, &[name])
            .await
    }

    /// Claims the lock `name` for `owner` under `quota` for `ttl_ms` (as long as the
    /// lock is held; extending it claims it again). A lock that expired no longer
    /// counts.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn claim_lock(
        &self,
        owner: &str,
        quota: u32,
        name: &str,
        ttl_ms: i64,
    ) -> Result<Claim> {
        if ttl_ms <= 0 {
            return Err(StoreError::Protocol(
                "a lock's quota claim needs a TTL".into(),
            ));
        }
        self.quota_claim(owner, QuotaKind::Locks, quota, Some(ttl_ms), &[], &[name])
            .await
    }

    /// Stops counting `member` of `kind` for `owner` (released, or claimed for
    /// something that did not happen).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn quota_release(&self, owner: &str, kind: QuotaKind, member: &str) -> Result<()> {
        let mut c = self.conn();
        let _: i64 = c
            .zrem(self.keys.quota(owner, kind.as_str()), member)
            .await?;
        Ok(())
    }

    /// [`Store::quota_release`] of several members.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn quota_release_all(
        &self,
        owner: &str,
        kind: QuotaKind,
        members: &[String],
    ) -> Result<()> {
        if members.is_empty() {
            return Ok(());
        }
        let mut c = self.conn();
        let _: i64 = c
            .zrem(self.keys.quota(owner, kind.as_str()), members)
            .await?;
        Ok(())
    }
}
