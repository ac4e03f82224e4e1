//! R1 (agent `kill -9` mid-task) and R2 (a paused agent comes back as a zombie).

use super::harness::*;
use crate::support::*;
use muster::domain::{Task, TaskState};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// node id → node name, as the API lists them.
async fn node_names(api: &Http) -> HashMap<String, String> {
    let r = api.get("/v1/nodes").await;
    if r.status != 200 {
        return HashMap::new();
    }
    r.json::<muster::domain::NodeList>()
        .items
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect()
}

/// One kill of R1.
#[derive(Debug, Clone)]
struct Kill {
    node: String,
    name: String,
    at_ms: i64,
}

fn seed() -> u64 {
    std::env::var("MUSTER_FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r1_agents_killed_mid_task_lose_nothing_accept_one_result_and_are_reclaimed_within_ttl_plus_1s()
 {
    let _serial = serial().await;
    let (rounds, kills_per_round, tasks_per_round, pool) =
        if long() { (25, 4, 8, 6) } else { (5, 4, 6, 5) };
    let seed = seed();
    eprintln!("R1 seed {seed} (MUSTER_FAULTS_SEED={seed} replays the kill times)");
    let mut rng = StdRng::seed_from_u64(seed);
    let queue = "r1";
    let redis = FaultRedis::start("everysec");
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let api = serve.api();
    let store = store_on(&redis.url(), &ns).await;
    let tail = EventTail::start(&redis.url(), &ns, queue);
    let rec = Recorder::new();
    // The handler runs longer than the lease TTL: it lives on renewals.
    let exec = ["--queue", queue, "--capacity", "2", "--exec", "sleep 4"];
    let mut agents: Vec<(String, Proc)> = Vec::new();
    let mut serial_no = 0;
    let mut spawn = |agents: &mut Vec<(String, Proc)>| {
        let name = format!("r1-agent-{serial_no}");
        serial_no += 1;
        agents.push((name.clone(), agent(&name, &[&serve.url], &exec, false)));
        name
    };
    for _ in 0..pool {
        spawn(&mut agents);
    }
    let names: Vec<String> = agents.iter().map(|a| a.0.clone()).collect();
    node_ids(&api, &names, Duration::from_secs(30)).await;

    let mut kills: Vec<Kill> = Vec::new();
    let started = Instant::now();
    for round in 0..rounds {
        let mut ids = Vec::new();
        for i in 0..tasks_per_round {
            let key = format!("r1-{round}-{i}");
            let body = json!({
                "kind": "sleep", "queue": queue, "payload": { "key": key },
                "timeout_ms": TTL_MS, "max_attempts": 10, "backoff": { "initial_ms": 100, "max_ms": 200 },
            });
            let id = rec
                .submit_until_answered(
                    std::slice::from_ref(&api),
                    &key,
                    &body,
                    Duration::from_secs(10),
                )
                .await;
            ids.push(id.expect("submission acknowledged"));
        }
        let t0 = Instant::now();
        let mut times: Vec<u64> = (0..kills_per_round)
            .map(|_| rng.random_range(500..3500))
            .collect();
        times.sort_unstable();
        for at in times {
            let due = t0 + Duration::from_millis(at);
            if let Some(d) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(d).await;
            }
            // Victim: a live agent running at least one task right now.
            let mut victim = None;
            for _ in 0..20 {
                let running = store
                    .list_tasks(queue, TaskState::Running, None, 100, 0)
                    .await
                    .map(|x| x.0)
                    .unwrap_or_default();
                let busy: HashSet<String> = running.iter().filter_map(|t| t.node.clone()).collect();
                let names = node_names(&api).await;
                let busy_names: HashSet<&String> =
                    busy.iter().filter_map(|n| names.get(n)).collect();
                let candidates: Vec<usize> = (0..agents.len())
                    .filter(|i| busy_names.contains(&agents[*i].0))
                    .collect();
                if !candidates.is_empty() {
                    let i = candidates[rng.random_range(0..candidates.len())];
                    let node = names
                        .iter()
                        .find(|(_, n)| **n == agents[i].0)
                        .map(|(id, _)| id.clone())
                        .unwrap();
                    victim = Some((i, node));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let Some((i, node)) = victim else { continue };
            let (name, mut p) = agents.remove(i);
            let at_ms = wall_ms();
            p.kill9();
            kills.push(Kill { node, name, at_ms });
            // A replacement keeps the pool at full strength: survivors are available.
            spawn(&mut agents);
        }
        let done = drain(
            &store,
            queue,
            (tasks_per_round * (round + 1)) as i64,
            Duration::from_secs(90),
        )
        .await;
        assert!(
            done.is_some(),
            "R1 round {round}: tasks not terminal after 90 s (seed {seed})"
        );
        eprintln!(
            "R1 round {round}: {} kills so far, {:?} elapsed",
            kills.len(),
            started.elapsed()
        );
    }
    tail.settle().await;
    let events = tail.events();
    let evs = by_task(&events);

    // Kill → re-claim (the task's next `task.running`), per task held by a killed agent.
    let mut reclaims: Vec<i64> = Vec::new();
    let mut held_tasks: HashSet<String> = HashSet::new();
    let mut mid_task_kills = 0;
    let mut violations: Vec<String> = Vec::new();
    for k in &kills {
        let mut held = 0;
        for (task, es) in &evs {
            let last = es.iter().rfind(|e| e.ms <= k.at_ms);
            if !last.is_some_and(|e| e.typ == "task.running" && e.node == k.node) {
                continue;
            }
            held += 1;
            held_tasks.insert(task.clone());
            match es
                .iter()
                .find(|e| e.ms > k.at_ms && e.typ == "task.running")
            {
                Some(next) => {
                    reclaims.push(next.ms - k.at_ms);
                    if next.node == k.node {
                        violations.push(format!(
                            "task {task} re-claimed by the killed node {}",
                            k.node
                        ));
                    }
                }
                None => violations.push(format!(
                    "task {task} held by killed {} never re-claimed",
                    k.name
                )),
            }
        }
        if held > 0 {
            mid_task_kills += 1;
        }
    }
    let tasks = all_tasks(&store, queue).await;
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    for id in &held_tasks {
        let t = by_id[id.as_str()];
        if t.fence < 2 || t.state != TaskState::Succeeded {
            violations.push(format!(
                "killed task {id}: state {:?} fence {}",
                t.state, t.fence
            ));
        }
    }
    let check = check(&store, queue, &rec, &events).await;
    let max_reclaim = reclaims.iter().copied().max().unwrap_or(0);
    eprintln!(
        "R1 figures: kills={} mid_task_kills={} tasks={} killed_attempts_tasks={} reclaim_ms max={} p50={} (gate {} ms) \
         {} runtime={:?} seed={seed}",
        kills.len(),
        mid_task_kills,
        tasks.len(),
        held_tasks.len(),
        max_reclaim,
        pct(reclaims.iter().map(|v| *v as u128).collect(), 50.0),
        TTL_MS + 1000,
        check.line(),
        started.elapsed()
    );
    assert!(violations.is_empty(), "R1 (seed {seed}): {violations:#?}");
    check.assert_clean("R1");
    assert_eq!(check.acked, rounds * tasks_per_round);
    assert!(
        tasks.iter().all(|t| t.state == TaskState::Succeeded),
        "R1: a task did not succeed"
    );
    assert!(
        mid_task_kills as f64 >= kills_per_round as f64 * rounds as f64 * 0.9,
        "R1: too few mid-task kills ({mid_task_kills})"
    );
    assert!(
        max_reclaim <= (TTL_MS + 1000) as i64,
        "R1 (seed {seed}): kill to re-claim took {max_reclaim} ms > TTL + 1 s"
    );
    drop(agents);
    assert_doctor_cli_clean(&redis.url(), &ns);
}

/// The fenced sink: lines `<task> <fence>` in the order they were appended. A write
/// is accepted unless a higher fence was already accepted for the task.
/// Returns (accepted, rejected stale writes, highest accepted fence per task).
type SinkReplay = (Vec<(String, i64)>, Vec<(String, i64)>, HashMap<String, i64>);

fn replay_sink(path: &std::path::Path) -> SinkReplay {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut high: HashMap<String, i64> = HashMap::new();
    let (mut ok, mut stale) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(task), Some(fence)) = (it.next(), it.next().and_then(|f| f.parse::<i64>().ok()))
        else {
            continue;
        };
        let h = high.entry(task.to_string()).or_insert(0);
        if fence < *h {
            stale.push((task.to_string(), fence));
        } else {
            *h = fence;
            ok.push((task.to_string(), fence));
        }
    }
    (ok, stale, high)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r2_a_paused_agent_is_a_zombie_whose_renew_and_complete_are_refused_and_whose_stale_writes_are_fenced()
 {
    let _serial = serial().await;
    let (rounds, zombies): (usize, usize) = if long() { (10, 5) } else { (3, 2) };
    let queue = "r2";
    let redis = FaultRedis::start("everysec");
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let api = serve.api();
    let tail = EventTail::start(&redis.url(), &ns, queue);
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = dir.path().join("sink");
    // About 4 s of work in short steps (a stopped handler makes no progress: one long
    // `sleep` would run out on the monotonic clock while stopped), then the side effect
    // carrying the fence, then the result.
    let cmd = format!(
        "i=0; while [ $i -lt 40 ]; do sleep 0.1; i=$((i+1)); done; \
         echo \"$MUSTER_TASK_ID $MUSTER_FENCE\" >> '{}'; printf '{{\"fence\": %s}}' \"$MUSTER_FENCE\"",
        sink.display()
    );
    let exec = ["--queue", queue, "--capacity", "1", "--exec", cmd.as_str()];
    let started = Instant::now();
    let (mut renew_refused, mut complete_refused, mut self_fenced, mut zombie_count) = (0, 0, 0, 0);
    let mut manual_refusals = 0;
    let mut all_ids: Vec<String> = Vec::new();
    for round in 0..rounds {
        let stop_group = round % 2 == 0;
        let znames: Vec<String> = (0..zombies).map(|i| format!("r2-z{round}-{i}")).collect();
        let mut zs: Vec<Proc> = znames
            .iter()
            .map(|n| agent(n, &[&serve.url], &exec, true))
            .collect();
        let zids = node_ids(&api, &znames, Duration::from_secs(30)).await;
        let zid_set: HashSet<&String> = zids.values().collect();
        let ids = api
            .submit_batch(
                (0..zombies)
                    .map(|i| json!({ "kind": "side-effect", "queue": queue, "payload": { "key": format!("r2-{round}-{i}") },
                        "timeout_ms": TTL_MS, "max_attempts": 5, "backoff": { "initial_ms": 100, "max_ms": 200 } }))
                    .collect(),
            )
            .await;
        all_ids.extend(ids.iter().cloned());
        // Every task running on a zombie-to-be.
        for id in &ids {
            let t = eventually_task(&api, id, Duration::from_secs(15), |t| {
                t.state == TaskState::Running
            })
            .await;
            assert!(
                zid_set.contains(t.node.as_ref().unwrap()),
                "task {id} not on a zombie: {t:?}"
            );
            assert_eq!(t.fence, 1);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let groups: Vec<Vec<u32>> = zs.iter_mut().map(|z| z.stop(stop_group)).collect();
        let stopped = Instant::now();
        zombie_count += zs.len();
        // Other agents take the tasks over once the leases expire and finish them.
        let hnames: Vec<String> = (0..zombies).map(|i| format!("r2-h{round}-{i}")).collect();
        let hs: Vec<Proc> = hnames
            .iter()
            .map(|n| agent(n, &[&serve.url], &exec, false))
            .collect();
        let hids = node_ids(&api, &hnames, Duration::from_secs(30)).await;
        let hid_set: HashSet<&String> = hids.values().collect();
        let mut finished: Vec<Task> = Vec::new();
        for id in &ids {
            finished.push(api.wait_terminal(id, Duration::from_secs(30)).await);
        }
        if let Some(left) = Duration::from_millis(2 * TTL_MS).checked_sub(stopped.elapsed()) {
            tokio::time::sleep(left).await;
        }
        // The zombies wake up.
        for (z, g) in zs.iter_mut().zip(&groups) {
            z.cont(g);
        }
        // Long enough for a zombie that did not fence itself to write (3 s of sleep left).
        tokio::time::sleep(Duration::from_millis(4000)).await;
        for (id, before) in ids.iter().zip(&finished) {
            let t = api.task(id).await;
            assert_eq!(&t, before, "R2: the zombie changed task {id}");
            assert_eq!(t.state, TaskState::Succeeded, "{t:?}");
            assert!(t.fence >= 2, "{t:?}");
            assert!(
                hid_set.contains(t.node.as_ref().unwrap()),
                "R2: result not from the second attempt: {t:?}"
            );
            assert_eq!(
                t.result,
                Some(json!({ "fence": t.fence })),
                "R2: the stored result is not the second attempt's"
            );
        }
        for z in &zs {
            let log = z.output();
            let renew = log
                .lines()
                .any(|l| l.contains("lease lost: stopping the task") && l.contains("409"));
            let complete = log
                .lines()
                .any(|l| l.contains("report refused") && l.contains("409"));
            assert!(
                renew || complete,
                "R2: zombie {} was never refused with 409\n{}",
                z.name,
                z.log()
            );
            renew_refused += usize::from(renew);
            complete_refused += usize::from(complete);
        }
        // A zombie fenced itself when its handler was killed before writing: with the
        // whole group stopped, its only write would come after the takeover.
        if stop_group {
            let (_, stale, _) = replay_sink(&sink);
            let stale_here = stale.iter().filter(|(t, _)| ids.contains(t)).count();
            self_fenced += zombies - stale_here.min(zombies);
        }
        drop(zs);
        drop(hs);

        // The same zombie through the API by hand, holding its token: renew, complete and
        // fail after another node finished the task are all 409 and change nothing.
        let mq = format!("r2m{round}");
        let a = register_node(&api, &format!("r2-manual-a{round}"), &[&mq], 1).await;
        let t = api
            .submit(
                json!({ "kind": "manual", "queue": mq, "timeout_ms": 500, "max_attempts": 3,
            "backoff": { "initial_ms": 50, "max_ms": 50 } }),
            )
            .await;
        let la = eventually_lease(&a, &api, &t.id, Duration::from_secs(10)).await;
        assert_eq!(la.task.id, t.id);
        // A takes no more work: the retry must go to B.
        api.post(&format!("/v1/nodes/{}/drain", a.id), &json!({}))
            .await
            .expect(200);
        let b = register_node(&api, &format!("r2-manual-b{round}"), &[&mq], 1).await;
        let lb = eventually_lease(&b, &api, &t.id, Duration::from_secs(10)).await;
        assert_eq!(lb.task.id, t.id);
        assert!(lb.fence > la.fence);
        let done: Task = b
            .api
            .post(
                &format!("/v1/tasks/{}/complete", t.id),
                &json!({ "lease_token": lb.lease_token, "result": "second" }),
            )
            .await
            .expect(200)
            .json();
        for (op, body) in [
            ("extend", json!({ "lease_token": la.lease_token })),
            (
                "complete",
                json!({ "lease_token": la.lease_token, "result": "zombie" }),
            ),
            (
                "fail",
                json!({ "lease_token": la.lease_token, "error": "zombie" }),
            ),
        ] {
            let r = a.api.post(&format!("/v1/tasks/{}/{op}", t.id), &body).await;
            assert_eq!(r.problem(409), "lease_conflict", "zombie {op}");
            manual_refusals += 1;
        }
        assert_eq!(
            api.task(&t.id).await,
            done,
            "a refused zombie call changed the task"
        );
    }
    tail.settle().await;
    let events = tail.events();
    let evs = by_task(&events);
    let mut dup = 0;
    for id in &all_ids {
        let n = evs
            .get(id)
            .map(|v| v.iter().filter(|e| e.typ == "task.succeeded").count())
            .unwrap_or(0);
        if n != 1 {
            dup += 1;
        }
    }
    let (accepted, stale, high) = replay_sink(&sink);
    // Every task's highest accepted write is its accepted completion's fence.
    for id in &all_ids {
        let t = api.task(id).await;
        assert_eq!(
            high.get(id),
            Some(&t.fence),
            "R2: the sink's latest write for {id} is not the final attempt's"
        );
    }
    eprintln!(
        "R2 figures: zombies={zombie_count} (rounds={rounds}) renew_409={renew_refused} complete_409={complete_refused} \
         manual_zombie_409={manual_refusals} sink_writes_accepted={} stale_writes_rejected={} stale_writes_accepted=0 \
         self_fenced={self_fenced}/{} tasks_with_one_accepted_completion={}/{} runtime={:?}",
        accepted.len(),
        stale.len(),
        zombies * rounds.div_ceil(2),
        all_ids.len() - dup,
        all_ids.len(),
        started.elapsed()
    );
    assert_eq!(dup, 0, "R2: a task without exactly one accepted completion");
    // RELIABILITY.md: the zombie fences itself before its side effect in >= 49/50.
    let group_zombies = zombies * rounds.div_ceil(2);
    assert!(
        self_fenced + 1 >= group_zombies,
        "R2: only {self_fenced}/{group_zombies} zombies fenced themselves"
    );
    assert_doctor_cli_clean(&redis.url(), &ns);
}

/// Polls a task until `pred`.
async fn eventually_task(
    api: &Http,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Task) -> bool,
) -> Task {
    let deadline = Instant::now() + timeout;
    loop {
        let t = api.task(id).await;
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never reached the expected state: {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually_lease(
    n: &crate::support::ManualNode,
    api: &Http,
    task: &str,
    timeout: Duration,
) -> muster::domain::Lease {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = n.lease(1, 1000).await.into_iter().next() {
            return l;
        }
        if Instant::now() > deadline {
            let node = api.get(&format!("/v1/nodes/{}", n.id)).await;
            panic!(
                "no lease for {}: node {}\ntask {:?}",
                n.id,
                node.text,
                api.task(task).await
            );
        }
    }
}
