//! The Lua scripts of `lua/`, compiled in: one table, loaded once per process. Each
//! script is `lua/lib.lua` (shared helpers, key functions, return codes, wake-up
//! messages) followed by its own file; redis-rs runs it with EVALSHA of the SHA1 it
//! computed and loads it again on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).
//! [`Scripts::load`] checks at start-up that Redis hashes each one to that same SHA1.

use super::{Result, StoreError};
use redis::Script;

/// `lua/lib.lua`, prepended to every script.
pub const LIB: &str = include_str!("../../lua/lib.lua");

/// lib.lua, then the script's body as a function, then `flush_all()`: the counters and
/// index writes that lib.lua defers during a call are written once, at its end, whatever
/// `return` the body took.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "{LIB}\nlocal function main()\n{body}\nend\nlocal reply = main()\nflush_all()\nreturn reply\n"
    ))
}

/// Declares the one script table: a field per `lua/<name>.lua`, built from that file.
macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        /// Every script, built once per process (no I/O).
        pub struct Scripts {
            $(
                #[doc = concat!("`lua/", stringify!($name), ".lua`")]
                pub $name: Script,
            )*
        }

        impl Scripts {
            /// Builds every script (no I/O).
            pub fn new() -> Scripts {
                Scripts {
                    $($name: script(include_str!(concat!("../../lua/", stringify!($name), ".lua"))),)*
                }
            }

            /// Every script with its name, for SCRIPT LOAD at start-up.
            pub fn all(&self) -> Vec<(&'static str, &Script)> {
                vec![$((stringify!($name), &self.$name)),*]
            }
        }
    };
}

scripts! {
    // Task transitions.
    submit, promote, dispatch, lease, extend, complete, fail, report_many, expire, cancel,
    retry, delete, requeue_inbox,
    // Nodes.
    heartbeat, node_forget,
    // Queues.
    queue_prune,
    // Token quotas.
    quota_claim,
    // Dependencies and batches.
    dep_register, dep_resolved, batch_create, batch_begin, batch_add, batch_child, batch_then,
    // Cron schedules and handler locks.
    sched_create, sched_delete, sched_pause, sched_leader, sched_fire, sched_done,
    lock_acquire, lock_extend, lock_release,
    // Schema migrations (`muster migrate`).
    migrate_task,
}

impl Scripts {
    /// SCRIPT LOADs every script and checks that Redis answers the SHA1 EVALSHA will
    /// use (a mismatch would make every call fall back to loading again).
    ///
    /// # Errors
    /// Redis errors; [`StoreError::Unfit`] when a SHA1 differs.
    pub async fn load(&self, c: &mut impl redis::aio::ConnectionLike) -> Result<()> {
        for (name, s) in self.all() {
            let sha = s.prepare_invoke().load_async(c).await?;
            if sha != s.get_hash() {
                return Err(StoreError::Unfit(format!(
                    "redis hashed {name}.lua to {sha}, muster to {}: scripts would not run \
                     by EVALSHA",
                    s.get_hash()
                )));
            }
        }
        Ok(())
    }
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::Keys;
    use crate::store::reply::Code;
    use crate::store::wakeups::Wakeup;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A private redis-server on a unix socket, stopped on drop.
    struct Redis {
        child: Child,
        client: redis::Client,
        _dir: tempfile::TempDir,
    }

    impl Redis {
        async fn start() -> (Redis, redis::aio::MultiplexedConnection) {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let sock = dir.path().join("redis.sock");
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--unixsocket",
                ])
                .arg(&sock)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is on PATH (scripts/ensure-redis.sh installs it)");
            let client = redis::Client::open(format!("unix://{}", sock.display())).unwrap();
            let redis = Redis {
                child,
                client,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(c) = redis.client.get_multiplexed_async_connection().await {
                    return (redis, c);
                }
                assert!(Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Evaluates `exprs` after lib.lua with `p` the prefix of queue `q.1` and `b` that of
    /// batch `b1`, as one table.
    async fn eval<T: redis::FromRedisValue>(
        c: &mut redis::aio::MultiplexedConnection,
        k: &Keys,
        exprs: &[&str],
    ) -> T {
        let body = format!(
            "{LIB}\nlocal p, b = ARGV[1], ARGV[2]\nreturn {{{}}}",
            exprs.join(", ")
        );
        redis::cmd("EVAL")
            .arg(body)
            .arg(0)
            .arg(k.queue_prefix("q.1"))
            .arg(k.batch_prefix("b1"))
            .query_async(c)
            .await
            .expect("lib.lua evaluates")
    }

    #[tokio::test]
    async fn every_script_loads_under_the_sha1_muster_computed() {
        let (_redis, mut c) = Redis::start().await;
        Scripts::new()
            .load(&mut c)
            .await
            .expect("every script loads");
    }

    #[tokio::test]
    async fn lib_lua_builds_every_key_as_keys_rs_does() {
        let (_redis, mut c) = Redis::start().await;
        let k = Keys::new("muster");
        let q = "q.1";
        let pairs = [
            ("k_task(p, 'i.q.1')", k.task(q, "i.q.1")),
            ("k_state_index(p, 'pending')", k.state_index(q, "pending")),
            ("k_inbox(p, 'n1')", k.inbox(q, "n1")),
            ("k_load(p)", k.load(q)),
            ("k_cancels(p, 'n1')", k.cancels(q, "n1")),
            ("k_conf(p)", k.conf(q)),
            ("k_stats(p)", k.stats(q)),
            ("k_events(p)", k.events(q)),
            ("k_followups(p)", k.followups(q)),
            ("k_dependents(p, 'i.q.1')", k.dependents(q, "i.q.1")),
            ("k_dep_done(p, 'i.q.1')", k.dep_done(q, "i.q.1")),
            ("k_semaphore(p, 'ck')", k.semaphore(q, "ck")),
            ("k_unique(p, 'u')", k.unique(q, "u")),
            ("k_idempotency(p, 'ab12')", k.idempotency(q, "ab12")),
            ("k_seq(p)", k.seq(q)),
            ("k_bucket(p)", k.bucket(q)),
            ("k_batch_meta(b)", k.batch_meta("b1")),
            ("k_batch_children(b)", k.batch_children("b1")),
            ("k_batch_done(b)", k.batch_done("b1")),
        ];
        let exprs: Vec<&str> = pairs.iter().map(|(lua, _)| *lua).collect();
        let lua: Vec<String> = eval(&mut c, &k, &exprs).await;
        for ((expr, rust), lua) in pairs.iter().zip(&lua) {
            assert_eq!(lua, rust, "{expr}");
        }
        assert_eq!(lua.len(), pairs.len());
    }

    #[tokio::test]
    async fn lib_lua_return_codes_and_wakeups_are_those_rust_reads() {
        let (_redis, mut c) = Redis::start().await;
        let k = Keys::new("muster");
        let codes: Vec<i64> = eval(
            &mut c,
            &k,
            &["OK", "NOT_FOUND", "CONFLICT", "REPEAT", "NOT_LEADER"],
        )
        .await;
        assert_eq!(codes, Code::ALL.map(|code| code as i64));
        let wakeups: Vec<String> = eval(
            &mut c,
            &k,
            &[
                "wake_new(p)",
                "wake_assigned(p, 'n1')",
                "wake_done(p, 'n1', 'a.q.1 b.q.1')",
                "wake_done(p, '', 'a.q.1')",
            ],
        )
        .await;
        let want = crate::store::wakeups::examples();
        for (msg, want) in wakeups.iter().zip(&want) {
            assert_eq!(Wakeup::parse(&k, msg).as_ref(), Some(want), "{msg}");
            assert_eq!(&want.message(&k), msg);
        }
        assert_eq!(wakeups.len(), want.len());
    }

    #[tokio::test]
    async fn lib_lua_task_defaults_are_the_domain_defaults() {
        use crate::domain::Backoff;
        use crate::domain::spec::{DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION_MS, DEFAULT_TIMEOUT_MS};
        let (_redis, mut c) = Redis::start().await;
        let k = Keys::new("muster");
        let lua: Vec<i64> = eval(
            &mut c,
            &k,
            &[
                "DEFAULT_MAX_ATTEMPTS",
                "DEFAULT_TIMEOUT_MS",
                "DEFAULT_BACKOFF_INITIAL_MS",
                "DEFAULT_BACKOFF_MAX_MS",
                "DEFAULT_RETENTION_MS",
            ],
        )
        .await;
        let b = Backoff::default();
        let rust = vec![
            DEFAULT_MAX_ATTEMPTS,
            DEFAULT_TIMEOUT_MS,
            b.initial_ms as i64,
            b.max_ms as i64,
            DEFAULT_RETENTION_MS,
        ];
        assert_eq!(lua, rust);
    }
}
