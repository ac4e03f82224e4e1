//! What muster would change in a Redis it does not own, said, never done: a shared
//! Redis is never reconfigured. `muster dev`, `demo` and `bench` start their private
//! redis-server with these settings ([`PRIVATE_REDIS_ARGS`]).

use super::{Result, Store};

/// `hash-max-listpack-value` muster's private Redis runs with. A task hash is a
/// listpack (about 100 B plus its fields) only while every value is at most this long;
/// Redis's default, 64, turns the hash of any task whose payload is longer into a hash
/// table of about 1.5 KB. Editing a listpack moves it whole, so this stays small.
pub const HASH_MAX_LISTPACK_VALUE: u64 = 1024;

/// The redis-server arguments of a private Redis (`hash-max-ziplist-value` is the name
/// Redis 6 knows and 7 still accepts).
pub const PRIVATE_REDIS_ARGS: [&str; 2] = ["--hash-max-ziplist-value", "1024"];

impl Store {
    /// Advice about this Redis's settings for muster's keys, one line each (empty: none).
    ///
    /// # Errors
    /// Redis unreachable.
    pub async fn tuning_advice(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let v = self.config_get("hash-max-listpack-value").await?;
        let v = if v.is_empty() {
            self.config_get("hash-max-ziplist-value").await?
        } else {
            v
        };
        if let Ok(n) = v.parse::<u64>()
            && n < HASH_MAX_LISTPACK_VALUE
        {
            out.push(format!(
                "hash-max-listpack-value is {n}: a task whose payload is longer takes about \
                 1.5 KB of Redis memory instead of ~300 B; consider \
                 `CONFIG SET hash-max-listpack-value {HASH_MAX_LISTPACK_VALUE}` (and in redis.conf)"
            ));
        }
        Ok(out)
    }
}
