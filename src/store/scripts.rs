//! The Lua scripts of `lua/`, compiled in. Each transition script is prefixed with
//! `lua/lib.lua` (shared helpers); redis-rs runs them with EVALSHA and loads them
//! again on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).

use redis::Script;

const LIB: &str = include_str!("../../lua/lib.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

/// Every transition script, loaded once per process.
pub struct Scripts {
    /// `submit.lua`
    pub submit: Script,
    /// `promote.lua`
    pub promote: Script,
    /// `dispatch.lua`
    pub dispatch: Script,
    /// `lease.lua`
    pub lease: Script,
    /// `extend.lua`
    pub extend: Script,
    /// `complete.lua`
    pub complete: Script,
    /// `fail.lua`
    pub fail: Script,
    /// `expire.lua`
    pub expire: Script,
    /// `cancel.lua`
    pub cancel: Script,
    /// `retry.lua`
    pub retry: Script,
    /// `delete.lua`
    pub delete: Script,
    /// `requeue_inbox.lua`
    pub requeue_inbox: Script,
    /// `heartbeat.lua`
    pub heartbeat: Script,
    /// `dep_register.lua`
    pub dep_register: Script,
    /// `dep_resolved.lua`
    pub dep_resolved: Script,
    /// `batch_create.lua`
    pub batch_create: Script,
    /// `batch_begin.lua`
    pub batch_begin: Script,
    /// `batch_add.lua`
    pub batch_add: Script,
    /// `batch_child.lua`
    pub batch_child: Script,
    /// `batch_then.lua`
    pub batch_then: Script,
    /// `report_many.lua`
    pub report_many: Script,
}

impl Scripts {
    /// Builds every script (no I/O).
    pub fn new() -> Scripts {
        Scripts {
            submit: script(include_str!("../../lua/submit.lua")),
            promote: script(include_str!("../../lua/promote.lua")),
            dispatch: script(include_str!("../../lua/dispatch.lua")),
            lease: script(include_str!("../../lua/lease.lua")),
            extend: script(include_str!("../../lua/extend.lua")),
            complete: script(include_str!("../../lua/complete.lua")),
            fail: script(include_str!("../../lua/fail.lua")),
            expire: script(include_str!("../../lua/expire.lua")),
            cancel: script(include_str!("../../lua/cancel.lua")),
            retry: script(include_str!("../../lua/retry.lua")),
            delete: script(include_str!("../../lua/delete.lua")),
            requeue_inbox: script(include_str!("../../lua/requeue_inbox.lua")),
            heartbeat: script(include_str!("../../lua/heartbeat.lua")),
            dep_register: script(include_str!("../../lua/dep_register.lua")),
            dep_resolved: script(include_str!("../../lua/dep_resolved.lua")),
            batch_create: script(include_str!("../../lua/batch_create.lua")),
            batch_begin: script(include_str!("../../lua/batch_begin.lua")),
            batch_add: script(include_str!("../../lua/batch_add.lua")),
            batch_child: script(include_str!("../../lua/batch_child.lua")),
            batch_then: script(include_str!("../../lua/batch_then.lua")),
            report_many: script(include_str!("../../lua/report_many.lua")),
        }
    }

    /// All scripts, for SCRIPT LOAD at start-up.
    pub fn all(&self) -> Vec<&Script> {
        vec![
            &self.submit,
            &self.promote,
            &self.dispatch,
            &self.lease,
            &self.extend,
            &self.complete,
            &self.fail,
            &self.expire,
            &self.cancel,
            &self.retry,
            &self.delete,
            &self.requeue_inbox,
            &self.heartbeat,
            &self.dep_register,
            &self.dep_resolved,
            &self.batch_create,
            &self.batch_begin,
            &self.batch_add,
            &self.batch_child,
            &self.batch_then,
            &self.report_many,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

/// The scripts of cron schedules and handler locks (`sched_*.lua`, `lock_*.lua`), kept
/// apart from the task transitions; loaded on first use (EVALSHA, then SCRIPT LOAD on
/// NOSCRIPT).
pub struct CoordScripts {
    /// `lock_acquire.lua`
    pub lock_acquire: Script,
    /// `lock_extend.lua`
    pub lock_extend: Script,
    /// `lock_release.lua`
    pub lock_release: Script,
    /// `sched_create.lua`
    pub sched_create: Script,
    /// `sched_delete.lua`
    pub sched_delete: Script,
    /// `sched_pause.lua`
    pub sched_pause: Script,
    /// `sched_leader.lua`
    pub sched_leader: Script,
    /// `sched_fire.lua`
    pub sched_fire: Script,
    /// `sched_done.lua`
    pub sched_done: Script,
}

/// The coordination scripts, built once per process.
pub static COORD: std::sync::LazyLock<CoordScripts> = std::sync::LazyLock::new(|| CoordScripts {
    lock_acquire: script(include_str!("../../lua/lock_acquire.lua")),
    lock_extend: script(include_str!("../../lua/lock_extend.lua")),
    lock_release: script(include_str!("../../lua/lock_release.lua")),
    sched_create: script(include_str!("../../lua/sched_create.lua")),
    sched_delete: script(include_str!("../../lua/sched_delete.lua")),
    sched_pause: script(include_str!("../../lua/sched_pause.lua")),
    sched_leader: script(include_str!("../../lua/sched_leader.lua")),
    sched_fire: script(include_str!("../../lua/sched_fire.lua")),
    sched_done: script(include_str!("../../lua/sched_done.lua")),
});
