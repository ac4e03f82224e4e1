//! R4 (redis-server `kill -9` and restart under load, AOF `always` and `everysec`) and
//! R6 (redis-server paused shorter and longer than the lease TTL).

use super::harness::*;
use crate::support::*;
use muster::domain::TaskState;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Clients submitting continuously (each logical submission retried with its key until
/// answered) until `stop`.
fn start_load(
    rec: &Recorder,
    servers: Vec<crate::support::Http>,
    queue: &'static str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (rec, servers, stop) = (rec.clone(), servers.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{queue}-{c}-{i}");
                    i += 1;
                    rec.submit_until_answered(
                        &servers,
                        &key,
                        &echo_task(queue, &key),
                        Duration::from_secs(60),
                    )
                    .await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect()
}

async fn r4(fsync: &str, queue: &'static str) {
    let kills = if long() { 10 } else { 3 };
    let mut redis = FaultRedis::start(fsync);
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let store = store_on(&redis.url(), &ns).await;
    let tail = EventTail::start(&redis.url(), &ns, queue);
    let names: Vec<String> = (0..2).map(|i| format!("{queue}-agent-{i}")).collect();
    let agents: Vec<Proc> = names
        .iter()
        .map(|n| {
            agent(
                n,
                &[&serve.url],
                &["--queue", queue, "--capacity", "8", "--builtin"],
                false,
            )
        })
        .collect();
    node_ids(&serve.api(), &names, Duration::from_secs(30)).await;
    let rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&rec, vec![serve.api()], queue, 4, &stop);
    let started = Instant::now();
    // (kill, restart begins, answers PING) wall-clock ms of each outage.
    let mut outages: Vec<(i64, i64, i64)> = Vec::new();
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let killed = wall_ms();
        redis.kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let restarting = wall_ms();
        redis.restart();
        outages.push((killed, restarting, wall_ms()));
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("client");
    }
    let subs = rec.subs();
    let acked = subs.values().filter(|v| v.is_some()).count() as i64;
    let drained = drain(&store, queue, acked, Duration::from_secs(60)).await;
    tail.settle().await;
    let events = tail.events();
    let check = check(&store, queue, &rec, &events).await;

    let ops = rec.ops();
    let http500 = ops.iter().filter(|o| o.status == Some(500)).count();
    let mut down_ops = 0;
    let mut bad_down: Vec<String> = Vec::new();
    let mut slowest_down = Duration::ZERO;
    let mut back_ms: Vec<i64> = Vec::new();
    for (killed, restarting, back) in &outages {
        // Requests sent while Redis was down (after the kill, answered before its restart).
        for o in ops.iter().filter(|o| {
            o.at_ms > *killed + 20 && o.at_ms + (o.took.as_millis() as i64) < *restarting
        }) {
            down_ops += 1;
            slowest_down = slowest_down.max(o.took);
            if o.status != Some(503) || !o.retry_after {
                bad_down.push(format!(
                    "{} {:?} retry_after={} {:?}",
                    o.server, o.status, o.retry_after, o.outcome
                ));
            }
        }
        // Serving again: the first 2xx answer after Redis is back.
        let first = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Ok(_)) && o.at_ms > *killed)
            .map(|o| (o.at_ms + o.took.as_millis() as i64 - back).max(0))
            .min()
            .unwrap_or(i64::MAX);
        back_ms.push(first);
    }
    // No request hangs, whenever it was sent.
    let slowest = ops.iter().map(|o| o.took).max().unwrap_or_default();
    let (ok, failed, indeterminate) = rec.counts();
    eprintln!(
        "R4 [{fsync}] figures: redis_kills={kills} ops ok={ok} failed={failed} indeterminate={indeterminate} http500={http500} \
         requests_while_down={down_ops} (non-503-with-Retry-After: {}) slowest_while_down={slowest_down:?} slowest_overall={slowest:?} \
         back_to_first_2xx_ms={back_ms:?} drain={drained:?} {} runtime={:?}",
        bad_down.len(),
        check.line(),
        started.elapsed()
    );
    assert_eq!(http500, 0, "R4 [{fsync}]: a 500 answer");
    assert!(
        down_ops > 0,
        "R4 [{fsync}]: no request was sent while redis was down"
    );
    assert!(
        bad_down.is_empty(),
        "R4 [{fsync}]: answers while redis was down: {bad_down:?}"
    );
    assert!(
        slowest_down <= Duration::from_millis(1500),
        "R4 [{fsync}]: a request took {slowest_down:?} while redis was down"
    );
    assert!(
        back_ms.iter().all(|ms| *ms <= 2000),
        "R4 [{fsync}]: serving again took {back_ms:?} ms after redis was back"
    );
    assert!(
        drained.is_some(),
        "R4 [{fsync}]: tasks not terminal after 60 s"
    );
    check.assert_clean(&format!("R4 [{fsync}]"));
    assert!(
        check.succeeded_without_event.is_empty(),
        "R4 [{fsync}]: succeeded without an event: {:?}",
        check.succeeded_without_event
    );
    drop(agents);
    assert_doctor_cli_clean(&redis.url(), &ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_redis_killed_under_load_with_appendfsync_always_loses_nothing_and_answers_503_while_down()
 {
    let _serial = serial().await;
    r4("always", "r4a").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r4_redis_killed_under_load_with_appendfsync_everysec_loses_nothing_and_answers_503_while_down()
 {
    let _serial = serial().await;
    r4("everysec", "r4e").await;
}

/// Pauses Redis for `pause` while tasks run; returns after checking the common gates.
async fn r6(pause: Duration, queue: &'static str, short: bool, gate_redispatch: bool) {
    let mut redis = FaultRedis::start("everysec");
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let store = store_on(&redis.url(), &ns).await;
    let probe_q: &'static str = if short { "r6p-short" } else { "r6p-long" };
    let tail = EventTail::start(&redis.url(), &ns, queue);
    let probe_tail = EventTail::start(&redis.url(), &ns, probe_q);
    let names: Vec<String> = (0..2).map(|i| format!("{queue}-agent-{i}")).collect();
    // Handlers outlive the pause; the lease is renewed every TTL/3.
    let extra = if gate_redispatch { 6.0 } else { 2.0 };
    let sleep = format!(
        "sleep {}",
        (pause.as_millis() as f64 / 1000.0 + extra).ceil()
    );
    let mut agents: Vec<Proc> = names
        .iter()
        .map(|n| {
            agent(
                n,
                &[&serve.url],
                &["--queue", queue, "--capacity", "4", "--exec", &sleep],
                false,
            )
        })
        .collect();
    agents.push(agent(
        &format!("{queue}-probe-agent"),
        &[&serve.url],
        &["--queue", probe_q, "--capacity", "4", "--builtin"],
        false,
    ));
    node_ids(&serve.api(), &names, Duration::from_secs(30)).await;
    let api = serve.api();
    let rec = Recorder::new();
    let n = 8;
    for i in 0..n {
        let key = format!("{queue}-{i}");
        let body = json!({ "kind": "sleep", "queue": queue, "payload": { "key": key }, "timeout_ms": TTL_MS,
            "max_attempts": 5, "backoff": { "initial_ms": 100, "max_ms": 200 } });
        rec.submit_until_answered(
            std::slice::from_ref(&api),
            &key,
            &body,
            Duration::from_secs(10),
        )
        .await
        .expect("acked");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while store
        .queue_info(queue)
        .await
        .map(|i| i.counts.running)
        .unwrap_or(0)
        < n
    {
        assert!(Instant::now() < deadline, "R6: tasks not all running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Probes through the pause: reads and keyed submissions, each timed.
    let probe_rec = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let probes = start_load(&probe_rec, vec![api.clone()], probe_q, 2, &stop);
    let reader = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = api
                    .req(reqwest::Method::GET, &format!("/v1/queues/{queue}"))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                worst = worst.max(t.elapsed());
                *statuses
                    .entry(r.map(|r| r.status().as_u16()).unwrap_or(0))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (worst, statuses)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running_ids: Vec<String> = all_tasks(&store, queue)
        .await
        .into_iter()
        .map(|t| t.id)
        .collect();
    let expiry = |t: &muster::domain::Task| {
        t.lease_expires_at
            .as_deref()
            .and_then(muster::domain::parse_rfc3339_ms)
    };
    if gate_redispatch {
        // Pause 0.1 s before task 0's next renewal (renewals every TTL/3 = 1 s): that
        // renewal then times out (1 s Redis timeout) while Redis is still paused, the
        // worst case for the lease.
        let first = store.task(&running_ids[0]).await.expect("task");
        let deadline = Instant::now() + Duration::from_secs(5);
        while expiry(&store.task(&running_ids[0]).await.expect("task")) == expiry(&first) {
            assert!(Instant::now() < deadline, "no renewal seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(TTL_MS / 3 - 100)).await;
    }
    let before: std::collections::HashMap<String, Option<i64>> = {
        let mut m = std::collections::HashMap::new();
        for id in &running_ids {
            m.insert(id.clone(), expiry(&store.task(id).await.expect("task")));
        }
        m
    };
    redis.pause();
    let paused = Instant::now();
    tokio::time::sleep(pause).await;
    redis.resume();
    let paused_for = paused.elapsed();
    // Lease margin left when each lease is first renewed after the pause (the renewal
    // happened at new expiry - TTL, Redis clock): a healthy agent renews well before
    // the deadline; TTL/6 is the floor asked here.
    let mut last = before.clone();
    let mut margins: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(TTL_MS) && margins.len() < running_ids.len() {
        for id in &running_ids {
            if margins.contains_key(id) {
                continue;
            }
            let Ok(t) = store.task(id).await else {
                continue;
            };
            let now = expiry(&t);
            if t.state == TaskState::Succeeded {
                continue;
            } else if t.state != TaskState::Running || t.attempts != 1 {
                // The lease expired.
                margins.insert(id.clone(), i64::MIN);
            } else if now != last[id] {
                let (old, new) = (last[id].unwrap_or(0), now.unwrap_or(0));
                if before[id] != now {
                    margins.insert(id.clone(), old - (new - TTL_MS as i64));
                }
                last.insert(id.clone(), now);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let worst_margin = margins.values().copied().min().unwrap_or(i64::MIN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for p in probes {
        p.await.expect("probe");
    }
    let (worst_read, statuses) = reader.await.expect("reader");
    let worst_submit = probe_rec
        .ops()
        .iter()
        .map(|o| o.took)
        .max()
        .unwrap_or_default();
    let drained = drain(&store, queue, n, Duration::from_secs(60)).await;
    let probe_acked = probe_rec.subs().values().filter(|v| v.is_some()).count() as i64;
    let probe_drained = drain(&store, probe_q, probe_acked, Duration::from_secs(30)).await;
    tail.settle().await;
    let events = tail.events();
    let probe_check = check(&store, probe_q, &probe_rec, &probe_tail.events()).await;
    let check = check(&store, queue, &rec, &events).await;
    let tasks = all_tasks(&store, queue).await;
    let redispatched = tasks.iter().filter(|t| t.attempts != 1).count();
    let http500 = probe_rec
        .ops()
        .iter()
        .filter(|o| o.status == Some(500))
        .count()
        + statuses.get(&500).copied().unwrap_or(0);
    let label = if short {
        "short (0.4 x TTL)"
    } else {
        "long (2 x TTL)"
    };
    eprintln!(
        "R6 {label} figures: paused={paused_for:?} tasks={} redispatched={redispatched} worst_read={worst_read:?} \
         worst_submit={worst_submit:?} worst_lease_margin_at_first_renewal_after_pause_ms={} read_statuses={statuses:?} http500={http500} drain={drained:?} {} probes: {}",
        tasks.len(),
        if worst_margin == i64::MIN {
            "expired".to_string()
        } else {
            worst_margin.to_string()
        },
        check.line(),
        probe_check.line()
    );
    assert!(
        drained.is_some() && probe_drained.is_some(),
        "R6 {label}: tasks not terminal"
    );
    check.assert_clean(&format!("R6 {label}"));
    probe_check.assert_clean(&format!("R6 {label} probes"));
    assert_eq!(http500, 0, "R6 {label}: a 500 answer");
    assert!(
        tasks.iter().all(|t| t.state == TaskState::Succeeded),
        "R6 {label}: {tasks:#?}"
    );
    // No request hangs past the 1 s Redis timeout (+ slack).
    assert!(
        worst_read <= Duration::from_millis(1500) && worst_submit <= Duration::from_millis(1500),
        "R6 {label}: a request hung ({worst_read:?} / {worst_submit:?})"
    );
    if short && gate_redispatch {
        assert!(
            worst_margin >= (TTL_MS / 6) as i64,
            "R6 {label}: after the pause a lease was renewed with only {worst_margin} ms left (or expired); margins {margins:?}"
        );
        assert_eq!(
            redispatched, 0,
            "R6 {label}: a short pause re-dispatched tasks: {tasks:#?}"
        );
        assert!(tasks.iter().all(|t| t.fence == 1));
    }
    drop(agents);
    assert_doctor_cli_clean(&redis.url(), &ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r6_redis_paused_for_less_than_the_ttl_loses_nothing_and_never_hangs() {
    let _serial = serial().await;
    // Every gate of the short pause but "0 re-dispatches" (see the ignored test below).
    r6(Duration::from_millis(TTL_MS * 4 / 10), "r6s", true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r6_redis_paused_for_less_than_the_ttl_re_dispatches_nothing() {
    let _serial = serial().await;
    r6(Duration::from_millis(TTL_MS * 4 / 10), "r6b", true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r6_redis_paused_for_twice_the_ttl_may_re_dispatch_but_accepts_one_completion_per_task() {
    let _serial = serial().await;
    r6(Duration::from_millis(TTL_MS * 2), "r6l", false, false).await;
}

/// A Redis restarted empty has forgotten every node, while the server's node snapshot
/// (fresh for 500 ms, served up to 2 s stale) still lists them: nothing may be dispatched
/// to such a node (its token is gone too, so its report would be refused and the task
/// would wait out its lease TTL). The server reads the nodes again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restarted_empty_gets_no_task_dispatched_to_a_node_it_forgot() {
    let _serial = serial().await;
    let redis = RedisGuard::start();
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let admin = serve.api();
    let queue = "forgot";
    let node = register_node(&admin, "forgotten", &[queue], 4).await;
    // An idle worker's long-poll, parked in the server.
    let park = || {
        let (api, path) = (node.api.clone(), format!("/v1/nodes/{}/lease", node.id));
        tokio::spawn(async move {
            api.post(&path, &json!({ "max": 4, "wait_ms": 20_000 }))
                .await
        })
    };
    let poll = park();
    // The node is in the snapshot the dispatcher reads.
    let first = admin
        .submit(json!({ "kind": "k", "queue": queue, "payload": 1 }))
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.task(&first.id).await.state != TaskState::Running {
        assert!(
            Instant::now() < deadline,
            "the first task never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = poll.await;
    let poll = park();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // kill -9, and a new redis-server on the same port with an empty data dir.
    let (_old_dir, port) = redis.kill();
    let _redis = RedisGuard::start_in(
        tempfile::tempdir().expect("temp dir"),
        port,
        &["--save", "", "--appendonly", "no"],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let task = loop {
        let r = admin
            .post(
                "/v1/tasks",
                &json!({ "kind": "k", "queue": queue, "payload": 2 }),
            )
            .await;
        if r.status == 201 {
            break r.json::<muster::domain::Task>();
        }
        assert!(
            r.status == 503 && Instant::now() < deadline,
            "submit after the restart: {} {}",
            r.status,
            r.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Longer than a dispatch pass takes; shorter than the stale snapshot would live.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let now = admin.task(&task.id).await;
    assert_eq!(
        now.state,
        TaskState::Pending,
        "no node is registered in this Redis: {now:?}"
    );
    assert_eq!(now.node, None, "{now:?}");
    poll.abort();
}
