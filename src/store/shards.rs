//! Sharded queues: one queue spread over several hash tags (`PUT /v1/queues/{name}`
//! `{"shards": N}`), so over several Cluster slots and primaries.
//!
//! Shard 0 of queue `q` is `{q}` itself (an unsharded queue is its own shard 0, so
//! nothing moves when a queue is sharded); shard `k` ≥ 1 is `{q~k}` (`~` cannot occur
//! in a queue name). Every shard has the keys of a whole queue, and the scripts run on
//! one shard as they do on one queue; a task id names its shard (`<ULID>.<q>~<k>`,
//! [`validate::task_shard`]), so a task is still found in O(1). The shard count is the
//! `shards` field of every shard's `conf` (read here from shard 0's); it only grows.
//!
//! The count is cached per process for [`SHARDS_TTL`]: because it never shrinks, a
//! stale count only means a submission spreads over fewer shards for that long, never
//! that a task lands where nobody looks (the dispatcher and the timers find every shard
//! through the `queues` set, which holds shard names).

use super::{Result, Store, StoreError};
use crate::domain::{TaskSpec, validate};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long this process trusts a queue's shard count before reading it again.
pub const SHARDS_TTL: Duration = Duration::from_secs(1);

/// The shard counts this process has read, and the rotation counter.
#[derive(Debug, Default)]
pub(crate) struct ShardTable {
    counts: Mutex<HashMap<String, (Instant, u32)>>,
    /// Round-robin position of placement: where the next submission starts.
    turn: AtomicU64,
    /// Per queue and purpose (dispatch, lease), the shard a visit of every shard starts
    /// at: the one after the shard that last gave work, so that shards take turns even
    /// when a node has room for one task at a time (a shared counter could advance by a
    /// multiple of N per round and always start at the same shard).
    starts: Mutex<HashMap<(String, Visit), u32>>,
}

/// What visits every shard of a queue in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Visit {
    /// The dispatcher.
    Dispatch,
    /// A node's lease.
    Lease,
}

/// A stable 64-bit hash (FNV-1a) of a key, so every replica puts a key on one shard.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shard (0..`n`) of a task with `key` (its concurrency key, else its unique key):
/// fixed for a given `n`, so every task of one key meets the same semaphore and the
/// same unique record.
pub fn key_shard(key: &str, n: u32) -> u32 {
    (stable_hash(key) % u64::from(n.max(1))) as u32
}

impl Store {
    /// The next value of the rotation counter (advanced by `by`).
    pub(crate) fn turn(&self, by: u64) -> u64 {
        self.shards.turn.fetch_add(by, Ordering::Relaxed)
    }

    /// Shards of `queue` (1: not sharded), cached for [`SHARDS_TTL`].
    ///
    /// # Errors
    /// Redis errors.
    pub async fn shard_count(&self, queue: &str) -> Result<u32> {
        Ok(self.shard_counts(&[queue]).await?[0])
    }

    /// Shards of each queue given, in order: cached ones from the cache, the others in
    /// one pipeline.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn shard_counts(&self, queues: &[&str]) -> Result<Vec<u32>> {
        let mut out = vec![0u32; queues.len()];
        let mut misses: Vec<usize> = Vec::new();
        {
            let m = self.shards.counts.lock().unwrap_or_else(|e| e.into_inner());
            for (i, q) in queues.iter().enumerate() {
                match m.get(*q).filter(|(at, _)| at.elapsed() < SHARDS_TTL) {
                    Some((_, n)) => out[i] = *n,
                    None => misses.push(i),
                }
            }
        }
        if !misses.is_empty() {
            let names: Vec<String> = misses.iter().map(|&i| queues[i].to_string()).collect();
            let read: Vec<Option<String>> = self
                .per_queue(&names, |pipe, q| {
                    pipe.hget(self.keys.conf(q), "shards");
                })
                .await?;
            let mut m = self.shards.counts.lock().unwrap_or_else(|e| e.into_inner());
            if m.len() > 10_000 {
                // Junk queue names must not grow the cache for ever: keep the fresh ones.
                m.retain(|_, (at, _)| at.elapsed() < SHARDS_TTL);
            }
            for (&i, v) in misses.iter().zip(read) {
                let n = parse_count(v.as_deref());
                m.insert(queues[i].to_string(), (Instant::now(), n));
                out[i] = n;
            }
        }
        Ok(out)
    }

    /// Shards of `queue` as stored now (and cached afresh).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn shard_count_fresh(&self, queue: &str) -> Result<u32> {
        self.forget_shards(queue);
        self.shard_count(queue).await
    }

    /// Drops the cached shard count of `queue` (it changed here).
    pub fn forget_shards(&self, queue: &str) {
        self.shards
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }

    /// The shard names of `queue`: `[q]`, or `[q, q~1, …]`.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn shards_of(&self, queue: &str) -> Result<Vec<String>> {
        let n = self.shard_count(queue).await?;
        Ok((0..n.max(1))
            .map(|k| validate::shard_name(queue, k))
            .collect())
    }

    /// The shards of `queue` in the order a visit of every shard (`what`) goes: from
    /// the one after the shard that last gave work ([`Store::shard_gave`]), so no shard
    /// always comes last.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn shards_rotated(&self, queue: &str, what: Visit) -> Result<Vec<String>> {
        let mut v = self.shards_of(queue).await?;
        if v.len() > 1 {
            let start = self
                .shards
                .starts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(queue.to_string(), what))
                .copied()
                .unwrap_or(0);
            let len = v.len();
            v.rotate_left(start as usize % len);
        }
        Ok(v)
    }

    /// Shard `shard` (a name from [`Store::shards_rotated`]) gave work to a visit
    /// `what`: the next visit of its queue starts at the shard after it.
    pub fn shard_gave(&self, shard: &str, what: Visit) {
        let (queue, k) = validate::split_shard(shard);
        self.shards
            .starts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((queue.to_string(), what), k + 1);
    }

    /// Every shard of every queue given (a node's queues), in order.
    ///
    /// # Errors
    /// Redis errors.
    pub async fn expand_shards(&self, queues: &[String]) -> Result<Vec<String>> {
        let names: Vec<&str> = queues.iter().map(String::as_str).collect();
        let counts = self.shard_counts(&names).await?;
        Ok(queues
            .iter()
            .zip(counts)
            .flat_map(|(q, n)| (0..n.max(1)).map(move |k| validate::shard_name(q, k)))
            .collect())
    }

    /// Chooses the shard of each task not yet placed and writes it into its id. A task
    /// with a concurrency key (else a unique key) goes to that key's shard
    /// ([`key_shard`]), so its limit and its uniqueness hold; the others go round-robin
    /// from a rotating start, or, with an idempotency key, from a start derived from it
    /// (a repeat places its tasks as the first time, so it finds its record).
    ///
    /// # Errors
    /// Redis errors.
    pub async fn place(&self, tasks: &mut [TaskSpec], idem: Option<&str>) -> Result<()> {
        let mut queues: Vec<&str> = tasks
            .iter()
            .filter(|t| !t.placed)
            .map(|t| t.queue.as_str())
            .collect();
        queues.sort_unstable();
        queues.dedup();
        if queues.is_empty() {
            return Ok(());
        }
        let counts: HashMap<String, u32> = queues
            .iter()
            .map(|q| q.to_string())
            .zip(self.shard_counts(&queues).await?)
            .collect();
        if counts.values().all(|n| *n <= 1) {
            for t in tasks.iter_mut() {
                t.placed = true;
            }
            return Ok(());
        }
        let base = match idem {
            Some(k) => stable_hash(k),
            None => self.turn(tasks.len() as u64),
        };
        for (i, t) in tasks.iter_mut().enumerate() {
            if t.placed {
                continue;
            }
            let n = counts.get(&t.queue).copied().unwrap_or(1).max(1);
            let key = t
                .concurrency
                .as_ref()
                .map(|c| c.0.as_str())
                .or(t.unique_key.as_deref());
            let k = match key {
                Some(key) => key_shard(key, n),
                None => (base.wrapping_add(i as u64) % u64::from(n)) as u32,
            };
            t.id = validate::with_shard(&t.id, k);
            t.placed = true;
        }
        Ok(())
    }
}

/// A stored shard count: absent or malformed is 1.
fn parse_count(v: Option<&str>) -> u32 {
    v.and_then(|v| v.parse::<u32>().ok())
        .filter(|n| (1..=validate::MAX_SHARDS).contains(n))
        .unwrap_or(1)
}

/// A queue's shard count can only grow: `PUT` with fewer is refused.
pub fn check_growth(queue: &str, now: u32, wanted: u32) -> Result<()> {
    if wanted < now {
        return Err(StoreError::ShardsShrink {
            queue: queue.to_string(),
            now,
            wanted,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_on_the_same_shard_and_keys_spread() {
        assert_eq!(key_shard("customer-7", 3), key_shard("customer-7", 3));
        let mut seen = [0; 3];
        for i in 0..300 {
            seen[key_shard(&format!("k{i}"), 3) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
        assert_eq!(key_shard("x", 1), 0);
    }

    #[test]
    fn stored_counts_parse_within_bounds() {
        assert_eq!(parse_count(None), 1);
        assert_eq!(parse_count(Some("3")), 3);
        assert_eq!(parse_count(Some("0")), 1);
        assert_eq!(parse_count(Some("99")), 1);
        assert!(check_growth("q", 3, 2).is_err());
        assert!(check_growth("q", 3, 3).is_ok());
    }
}
