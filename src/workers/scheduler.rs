//! The scheduler: fires cron schedules, exactly one task per tick whatever the number of
//! replicas. Two guards, either of which alone would be enough most of the time:
//! - a **leader lease** in Redis (`sched_leader.lua`, SET NX PX with a fenced token,
//!   renewed at a third of its TTL): only the leader fires, and `sched_fire.lua` checks
//!   the token atomically with advancing the schedule's cursor, so a deposed leader
//!   cannot record a fire;
//! - a **per-tick idempotency key** `schedule:<name>:<tick ms>` on the submission, so
//!   that even two leaders for a moment (or a leader that died between recording a fire
//!   and storing its task, completed by the next one) store one task per tick.
//!
//! A fire is recorded first (with its task id, as `pending`) and the task stored after;
//! whoever leads next completes a pending fire with the same task id. The loop sleeps
//! until the next tick or the next lease renewal, whichever comes first; followers sleep
//! until the leader's lease would expire. Redis outages are logged and retried, never
//! fatal.

use crate::domain::NewTask;
use crate::domain::coord::{CatchUp, FireOutcome, Overlap};
pub use crate::domain::cron::CronSpec;
use crate::service::hub::Hub;
use crate::service::submit::{Idempotency, SubmitError, submit};
use crate::store::schedules::{FireStep, ScheduleRecord};
use crate::store::{PreparedTask, Store, StoreError, Submitted};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Default TTL of the leader lease. Below one second so that a leader's crash costs
/// no tick of a one-second schedule (the next leader fires it, late by at most this).
pub const LEADER_TTL_MS: i64 = 600;
/// With `catch_up: none`, a tick fired later than this is recorded as missed instead.
pub const MISFIRE_GRACE_MS: i64 = 1000;
/// How long a tick's idempotency key outlives the next tick.
const IDEM_MARGIN_MS: i64 = 10 * 60 * 1000;
/// How often a replica looks for a first schedule while there is none.
pub const IDLE_POLL: Duration = Duration::from_millis(500);
/// Most earlier missed ticks counted one by one when catching up.
const COUNT_CAP: usize = 100_000;

/// The idempotency key of one tick's submission.
pub fn tick_key(name: &str, tick_ms: i64) -> String {
    format!("schedule:{name}:{tick_ms}")
}

/// Builds the task a fire submits, with `origin` = `schedule:<name>`; `id` overrides
/// the fresh id (completing a pending fire).
///
/// # Errors
/// The stored task no longer validates.
pub fn fire_task(task_json: &str, name: &str, id: Option<&str>) -> Result<PreparedTask, String> {
    let t: NewTask = serde_json::from_str(task_json).map_err(|e| format!("stored task: {e}"))?;
    let mut p = crate::domain::TaskSpec::parse(t, "task.").map_err(|e| e.to_string())?;
    if let Some(id) = id {
        // The id recorded with the fire names its shard already.
        p.id = id.to_string();
        p.placed = true;
    }
    // Shown as `origin` on the task: the link back to its schedule.
    p.origin = Some(format!("schedule:{name}"));
    Ok(p)
}

struct Leader {
    token: String,
    valid_until: Instant,
    renew_at: Instant,
}

/// The scheduler component.
pub struct Scheduler {
    store: Store,
    hub: Arc<Hub>,
    ttl_ms: i64,
    label: String,
    leader: Option<Leader>,
    failing: bool,
}

impl Scheduler {
    /// A scheduler with the default lease TTL ([`LEADER_TTL_MS`]).
    pub fn new(store: Store, hub: Arc<Hub>) -> Scheduler {
        Scheduler {
            store,
            hub,
            ttl_ms: LEADER_TTL_MS,
            label: std::process::id().to_string(),
            leader: None,
            failing: false,
        }
    }

    /// The same with a leader lease of `ttl_ms` (at least 100 ms): a longer one makes a
    /// leader's crash cost more ticks, and keeps a replica stepped by hand (tests) the
    /// leader between its steps.
    #[must_use]
    pub fn with_ttl_ms(mut self, ttl_ms: i64) -> Scheduler {
        self.ttl_ms = ttl_ms.max(100);
        self
    }

    /// Whether this replica holds a valid leader lease now.
    pub fn is_leader(&self) -> bool {
        self.leader
            .as_ref()
            .is_some_and(|l| Instant::now() < l.valid_until)
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms as u64)
    }

    /// Runs until `shutdown`, then gives the lease up so another replica takes over.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let wait = match self.step().await {
                Ok(w) => {
                    if self.failing {
                        tracing::info!("scheduler: redis reachable again");
                        self.failing = false;
                    }
                    w
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, "scheduler: round failed; retrying");
                        self.failing = true;
                    } else {
                        tracing::debug!(error = %e, "scheduler: round failed");
                    }
                    Duration::from_millis(250)
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Some(l) = self.leader.take() {
            let _ = self.store.scheduler_release(&l.token).await;
        }
    }

    /// One round: keep or take the leader lease, and as leader fire every due tick.
    /// Returns how long to sleep: until the next tick or lease renewal (leader), or
    /// until the leader's lease would expire (follower).
    ///
    /// # Errors
    /// Redis errors (the caller retries).
    pub async fn step(&mut self) -> Result<Duration, StoreError> {
        // Without schedules nobody leads: a deployment that uses none pays one SCARD
        // per replica and [`IDLE_POLL`], and its keyspace stays untouched.
        if self.store.schedule_count().await? == 0 {
            if let Some(l) = self.leader.take() {
                self.store.scheduler_release(&l.token).await?;
            }
            return Ok(IDLE_POLL);
        }
        let ttl = self.ttl();
        let renew_every = ttl / 3;
        // Counted from before the call: the lease may have started then.
        let margin = Duration::from_millis(50).min(ttl / 4);
        if let Some(l) = &mut self.leader
            && Instant::now() >= l.renew_at
        {
            let t0 = Instant::now();
            if self.store.scheduler_renew(&l.token, self.ttl_ms).await? {
                l.valid_until = t0 + ttl - margin;
                l.renew_at = t0 + renew_every;
            } else {
                tracing::info!("scheduler: leader lease lost");
                self.leader = None;
            }
        }
        if self.leader.is_none() {
            let t0 = Instant::now();
            match self
                .store
                .scheduler_acquire(&self.label, self.ttl_ms)
                .await?
            {
                Ok(token) => {
                    // Not the token: it is the fencing secret of the leader lease.
                    tracing::info!(replica = %self.label, "scheduler: this replica leads");
                    self.leader = Some(Leader {
                        token,
                        valid_until: t0 + ttl - margin,
                        renew_at: t0 + renew_every,
                    });
                }
                Err(remaining) => {
                    let ms = (remaining + 2).clamp(5, self.ttl_ms) as u64;
                    return Ok(Duration::from_millis(ms));
                }
            }
        }
        let next_tick = self.fire_due().await?;
        let now = Instant::now();
        let renew_at = self.leader.as_ref().map(|l| l.renew_at).unwrap_or(now);
        let mut wake = renew_at;
        if let Some(t) = next_tick {
            wake = wake.min(t);
        }
        Ok(wake
            .saturating_duration_since(now)
            .max(Duration::from_millis(1)))
    }

    /// Fires every schedule's due tick; returns when the next tick is due.
    async fn fire_due(&mut self) -> Result<Option<Instant>, StoreError> {
        let names = self.store.schedule_names().await?;
        let now = self.store.now_ms().await?;
        let measured = Instant::now();
        let mut next: Option<i64> = None;
        for name in names {
            if !self.is_leader() {
                break;
            }
            let rec = match self.store.schedule(&name).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e @ StoreError::Protocol(_)) => {
                    tracing::warn!(schedule = %name, error = %e, "scheduler: skipping a malformed schedule");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if let Some(t) = self.fire_one(&rec, now).await? {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        // A tick instant in Redis time, turned into a local deadline (+1 ms: never wake
        // just before it).
        Ok(next.map(|t| measured + Duration::from_millis((t - now).max(0) as u64 + 1)))
    }

    /// Handles one schedule at Redis time `now`; returns its next tick.
    async fn fire_one(
        &mut self,
        rec: &ScheduleRecord,
        now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let spec = match CronSpec::parse(&rec.cron, &rec.timezone) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %rec.name, error = %e, "scheduler: unusable cron expression");
                return Ok(None);
            }
        };
        if let Some((tick, id)) = &rec.pending {
            self.complete(rec, &spec, *tick, id).await?;
        }
        if rec.paused {
            return Ok(None);
        }
        let Some(token) = self.leader.as_ref().map(|l| l.token.clone()) else {
            return Ok(None);
        };
        if let Some(latest) = spec.latest_until(now)
            && latest > rec.cursor_ms
        {
            let earlier = spec.count_between(rec.cursor_ms, latest, COUNT_CAP);
            let mut task: Option<PreparedTask> = None;
            let (outcome, task_id, error) =
                if rec.catch_up == CatchUp::None && now - latest > MISFIRE_GRACE_MS {
                    (FireOutcome::Missed, None, None)
                } else if rec.overlap == Overlap::Skip
                    && let Some(prev) = &rec.last_task
                    && self.unfinished(prev).await?
                {
                    (FireOutcome::Skipped, Some(prev.clone()), None)
                } else {
                    match fire_task(&rec.task, &rec.name, None) {
                        Ok(mut p) => {
                            // Placed on its shard now: the fire records the final id.
                            self.store.place(std::slice::from_mut(&mut p), None).await?;
                            let id = p.id.clone();
                            task = Some(p);
                            (FireOutcome::Fired, Some(id), None)
                        }
                        Err(e) => (FireOutcome::Error, None, Some(e)),
                    }
                };
            let step = self
                .store
                .schedule_fire(
                    &token,
                    &rec.name,
                    latest,
                    outcome,
                    task_id.as_deref(),
                    error.as_deref(),
                    earlier,
                )
                .await?;
            match step {
                FireStep::Recorded { .. } => {
                    if let Some(p) = task {
                        self.submit(rec, &spec, latest, p).await?;
                    } else if outcome != FireOutcome::Skipped {
                        tracing::warn!(schedule = %rec.name, tick = latest, ?outcome, error = ?error, "scheduler: tick not fired");
                    }
                }
                FireStep::NotLeader => {
                    tracing::info!("scheduler: leader lease lost while firing");
                    self.leader = None;
                    return Ok(None);
                }
                FireStep::Gone | FireStep::Already | FireStep::Pending => {}
            }
        }
        Ok(spec.next_after(now))
    }

    async fn unfinished(&self, id: &str) -> Result<bool, StoreError> {
        match self.store.task(id).await {
            Ok(t) => Ok(!t.state.is_terminal()),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores a recorded fire's task (idempotent per tick) and clears the marker.
    async fn submit(
        &self,
        rec: &ScheduleRecord,
        spec: &CronSpec,
        tick: i64,
        mut task: PreparedTask,
    ) -> Result<(), StoreError> {
        let ttl = spec.next_after(tick).map_or(0, |n| n - tick) + IDEM_MARGIN_MS;
        let id = task.id.clone();
        let key = tick_key(&rec.name, tick);
        let idem = Idempotency {
            key: &key,
            ttl_ms: ttl,
            binding: "",
        };
        match submit(
            &self.store,
            &self.hub,
            std::slice::from_mut(&mut task),
            Some(idem),
        )
        .await
        {
            Ok(Submitted::Created { .. }) => {
                tracing::debug!(schedule = %rec.name, tick, task_id = %id, "scheduler: fired");
            }
            Ok(Submitted::Duplicate { .. }) => {}
            Err(SubmitError::Store(e)) => return Err(e),
            Err(e @ SubmitError::UnknownDependency { .. }) => {
                // Recorded as fired: a tick whose task cannot be stored is skipped, not retried forever.
                tracing::warn!(schedule = %rec.name, tick, error = %e, "scheduler: the schedule's task waits on a task that does not exist; this tick is skipped");
            }
        }
        self.store.schedule_fire_done(&rec.name, tick, &id).await
    }

    /// Completes a fire whose leader died between recording it and storing its task.
    async fn complete(
        &self,
        rec: &ScheduleRecord,
        spec: &CronSpec,
        tick: i64,
        id: &str,
    ) -> Result<(), StoreError> {
        match self.store.task(id).await {
            Ok(_) => self.store.schedule_fire_done(&rec.name, tick, id).await,
            Err(StoreError::NotFound { .. }) => match fire_task(&rec.task, &rec.name, Some(id)) {
                Ok(p) => {
                    tracing::info!(schedule = %rec.name, tick, task_id = %id, "scheduler: completing a pending fire");
                    self.submit(rec, spec, tick, p).await
                }
                Err(e) => {
                    tracing::warn!(schedule = %rec.name, error = %e, "scheduler: pending fire's task no longer validates");
                    self.store.schedule_fire_done(&rec.name, tick, id).await
                }
            },
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_keys_name_the_schedule_and_the_tick() {
        assert_eq!(
            tick_key("nightly", 1_700_000_000_000),
            "schedule:nightly:1700000000000"
        );
    }
}
