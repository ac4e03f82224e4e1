//! [`Fitness`]: whether the Redis under this process may evict muster's keys right now.
//! Start-up refuses an evicting `maxmemory-policy`; a `CONFIG SET` at run time is caught
//! by the reconciler's periodic recheck ([`crate::workers::reconciler`]) and by
//! `/readyz`, which both record the outcome here. While it is unfit, `/readyz` answers
//! 503 `unfit_redis` and every write route of `/v1` answers 503 `unfit_redis` with
//! `Retry-After` (RELIABILITY.md R5): nothing new is stored where it could be evicted.

use std::sync::Mutex;
use std::time::Duration;

/// How often the reconciler re-reads `maxmemory-policy` (a `CONFIG SET
/// maxmemory-policy allkeys-lru` is noticed within about this time plus one sweep).
pub const EVICTION_RECHECK: Duration = Duration::from_secs(2);

/// Whether Redis may evict keys, as last checked; shared by the API and the reconciler.
#[derive(Debug, Default)]
pub struct Fitness {
    /// Why Redis is unfit (the policy and the fix), or `None` when fit.
    unfit: Mutex<Option<String>>,
}

impl Fitness {
    /// Fit until a check says otherwise (start-up already refused an unfit Redis).
    pub fn new() -> std::sync::Arc<Fitness> {
        std::sync::Arc::new(Fitness::default())
    }

    /// Why Redis is unfit now, if it is.
    pub fn unfit(&self) -> Option<String> {
        self.unfit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records a check's outcome (`Some(why)`: unfit), logging each change once.
    pub fn record(&self, why: Option<String>) {
        let mut cur = self.unfit.lock().unwrap_or_else(|e| e.into_inner());
        match (&*cur, &why) {
            (None, Some(w)) => {
                tracing::error!(why = %w, "redis may evict muster's keys: writes refused (503 unfit_redis) until it is fixed");
            }
            (Some(_), None) => {
                tracing::info!("redis maxmemory-policy is safe again: writes accepted")
            }
            _ => {}
        }
        *cur = why;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitness_follows_the_last_check() {
        let f = Fitness::new();
        assert_eq!(f.unfit(), None);
        f.record(Some("allkeys-lru".into()));
        assert_eq!(f.unfit().as_deref(), Some("allkeys-lru"));
        f.record(None);
        assert_eq!(f.unfit(), None);
    }
}
