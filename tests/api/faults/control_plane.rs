//! R3: `kill -9` and restart of a control-plane replica under load (two replicas on one
//! Redis; clients retry with the same Idempotency-Key against either; agents fail over).

use super::harness::*;
use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_a_control_plane_killed_under_load_loses_and_duplicates_nothing_and_is_back_within_2s() {
    let _serial = serial().await;
    let (load_secs, kills, clients) = if long() {
        (120u64, 10usize, 8usize)
    } else {
        (15, 3, 6)
    };
    let queue = "r3";
    let redis = FaultRedis::start("always");
    let ns = unique_ns();
    let mut a = Serve::start(&redis.url(), &ns).await;
    let mut b = Serve::start(&redis.url(), &ns).await;
    let store = store_on(&redis.url(), &ns).await;
    let tail = EventTail::start(&redis.url(), &ns, queue);
    let exec = ["--queue", queue, "--capacity", "8", "--builtin"];
    let names: Vec<String> = (0..3).map(|i| format!("r3-agent-{i}")).collect();
    let agents: Vec<Proc> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            // Half list replica A first, half B first: both get agent traffic.
            let servers = if i % 2 == 0 {
                [a.url.as_str(), b.url.as_str()]
            } else {
                [b.url.as_str(), a.url.as_str()]
            };
            agent(n, &servers, &exec, false)
        })
        .collect();
    node_ids(&a.api(), &names, Duration::from_secs(30)).await;

    let rec = Recorder::new();
    let servers = vec![a.api(), b.api()];
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut load = Vec::new();
    for c in 0..clients {
        let (rec, servers, stop) = (rec.clone(), servers.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("r3-{c}-{i}");
                i += 1;
                // Retry (either replica) with the same key until a definitive answer.
                rec.submit_until_answered(
                    &servers,
                    &key,
                    &echo_task(queue, &key),
                    Duration::from_secs(30),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    let mut recoveries: Vec<Duration> = Vec::new();
    let gap = Duration::from_millis(load_secs * 1000 / (kills as u64 + 1));
    for k in 0..kills {
        tokio::time::sleep(gap.saturating_sub(Duration::from_millis(500))).await;
        let victim = if k % 2 == 0 { &mut a } else { &mut b };
        victim.kill9();
        let killed = Instant::now();
        victim.spawn();
        // First 2xx of the restarted replica on an authenticated route that reads Redis.
        let http = victim.api();
        let back = loop {
            let r = tokio::time::timeout(
                Duration::from_millis(500),
                http.req(reqwest::Method::GET, &format!("/v1/queues/{queue}"))
                    .send(),
            )
            .await;
            if let Ok(Ok(r)) = r
                && r.status().is_success()
            {
                break killed.elapsed();
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "R3: replica not back after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        recoveries.push(back);
        eprintln!(
            "R3 kill {k}: replica :{} back (2xx) after {back:?}",
            victim.port
        );
    }
    let left = Duration::from_secs(load_secs).saturating_sub(started.elapsed());
    tokio::time::sleep(left).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("client");
    }
    let load_stopped = Instant::now();
    let subs = rec.subs();
    let acked = subs.values().filter(|v| v.is_some()).count() as i64;
    let drained = drain(&store, queue, acked, Duration::from_secs(60)).await;
    let drain_time = drained.unwrap_or_else(|| load_stopped.elapsed());
    tail.settle().await;
    let events = tail.events();
    let check = check(&store, queue, &rec, &events).await;
    let (ok, failed, indeterminate) = rec.counts();
    let ops = rec.ops();
    let five_hundreds = ops.iter().filter(|o| o.status == Some(500)).count();
    // Submissions whose first try got no answer, then retried under the same key.
    let retried: std::collections::HashSet<&String> = ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Indeterminate(_)))
        .map(|o| &o.key)
        .collect();
    let max_rec = recoveries.iter().max().copied().unwrap_or_default();
    eprintln!(
        "R3 figures: kills={kills} load={load_secs}s rate={:.0}/s ops ok={ok} failed={failed} indeterminate={indeterminate} \
         http500={five_hundreds} keys_retried_after_no_answer={} kill_to_first_2xx max={max_rec:?} all={recoveries:?} drain={drain_time:?} {}",
        subs.len() as f64 / load_secs as f64,
        retried.len(),
        check.line()
    );
    check.assert_clean("R3");
    assert_eq!(five_hundreds, 0, "R3: a 500 answer");
    assert_eq!(failed, 0, "R3: a definitive refusal of a valid submission");
    assert!(
        drained.is_some() && drain_time <= Duration::from_secs(15),
        "R3: not all terminal within 15 s of the load stopping ({drain_time:?})"
    );
    assert!(
        max_rec <= Duration::from_secs(2),
        "R3: kill to first 2xx took {max_rec:?}"
    );
    drop(agents);
    assert_doctor_cli_clean(&redis.url(), &ns);
}
