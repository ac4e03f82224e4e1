//! The Lua scripts of `scripts/`, compiled in. Each transition script is prefixed with
//! `scripts/lib.lua` (shared helpers); redis-rs runs them with EVALSHA and loads them
//! again on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).

use redis::Script;

const LIB: &str = include_str!("../../scripts/lib.lua");

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
    /// `report_many.lua`
    pub report_many: Script,
}

impl Scripts {
    /// Builds every script (no I/O).
    pub fn new() -> Scripts {
        Scripts {
            submit: script(include_str!("../../scripts/submit.lua")),
            promote: script(include_str!("../../scripts/promote.lua")),
            dispatch: script(include_str!("../../scripts/dispatch.lua")),
            lease: script(include_str!("../../scripts/lease.lua")),
            extend: script(include_str!("../../scripts/extend.lua")),
            complete: script(include_str!("../../scripts/complete.lua")),
            fail: script(include_str!("../../scripts/fail.lua")),
            expire: script(include_str!("../../scripts/expire.lua")),
            cancel: script(include_str!("../../scripts/cancel.lua")),
            retry: script(include_str!("../../scripts/retry.lua")),
            delete: script(include_str!("../../scripts/delete.lua")),
            requeue_inbox: script(include_str!("../../scripts/requeue_inbox.lua")),
            heartbeat: script(include_str!("../../scripts/heartbeat.lua")),
            report_many: script(include_str!("../../scripts/report_many.lua")),
        }
    }

    /// All scripts, for SCRIPT LOAD at start-up.
    pub fn all(&self) -> [&Script; 14] {
        [
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
            &self.report_many,
        ]
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}
