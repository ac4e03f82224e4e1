//! In-process wake-ups: who waits for what. Waiters for a task (`/wait`), for a node's
//! inbox (lease long-polls) and the dispatcher's set of queues with work. Fed by local
//! handlers directly and by the reconciler from pub/sub; everything here is a hint,
//! waiters always re-read Redis (a lost wake-up costs at most one sweep interval, or
//! one [`recheck`] interval for a lease long-poll). Also a short-lived cache of queue
//! configurations for the dispatcher.

use crate::store::Leased;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Shortest safety re-check of a waiting lease long-poll (without a wake-up).
pub const RECHECK_MIN: Duration = Duration::from_secs(5);
/// Longest safety re-check of a waiting lease long-poll.
pub const RECHECK_MAX: Duration = Duration::from_secs(10);
/// How long a cached queue configuration is used (other replicas' changes show after
/// at most this; this replica's at once through [`Hub::forget_conf`]).
pub const CONF_TTL: Duration = Duration::from_secs(1);

/// How long a waiting lease long-poll sleeps before it re-reads its inbox unwoken:
/// uniformly in [`RECHECK_MIN`, `RECHECK_MAX`), so 100 idle agents do not re-check
/// together. Wake-ups come from the dispatcher (this process) or the `assigned`
/// pub/sub hint (other replicas); this only bounds what a lost hint costs.
pub fn recheck() -> Duration {
    let span = (RECHECK_MAX - RECHECK_MIN).as_millis() as u64;
    RECHECK_MIN + Duration::from_millis(rand::random::<u64>() % span.max(1))
}

/// This machine's clock, ms since the epoch (lease deadlines are Redis `TIME`; the two
/// agree to well under a lease's TTL).
fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the dispatcher needs of a queue's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueConf {
    /// Dispatch weight (1..=1000).
    pub weight: i64,
    /// Paused: nothing is dispatched.
    pub paused: bool,
    /// Only human nodes take its tasks.
    pub human_only: bool,
}

/// Node statistics waiting to be written to the node hashes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NodeStats {
    /// Accepted completions.
    pub succeeded: i64,
    /// Failed attempts.
    pub failed: i64,
    /// Run time of the accepted completions, ms.
    pub run_ms: i64,
    /// Completions counted in `run_ms`.
    pub runs: i64,
}

/// Waiters by key (a task id, a node id).
type Waiters = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

/// A registered waiter: the notifier of its key, dropped from the hub's map when the
/// last waiter of that key goes, whether it finished or was cancelled (a `/wait` or
/// lease long-poll whose client went away drops its future, and with it this guard).
#[derive(Debug)]
pub struct Waiter {
    map: Waiters,
    key: String,
    notify: Option<Arc<Notify>>,
}

impl std::ops::Deref for Waiter {
    type Target = Notify;
    fn deref(&self) -> &Notify {
        // Some until drop.
        self.notify.as_deref().unwrap_or(&NEVER)
    }
}

/// What a [`Waiter`] derefs to once released (never: only `drop` takes its notifier).
static NEVER: Notify = Notify::const_new();

impl Drop for Waiter {
    fn drop(&mut self) {
        if let Some(n) = self.notify.take() {
            let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
            // Two references: the map's and this one. Then nobody else waits.
            if Arc::strong_count(&n) <= 2 {
                m.remove(&self.key);
            }
        }
    }
}

/// Lease long-polls waiting in this process, by node, in the order they came.
type Offers = Arc<Mutex<HashMap<String, VecDeque<Offer>>>>;

/// A lease long-poll waiting for work that the dispatcher may hand leases to directly
/// (the direct hand-off: `dispatch.lua` leases them at once instead of putting them in
/// the node's inbox for the long-poll to lease in a second script).
#[derive(Debug)]
pub struct Offer {
    /// How many leases the long-poll still takes.
    pub max: usize,
    tx: tokio::sync::oneshot::Sender<Vec<Leased>>,
    seq: u64,
}

impl Offer {
    /// Hands `leases` over (possibly none: the long-poll then looks again itself).
    /// Gives them back when the long-poll is gone meanwhile.
    ///
    /// # Errors
    /// The leases, when nobody receives them.
    pub fn hand(self, leases: Vec<Leased>) -> Result<(), Vec<Leased>> {
        self.tx.send(leases)
    }
}

/// A long-poll's [`Offer`], withdrawn from the hub when this is dropped (a long-poll
/// whose client went away drops it with its future).
#[derive(Debug)]
pub struct OfferGuard {
    offers: Offers,
    node: String,
    seq: u64,
}

impl OfferGuard {
    /// Withdraws the offer; false when the dispatcher took it already (its leases, or
    /// none, then come through the receiver).
    pub fn withdraw(&self) -> bool {
        let mut m = self.offers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = m.get_mut(&self.node) else {
            return false;
        };
        let before = q.len();
        q.retain(|o| o.seq != self.seq);
        let found = q.len() < before;
        if q.is_empty() {
            m.remove(&self.node);
        }
        found
    }
}

impl Drop for OfferGuard {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// Most leases kept for a node whose long-poll left before its direct hand-off came
/// (beyond that they are left to expire and be retried, as a lost reply would be).
const HANDED_MAX: usize = 10_000;

/// The wake-up registry shared by the API, the dispatcher and the reconciler.
#[derive(Debug, Default)]
pub struct Hub {
    tasks: Waiters,
    nodes: Waiters,
    offers: Offers,
    next_offer: std::sync::atomic::AtomicU64,
    /// Direct leases whose long-poll had left: the node's next lease call takes them.
    handed: Mutex<HashMap<String, Vec<Leased>>>,
    // Queues with possibly dispatchable work, in FIFO order without duplicates.
    dirty: Mutex<(VecDeque<String>, HashSet<String>)>,
    /// Woken when `dirty` gains a queue.
    pub dispatch: Notify,
    stats: Mutex<HashMap<String, NodeStats>>,
    confs: Mutex<HashMap<String, (Instant, QueueConf)>>,
    /// Wake-ups this process acted on itself as its script published them (message →
    /// when, oldest first): their echo from pub/sub is not acted on again.
    echoes: Mutex<HashMap<String, VecDeque<Instant>>>,
    /// Nodes whose report call is leasing their next tasks itself (`lease_max`), with
    /// how many such calls are out: the dispatcher leaves them alone meanwhile, as the
    /// slots their reports free are theirs to fill.
    pulling: Mutex<HashMap<String, usize>>,
}

/// While alive, the dispatcher of this process assigns nothing to the node
/// ([`Hub::pulling`]).
#[derive(Debug)]
pub struct Pulling<'a> {
    hub: &'a Hub,
    node: String,
}

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        let mut m = self.hub.pulling.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.node) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.node);
            }
        }
    }
}

/// How long an expected echo of this process's own wake-up is waited for (it comes back
/// within a millisecond or so; one lost with the subscription is forgotten after this).
pub const ECHO_WINDOW: Duration = Duration::from_millis(250);

fn notify_of(map: &Waiters, key: &str) -> Waiter {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    let notify = m.entry(key.to_string()).or_default().clone();
    Waiter {
        map: map.clone(),
        key: key.to_string(),
        notify: Some(notify),
    }
}

fn wake(map: &Waiters, key: &str) {
    let n = map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(key)
        .cloned();
    if let Some(n) = n {
        n.notify_waiters();
    }
}

impl Hub {
    /// A new hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// The notifier of a task, registered until the [`Waiter`] is dropped.
    pub fn task(&self, id: &str) -> Waiter {
        notify_of(&self.tasks, id)
    }
    /// Done waiting on a task (the same as dropping the waiter).
    pub fn release_task(&self, _id: &str, n: Waiter) {
        drop(n)
    }
    /// Wakes the waiters of a task.
    pub fn wake_task(&self, id: &str) {
        wake(&self.tasks, id)
    }

    /// The notifier of a node's inbox, registered until the [`Waiter`] is dropped.
    pub fn node(&self, id: &str) -> Waiter {
        notify_of(&self.nodes, id)
    }
    /// Done waiting on a node (the same as dropping the waiter).
    pub fn release_node(&self, _id: &str, n: Waiter) {
        drop(n)
    }

    /// Offers a lease long-poll of `node` that takes up to `max` more leases to the
    /// dispatcher; the leases it hands over come through the returned receiver.
    pub fn offer(
        &self,
        node: &str,
        max: usize,
    ) -> (OfferGuard, tokio::sync::oneshot::Receiver<Vec<Leased>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let seq = self
            .next_offer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default()
            .push_back(Offer { max, tx, seq });
        let guard = OfferGuard {
            offers: self.offers.clone(),
            node: node.to_string(),
            seq,
        };
        (guard, rx)
    }

    /// The oldest offer of a long-poll of `node` still waiting, taken out of the hub.
    pub fn take_offer(&self, node: &str) -> Option<Offer> {
        let mut m = self.offers.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.get_mut(node)?;
        let mut got = None;
        while let Some(o) = q.pop_front() {
            if !o.tx.is_closed() && o.max > 0 {
                got = Some(o);
                break;
            }
        }
        if q.is_empty() {
            m.remove(node);
        }
        got
    }

    /// Puts an offer the dispatcher took but had nothing for back, first in line.
    pub fn restore(&self, node: &str, offer: Offer) {
        if offer.tx.is_closed() {
            return;
        }
        self.offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default()
            .push_front(offer);
    }

    /// Leases of `node` that did not reach it (its long-poll left before they came, or
    /// Redis granted them after the call answered 503): kept for its next lease call (up
    /// to [`HANDED_MAX`], until their deadline), and a waiting long-poll of it is woken.
    pub fn hand_back(&self, node: &str, leases: Vec<Leased>) {
        if leases.is_empty() {
            return;
        }
        {
            let mut m = self.handed.lock().unwrap_or_else(|e| e.into_inner());
            // Leases past their deadline were reaped and retried meanwhile: a node that
            // never came back leaves nothing here for long.
            let now = wall_ms();
            m.retain(|_, kept| {
                kept.retain(|l| l.expires_ms > now);
                !kept.is_empty()
            });
            let kept = m.entry(node.to_string()).or_default();
            let room = HANDED_MAX.saturating_sub(kept.len());
            kept.extend(leases.into_iter().take(room));
        }
        self.wake_node_one(node);
    }

    /// Up to `max` of the leases [`Hub::hand_back`] kept for `node`.
    pub fn take_handed(&self, node: &str, max: usize) -> Vec<Leased> {
        let mut m = self.handed.lock().unwrap_or_else(|e| e.into_inner());
        let Some(kept) = m.get_mut(node) else {
            return Vec::new();
        };
        let now = wall_ms();
        kept.retain(|l| l.expires_ms > now);
        let n = max.min(kept.len());
        let out: Vec<Leased> = kept.drain(..n).collect();
        if kept.is_empty() {
            m.remove(node);
        }
        out
    }

    /// Keys with a registered waiter: (tasks, nodes).
    pub fn waiting(&self) -> (usize, usize) {
        let len = |m: &Waiters| m.lock().unwrap_or_else(|e| e.into_inner()).len();
        (len(&self.tasks), len(&self.nodes))
    }
    /// Wakes every lease long-poll of a node (it was drained or removed: each must
    /// look again).
    pub fn wake_node(&self, id: &str) {
        wake(&self.nodes, id)
    }

    /// Wakes one lease long-poll of a node: its inbox got tasks. One is enough, since
    /// a long-poll takes what it can at once; one that comes back full wakes the next
    /// ([`Hub::wake_node_one`] again). Waking them all would send every long-poll of
    /// the node to Redis for one task, all but one for nothing. When none waits, the
    /// wake-up is kept for the next (a long-poll between two waits misses nothing; a
    /// woken one that leaves without waiting passes it on: [`Notify::notify_one`]).
    pub fn wake_node_one(&self, id: &str) {
        let n = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        if let Some(n) = n {
            n.notify_one();
        }
    }

    /// Wakes every waiter (the periodic sweep).
    pub fn wake_all(&self) {
        for map in [&self.tasks, &self.nodes] {
            let all: Vec<Arc<Notify>> = map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            for n in all {
                n.notify_waiters();
            }
        }
    }

    /// Marks a queue as having work for the dispatcher.
    pub fn mark_dirty(&self, queue: &str) {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if d.1.insert(queue.to_string()) {
            d.0.push_back(queue.to_string());
            drop(d);
            self.dispatch.notify_one();
        }
    }

    /// Marks one shard dirty (`<queue>` is shard 0, `<queue>~<k>` shard k): the
    /// dispatcher then dispatches that shard alone, where [`Hub::mark_dirty`] of a
    /// sharded queue dispatches every shard. Shard 0 is entered as `<queue>~0`.
    pub fn mark_shard_dirty(&self, shard: &str) {
        if shard.contains('~') {
            self.mark_dirty(shard);
        } else {
            self.mark_dirty(&format!("{shard}~0"));
        }
    }

    /// Takes the next queue with work, if any.
    pub fn take_dirty(&self) -> Option<String> {
        let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        let q = d.0.pop_front()?;
        d.1.remove(&q);
        if !d.0.is_empty() {
            // Let another worker take the next one.
            self.dispatch.notify_one();
        }
        Some(q)
    }

    /// This process has acted on the wake-up `msg` (as published on the wake channel)
    /// itself: the dispatcher woke the node, the submit marked the queue. Its echo from
    /// pub/sub, when it comes within [`ECHO_WINDOW`], is then skipped
    /// ([`Hub::take_echo`]) instead of sending a second dispatch or long-poll to Redis
    /// for nothing. Skipping another replica's identical message in its place is as
    /// good: this process's own, later in the subscription, is then acted on.
    pub fn expect_echo(&self, msg: String) {
        let now = Instant::now();
        let mut m = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, q| {
                q.retain(|t| now.duration_since(*t) < ECHO_WINDOW);
                !q.is_empty()
            });
        }
        m.entry(msg).or_default().push_back(now);
    }

    /// Marks `node` as leasing for itself until the guard is dropped: a report call with
    /// `lease_max` holds it from before its reports free the slots until its leases are
    /// granted, so that the dispatcher does not push those slots' tasks to the node's
    /// inbox meanwhile (a second hop, and a second script, for each of them).
    pub fn pulling(&self, node: &str) -> Pulling<'_> {
        *self
            .pulling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_string())
            .or_default() += 1;
        Pulling {
            hub: self,
            node: node.to_string(),
        }
    }

    /// Whether a report call of `node` is leasing for it now ([`Hub::pulling`]).
    pub fn is_pulling(&self, node: &str) -> bool {
        self.pulling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(node)
    }

    /// Whether `msg`, just read from pub/sub, is the echo of a wake-up this process
    /// already acted on ([`Hub::expect_echo`]); it is then forgotten.
    pub fn take_echo(&self, msg: &str) -> bool {
        let now = Instant::now();
        let mut m = self.echoes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(q) = m.get_mut(msg) else {
            return false;
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= ECHO_WINDOW)
        {
            q.pop_front();
        }
        let hit = q.pop_front().is_some();
        if q.is_empty() {
            m.remove(msg);
        }
        hit
    }

    /// Adds to a node's pending statistics.
    pub fn add_stats(&self, node: &str, delta: NodeStats) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let e = s.entry(node.to_string()).or_default();
        e.succeeded += delta.succeeded;
        e.failed += delta.failed;
        e.run_ms += delta.run_ms;
        e.runs += delta.runs;
    }

    /// The cached configuration of a queue, when younger than [`CONF_TTL`].
    pub fn conf(&self, queue: &str) -> Option<QueueConf> {
        let m = self.confs.lock().unwrap_or_else(|e| e.into_inner());
        m.get(queue)
            .filter(|(at, _)| at.elapsed() < CONF_TTL)
            .map(|(_, c)| *c)
    }

    /// Caches a queue's configuration as just read from Redis.
    pub fn set_conf(&self, queue: &str, conf: QueueConf) {
        let mut m = self.confs.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(queue.to_string(), (Instant::now(), conf));
    }

    /// Forgets a queue's cached configuration (it changed: `PUT /v1/queues/...`).
    pub fn forget_conf(&self, queue: &str) {
        self.confs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(queue);
    }

    /// Takes every node's pending statistics.
    pub fn take_stats(&self) -> HashMap<String, NodeStats> {
        std::mem::take(&mut *self.stats.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_queues_come_out_once_in_order() {
        let h = Hub::new();
        h.mark_dirty("a");
        h.mark_dirty("b");
        h.mark_dirty("a");
        assert_eq!(h.take_dirty().as_deref(), Some("a"));
        assert_eq!(h.take_dirty().as_deref(), Some("b"));
        assert_eq!(h.take_dirty(), None);
    }

    #[tokio::test]
    async fn an_offer_is_taken_once_withdrawn_by_its_long_poll_and_skipped_once_it_left() {
        let h = Hub::new();
        let (first, _rx1) = h.offer("n", 5);
        let (second, rx2) = h.offer("n", 7);
        let o = h.take_offer("n").expect("an offer");
        assert_eq!(o.max, 5, "the oldest long-poll first");
        assert!(!first.withdraw(), "the dispatcher holds it");
        h.restore("n", o);
        assert!(
            first.withdraw(),
            "put back, then withdrawn by its long-poll"
        );
        drop(rx2);
        assert!(
            h.take_offer("n").is_none(),
            "a long-poll that left is skipped"
        );
        drop(second);
        let (_third, rx3) = h.offer("n", 1);
        let o = h.take_offer("n").expect("the third");
        assert!(o.hand(Vec::new()).is_ok());
        assert!(rx3.await.expect("handed").is_empty());
        let (gone, rx4) = h.offer("m", 1);
        let o = h.take_offer("m").expect("taken before its long-poll left");
        drop(rx4);
        drop(gone);
        assert!(o.hand(Vec::new()).is_err(), "nobody receives: given back");
        assert!(h.take_handed("m", 10).is_empty());
    }

    fn leased(id: &str, expires_ms: i64) -> Leased {
        let task = serde_json::from_value(serde_json::json!({"id": id, "queue": "q", "kind": "k",
            "payload": null, "priority": 0, "state": "running", "attempts": 1, "max_attempts": 3,
            "timeout_ms": 30000, "max_run_ms": null, "requires": [], "node": "n", "result": null,
            "error": null, "progress": null, "fence": 1, "created_at": "2026-11-27T06:24:36.546Z",
            "run_at": null, "started_at": null, "finished_at": null, "lease_expires_at": null,
            "cancel_requested": false}))
        .expect("a task");
        Leased {
            task,
            token: "1.ab".into(),
            expires_ms,
        }
    }

    #[test]
    fn handed_back_leases_are_taken_until_their_deadline_only() {
        let h = Hub::new();
        let now = wall_ms();
        h.hand_back(
            "n",
            vec![leased("live", now + 60_000), leased("old", now - 1)],
        );
        h.hand_back("gone", vec![leased("gone-live", now + 60_000)]);
        let got: Vec<String> = h
            .take_handed("n", 10)
            .into_iter()
            .map(|l| l.task.id)
            .collect();
        assert_eq!(
            got,
            ["live"],
            "a lease past its deadline was reaped meanwhile"
        );
        assert!(h.take_handed("n", 10).is_empty(), "taken once");
        assert_eq!(h.take_handed("gone", 1).len(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_in_the_hub() {
        let h = Hub::new();
        let hub = h.clone();
        let (registered, is_registered) = tokio::sync::oneshot::channel();
        let wait = tokio::spawn(async move {
            let n = hub.task("t");
            let _ = registered.send(());
            n.notified().await;
            hub.release_task("t", n);
        });
        is_registered.await.expect("the wait registered");
        let other = h.task("t");
        // The client went away: the long-poll's future is dropped mid-wait.
        wait.abort();
        let _ = wait.await;
        assert_eq!(h.waiting(), (1, 0), "another waiter still waits");
        drop(other);
        assert_eq!(h.waiting(), (0, 0));
        let n = h.node("n");
        let m = h.node("n");
        h.wake_node("n");
        h.release_node("n", n);
        assert_eq!(h.waiting(), (0, 1));
        drop(m);
        assert_eq!(h.waiting(), (0, 0));
    }

    #[tokio::test]
    async fn wake_node_one_wakes_one_long_poll_and_a_leaver_passes_it_on() {
        use std::future::Future;
        use std::task::Context;
        let h = Hub::new();
        let (a, b) = (h.node("n"), h.node("n"));
        let mut fa = Box::pin(a.notified());
        let mut fb = Box::pin(b.notified());
        fa.as_mut().enable();
        fb.as_mut().enable();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        h.wake_node_one("n");
        assert!(
            fa.as_mut().poll(&mut cx).is_ready(),
            "the longest waiting is woken"
        );
        assert!(fb.as_mut().poll(&mut cx).is_pending(), "and only it");
        // A woken long-poll that leaves before taking its wake-up hands it on.
        let mut fc = Box::pin(a.notified());
        fc.as_mut().enable();
        h.wake_node_one("n");
        drop(fb);
        assert!(fc.as_mut().poll(&mut cx).is_ready());
        drop((fa, fc));
        drop((a, b));
        // Nobody waits: nothing to wake, nothing kept in the hub.
        h.wake_node_one("n");
        assert_eq!(h.waiting(), (0, 0));
    }

    #[test]
    fn an_expected_echo_is_skipped_once_and_only_within_its_window() {
        let h = Hub::new();
        assert!(!h.take_echo("new q"), "nothing expected");
        h.expect_echo("new q".into());
        h.expect_echo("new q".into());
        assert!(!h.take_echo("assigned q n"), "another message");
        assert!(h.take_echo("new q"));
        assert!(h.take_echo("new q"));
        assert!(!h.take_echo("new q"), "each expected once");
        h.echoes
            .lock()
            .unwrap()
            .entry("new q".into())
            .or_default()
            .push_back(Instant::now() - ECHO_WINDOW);
        assert!(!h.take_echo("new q"), "too late: acted on");
        assert!(h.echoes.lock().unwrap().is_empty());
    }

    #[test]
    fn recheck_stays_in_its_window() {
        for _ in 0..1000 {
            let d = recheck();
            assert!((RECHECK_MIN..RECHECK_MAX).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn conf_is_cached_until_forgotten() {
        let h = Hub::new();
        assert_eq!(h.conf("q"), None);
        let c = QueueConf {
            weight: 3,
            paused: false,
            human_only: true,
        };
        h.set_conf("q", c);
        assert_eq!(h.conf("q"), Some(c));
        h.forget_conf("q");
        assert_eq!(h.conf("q"), None);
    }

    #[test]
    fn stats_accumulate_until_taken() {
        let h = Hub::new();
        h.add_stats(
            "n",
            NodeStats {
                succeeded: 1,
                run_ms: 5,
                runs: 1,
                ..Default::default()
            },
        );
        h.add_stats(
            "n",
            NodeStats {
                failed: 1,
                ..Default::default()
            },
        );
        let s = h.take_stats();
        assert_eq!(
            s["n"],
            NodeStats {
                succeeded: 1,
                failed: 1,
                run_ms: 5,
                runs: 1
            }
        );
        assert!(h.take_stats().is_empty());
    }
}
