//! Cron schedules in Redis: one hash per schedule, a capped list of its fires, the name
//! set, and the scheduler's leader lease, all under the hash tag `{~sched}` so that one
//! script can check the leader and record a fire atomically. Scripts: `sched_*.lua`.
//! The scheduler loop that fires them is `crate::workers::scheduler`.

use super::scripts::COORD;
use super::{Result, Store, StoreError, coded, flat_map, int, text};
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

fn fire_from_json(s: &str) -> Option<Fire> {
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
        let v = COORD
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
        let (code, rest) = coded(v)?;
        match code {
            0 => Ok(Some(rest.first().and_then(int).unwrap_or(0))),
            1 => Ok(None),
            c => Err(StoreError::Protocol(format!("sched_create returned {c}"))),
        }
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
        let v = COORD
            .sched_delete
            .key(self.keys.schedule(name))
            .key(self.keys.schedule_fires(name))
            .key(self.keys.schedules())
            .arg(name)
            .invoke_async(&mut c)
            .await?;
        Ok(coded(v)?.0 == 0)
    }

    /// Pauses or resumes a schedule; `false` when absent. Resuming never fires the
    /// ticks that passed while paused.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_set_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let mut c = self.conn();
        let v = COORD
            .sched_pause
            .key(self.keys.schedule(name))
            .arg(if paused { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        Ok(coded(v)?.0 == 0)
    }

    async fn leader_call(
        &self,
        mode: &str,
        token: &str,
        ttl_ms: i64,
        label: &str,
    ) -> Result<(i64, Vec<redis::Value>)> {
        let mut c = self.conn();
        let v = COORD
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
            0 => Ok(Ok(rest.first().and_then(text).ok_or_else(|| {
                StoreError::Protocol("sched_leader: no token".into())
            })?)),
            _ => Ok(Err(rest.first().and_then(int).unwrap_or(0))),
        }
    }

    /// Renews the leader lease held with `token`; `false` when it is lost.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_renew(&self, token: &str, ttl_ms: i64) -> Result<bool> {
        Ok(self.leader_call("renew", token, ttl_ms, "").await?.0 == 0)
    }

    /// Gives the leader lease up (at shutdown) so another replica takes over at once.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn scheduler_release(&self, token: &str) -> Result<bool> {
        Ok(self.leader_call("release", token, 0, "").await?.0 == 0)
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
        let v = COORD
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
            0 => FireStep::Recorded {
                now_ms: rest.first().and_then(int).unwrap_or(0),
            },
            -1 => FireStep::NotLeader,
            -2 => FireStep::Gone,
            1 => FireStep::Already,
            2 => FireStep::Pending,
            c => return Err(StoreError::Protocol(format!("sched_fire returned {c}"))),
        })
    }

    /// Clears a pending fire once its task is stored.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn schedule_fire_done(&self, name: &str, tick_ms: i64, task_id: &str) -> Result<()> {
        let mut c = self.conn();
        let _: redis::Value = COORD
            .sched_done
            .key(self.keys.schedule(name))
            .arg(pending_marker(tick_ms, task_id))
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Doctor checks of schedules, the scheduler lease and handler locks: every listed
    /// schedule has a well-formed record with a usable cron expression and vice versa,
    /// every stored fire parses, the leader lease has a TTL, and every held lock has
    /// a TTL and a fence counter at least its token's fence.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn doctor_coordination(&self, violations: &mut Vec<String>) -> Result<()> {
        let mut c = self.conn();
        let k = &self.keys;
        let names = self.schedule_names().await?;
        for name in &names {
            let v: redis::Value = redis::cmd("HGETALL")
                .arg(k.schedule(name))
                .query_async(&mut c)
                .await?;
            let h = flat_map(v)?;
            match schedule_from_hash(&h) {
                None if h.is_empty() => {
                    violations.push(format!("schedule {name} is listed but has no record"))
                }
                None => violations.push(format!("schedule {name} has a malformed record")),
                Some(rec) => {
                    if rec.name != *name {
                        violations.push(format!("schedule {name} records the name {:?}", rec.name));
                    }
                    if let Err(e) = crate::domain::cron::CronSpec::parse(&rec.cron, &rec.timezone) {
                        violations.push(format!("schedule {name} cannot be fired: {e}"));
                    }
                }
            }
            let fires: Vec<String> = c.lrange(k.schedule_fires(name), 0, -1).await?;
            if fires.iter().any(|f| fire_from_json(f).is_none()) {
                violations.push(format!("schedule {name} has a malformed fire record"));
            }
        }
        let prefix = k.schedule("");
        for key in super::doctor::scan(&mut c, &format!("{}*", super::doctor::glob_escape(&prefix)))
            .await?
        {
            let name = &key[prefix.len()..];
            if !names.iter().any(|n| n == name) {
                violations.push(format!("schedule record {name} is not in the schedule set"));
            }
        }
        let pttl: i64 = c.pttl(k.scheduler_leader()).await?;
        if pttl == -1 {
            violations.push("the scheduler leader lease has no TTL".into());
        }
        let holder_suffix = "}:holder";
        let lock_prefix = format!("{}:{{~lock:", k.ns());
        let pattern = format!(
            "{}*{holder_suffix}",
            super::doctor::glob_escape(&lock_prefix)
        );
        for key in super::doctor::scan(&mut c, &pattern).await? {
            let Some(name) = key
                .strip_prefix(&lock_prefix)
                .and_then(|r| r.strip_suffix(holder_suffix))
            else {
                continue;
            };
            let token: Option<String> = c.get(&key).await?;
            let ttl: i64 = c.pttl(&key).await?;
            let counter: Option<i64> = c.get(k.lock_fence(name)).await?;
            let fence = token.as_deref().and_then(super::locks::parse_lock_token);
            match (fence, counter) {
                (_, None) => {
                    violations.push(format!("lock {name} is held without a fence counter"))
                }
                (None, _) if token.is_some() => {
                    violations.push(format!("lock {name} has a malformed token"))
                }
                (Some(f), Some(n)) if f > n => violations.push(format!(
                    "lock {name} is held with fence {f} above its counter {n}"
                )),
                _ => {}
            }
            if ttl == -1 {
                violations.push(format!("lock {name} is held without a TTL"));
            }
        }
        Ok(())
    }
}
