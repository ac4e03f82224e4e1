//! Cron schedules in Redis: one hash per schedule, a capped list of its fires, the name
//! set, and the scheduler's leader lease, all under the hash tag `{~sched}` so that one
//! script can check the leader and record a fire atomically. Scripts: `sched_*.lua`.
//! The scheduler loop that fires them is `crate::workers::scheduler`.

use super::{Code, Result, Store, StoreError, coded, flat_map, int, int_unless, ok_unless, text};
use crate::domain::coord::{CatchUp, Fire, FireOutcome, Overlap};
use crate::domain::rfc3339_ms;
use redis::AsyncCommands;

/// Fires kept per schedule (the API shows the newest 20 by default).
pub const FIRES_KEPT: i64 = 100;

/// A schedule as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleRecord {
    /// Name.
    pub name: String,
    /// Cron expression (with seconds).
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// The `NewTask` each fire submits, as JSON text.
    pub task: String,
    /// Overlap policy.
    pub overlap: Overlap,
    /// Catch-up policy.
    pub catch_up: CatchUp,
    /// Paused.
    pub paused: bool,
    /// Creation time (ms).
    pub created_ms: i64,
    /// Every tick at or before this (ms) is handled.
    pub cursor_ms: i64,
    /// Counters.
    pub fired: i64,
    /// Counters.
    pub skipped: i64,
    /// Counters.
    pub missed: i64,
    /// Task of the latest fire.
    pub last_task: Option<String>,
    /// A fire recorded but whose task may not be stored yet: (tick ms, task id).
    pub pending: Option<(i64, String)>,
}

/// Outcome of [`Store::schedule_fire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireStep {
    /// Recorded at Redis time `now_ms`.
    Recorded {
        /// When.
        now_ms: i64,
    },
    /// The caller's leader token is not current: it must not fire.
    NotLeader,
    /// The schedule was deleted.
    Gone,
    /// The tick was already handled (by another leader).
    Already,
    /// Another fire is pending: complete it first.
    Pending,
}

/// The pending marker `"<tick>|<task id>"` of a fire.
pub fn pending_marker(tick_ms: i64, task_id: &str) -> String {
    format!("{tick_ms}|{task_id}")
}

fn parse_pending(s: &str) -> Option<(i64, String)> {
    let (tick, id) = s.split_once('|')?;
    Some((tick.parse().ok()?, id.to_string()))
}

/// Builds a schedule record from its hash; `None` when a field is missing or malformed
/// (the doctor reports those).
pub fn schedule_from_hash(h: &std::collections::HashMap<String, String>) -> Option<ScheduleRecord> {
    let get = |k: &str| h.get(k).cloned();
    let num = |k: &str| h.get(k).and_then(|v| v.parse::<i64>().ok());
    let overlap = match h.get("overlap")?.as_str() {
        "allow" => Overlap::Allow,
        "skip" => Overlap::Skip,
        _ => return None,
    };
    let catch_up = match h.get("catch_up")?.as_str() {
        "none" => CatchUp::None,
        "one" => CatchUp::One,
        _ => return None,
    };
    let pending = match h.get("pending").map(String::as_str) {
        None | Some("") => None,
        Some(p) => Some(parse_pending(p)?),
    };
    Some(ScheduleRecord {
        name: get("name")?,
        cron: get("cron")?,
        timezone: get("timezone")?,
        task: get("task")?,
        overlap,
        catch_up,
        paused: h.get("paused")? == "1",
        created_ms: num("created_at")?,
        cursor_ms: num("cursor")?,
        fired: num("fired")?,
        skipped: num("skipped")?,
        missed: num("missed")?,
        last_task: get("last_task").filter(|s| !s.is_empty()),
        pending,
    })
}

#[derive(serde::Deserialize)]
struct StoredFire {
    tick: i64,
    at: i64,
    outcome: FireOutcome,
    #[serde(default)]
    task: String,
    #[serde(default)]
    error: String,
}

pub(super) fn fire_from_json(s: &str) -> Option<Fire> {
    let f: StoredFire = serde_json::from_str(s).ok()?;
    Some(Fire {
        tick_at: rfc3339_ms(f.tick),
        fired_at: rfc3339_ms(f.at),
        outcome: f.outcome,
        task_id: (!f.task.is_empty()).then_some(f.task),
        error: (!f.error.is_empty()).then_some(f.error),
    })
}

fn overlap_str(o: Overlap) -> &'static str {
    match o {
        Overlap::Allow => "allow",
        Overlap::Skip => "skip",
    }
}

fn catch_up_str(c: CatchUp) -> &'static str {
    match c {
        CatchUp::None => "none",
        CatchUp::One => "one",
    }
}

fn outcome_str(o: FireOutcome) -> &'static str {
    match o {
        FireOutcome::Fired => "fired",
        FireOutcome::Skipped => "skipped",
        FireOutcome::Missed => "missed",
        FireOutcome::Error => "error",
    }
}

impl Store {
    /// Stores a new schedule (validated by the caller); `None` when the name is taken.
    /// Returns the creation time (ms).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_create(
        &self,
        name: &str,
        cron: &str,
        timezone: &str,
        task_json: &str,
        overlap: Overlap,
        catch_up: CatchUp,
    ) -> Result<Option<i64>> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_create
            .key(self.keys.schedule(name))
            .key(self.keys.schedules())
            .arg(name)
            .arg(cron)
            .arg(timezone)
            .arg(task_json)
            .arg(overlap_str(overlap))
            .arg(catch_up_str(catch_up))
            .invoke_async(&mut c)
            .await?;
        int_unless(coded(v)?, Code::Conflict, "sched_create")
    }

    /// Every schedule name, sorted.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_names(&self) -> Result<Vec<String>> {
        let mut c = self.conn();
        let mut names: Vec<String> = c.smembers(self.keys.schedules()).await?;
        names.sort();
        Ok(names)
    }

    /// How many schedules exist.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_count(&self) -> Result<i64> {
        let mut c = self.conn();
        Ok(c.scard(self.keys.schedules()).await?)
    }

    /// One schedule; `None` when absent. A malformed record is an error.
    ///
    /// # Errors
    /// Redis errors; [`StoreError::Protocol`] for a malformed record.
    pub async fn schedule(&self, name: &str) -> Result<Option<ScheduleRecord>> {
        let mut c = self.conn();
        let v: redis::Value = redis::cmd("HGETALL")
            .arg(self.keys.schedule(name))
            .query_async(&mut c)
            .await?;
        let h = flat_map(v)?;
        if h.is_empty() {
            return Ok(None);
        }
        schedule_from_hash(&h)
            .map(Some)
            .ok_or_else(|| StoreError::Protocol(format!("schedule {name} is malformed")))
    }

    /// The newest `n` fires of a schedule, newest first.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_fires(&self, name: &str, n: i64) -> Result<Vec<Fire>> {
        let mut c = self.conn();
        let raw: Vec<String> = c
            .lrange(self.keys.schedule_fires(name), 0, (n - 1) as isize)
            .await?;
        Ok(raw.iter().filter_map(|s| fire_from_json(s)).collect())
    }

    /// Deletes a schedule and its fire history; `false` when absent.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_delete(&self, name: &str) -> Result<bool> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_delete
            .key(self.keys.schedule(name))
            .key(self.keys.schedule_fires(name))
            .key(self.keys.schedules())
            .arg(name)
            .invoke_async(&mut c)
            .await?;
        ok_unless(coded(v)?.0, Code::NotFound, "sched_delete")
    }

    /// Pauses or resumes a schedule; `false` when absent. Resuming never fires the
    /// ticks that passed while paused.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_set_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_pause
            .key(self.keys.schedule(name))
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        ok_unless(coded(v)?.0, Code::NotFound, "sched_pause")
    }

    async fn leader_call(
        &self,
        mode: &str,
        token: &str,
        ttl_ms: i64,
        label: &str,
    ) -> Result<(Code, Vec<redis::Value>)> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_leader
            .key(self.keys.scheduler_leader())
            .key(self.keys.scheduler_fence())
            .arg(mode)
            .arg(token)
            .arg(ttl_ms)
            .arg(label)
            .invoke_async(&mut c)
            .await?;
        coded(v)
    }

    /// Tries to become the scheduler leader for `ttl_ms`: `Ok(token)`, or
    /// `Err(remaining_ms)` of the current leader's lease.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_acquire(&self, label: &str, ttl_ms: i64) -> Result<Result<String, i64>> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let (code, rest) = self.leader_call("acquire", &nonce, ttl_ms, label).await?;
        match code {
            Code::Ok => Ok(Ok(rest.first().and_then(text).ok_or_else(|| {
                StoreError::Protocol("sched_leader: no token".into())
            })?)),
            Code::Conflict => Ok(Err(rest.first().and_then(int).unwrap_or(0))),
            c => Err(c.unexpected("sched_leader")),
        }
    }

    /// Renews the leader lease held with `token`; `false` when it is lost.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_renew(&self, token: &str, ttl_ms: i64) -> Result<bool> {
        let (code, _) = self.leader_call("renew", token, ttl_ms, "").await?;
        ok_unless(code, Code::Conflict, "sched_leader")
    }

    /// Gives the leader lease up (at shutdown) so another replica takes over at once.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_release(&self, token: &str) -> Result<bool> {
        let (code, _) = self.leader_call("release", token, 0, "").await?;
        ok_unless(code, Code::Conflict, "sched_leader")
    }

    /// The current leader token, if any (for tests and operators).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_leader(&self) -> Result<Option<String>> {
        let mut c = self.conn();
        Ok(c.get(self.keys.scheduler_leader()).await?)
    }

    /// Records what became of `tick_ms` of schedule `name` (the leader only). For
    /// `fired`, `task_id` is the task about to be submitted and stays pending until
    /// [`Store::schedule_fire_done`].
    ///
    /// # Errors
    /// Redis errors.
    #[allow(clippy::too_many_arguments)]
    pub async fn schedule_fire(
        &self,
        leader: &str,
        name: &str,
        tick_ms: i64,
        outcome: FireOutcome,
        task_id: Option<&str>,
        error: Option<&str>,
        earlier_missed: i64,
    ) -> Result<FireStep> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_fire
            .key(self.keys.scheduler_leader())
            .key(self.keys.schedule(name))
            .key(self.keys.schedule_fires(name))
            .arg(leader)
            .arg(tick_ms)
            .arg(outcome_str(outcome))
            .arg(task_id.unwrap_or(""))
            .arg(error.unwrap_or(""))
            .arg(earlier_missed)
            .arg(FIRES_KEPT)
            .invoke_async(&mut c)
            .await?;
        let (code, rest) = coded(v)?;
        Ok(match code {
            Code::Ok => FireStep::Recorded {
                now_ms: rest.first().and_then(int).unwrap_or(0),
            },
            Code::NotLeader => FireStep::NotLeader,
            Code::NotFound => FireStep::Gone,
            Code::Repeat => FireStep::Already,
            Code::Conflict => FireStep::Pending,
        })
    }

    /// Clears a pending fire once its task is stored.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_fire_done(&self, name: &str, tick_ms: i64, task_id: &str) -> Result<()> {
        let mut c = self.conn();
        let v = self
            .scripts
            .sched_done
            .key(self.keys.schedule(name))
            .arg(pending_marker(tick_ms, task_id))
            .invoke_async(&mut c)
            .await?;
        // A marker already cleared (by an earlier try) or another fire's is left alone.
        ok_unless(coded(v)?.0, Code::NotFound, "sched_done").map(drop)
    }
}
