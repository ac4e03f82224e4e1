//! Handler limits: a handler past `max_run_ms` is killed (its whole process group) and
//! the attempt retried; cancelling a running task reaches its node within one heartbeat.

use super::harness::*;
use crate::support::*;
use muster::domain::{Task, TaskState};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handler_past_max_run_ms_is_killed_with_its_process_group_and_the_attempt_retried() {
    let _serial = serial().await;
    let redis = FaultRedis::start("everysec");
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let api = serve.api();
    let dir = tempfile::tempdir().expect("temp dir");
    let (pids, sink) = (dir.path().join("pids"), dir.path().join("sink"));
    // The first attempt hangs (and would write after 30 s); the second answers at once.
    let cmd = format!(
        "echo $$ >> '{}'; if [ \"$MUSTER_ATTEMPT\" = 1 ]; then sleep 30; echo \"$MUSTER_FENCE\" >> '{}'; fi; echo '\"done\"'",
        pids.display(),
        sink.display()
    );
    let mut a = agent(
        "slow",
        &[&serve.url],
        &["--queue", "slow", "--capacity", "2", "--exec", &cmd],
        false,
    );
    let t: Task = api
        .post(
            "/v1/tasks",
            &json!({ "kind": "slow", "queue": "slow", "timeout_ms": TTL_MS, "max_run_ms": 600,
            "max_attempts": 3, "backoff": { "initial_ms": 100, "max_ms": 100 } }),
        )
        .await
        .expect(201)
        .json();
    let asked = Instant::now();
    let done = api.wait_terminal(&t.id, Duration::from_secs(20)).await;
    let took = asked.elapsed();
    assert_eq!(done.state, TaskState::Succeeded, "{done:?}");
    assert_eq!((done.attempts, done.fence), (2, 2), "{done:?}");
    assert_eq!(done.result, Some(json!("done")));
    let ps = pids_in(&pids);
    assert_eq!(ps.len(), 2, "two attempts ran: {ps:?}");
    assert!(
        !group_alive(ps[0]),
        "the killed handler's process group survives"
    );
    // Killed at max_run_ms, long before the lease TTL could matter.
    assert!(took < Duration::from_millis(TTL_MS), "retry took {took:?}");

    // Past max_run_ms on every attempt: failed after max_attempts, each attempt timed out.
    a.kill9();
    let cmd2 = format!(
        "echo $$ >> '{}'; sleep 30; echo \"$MUSTER_FENCE\" >> '{}'",
        pids.display(),
        sink.display()
    );
    let _b = agent(
        "slow2",
        &[&serve.url],
        &["--queue", "slow", "--capacity", "2", "--exec", &cmd2],
        false,
    );
    let t: Task = api
        .post(
            "/v1/tasks",
            &json!({ "kind": "slow", "queue": "slow", "timeout_ms": TTL_MS, "max_run_ms": 300,
            "max_attempts": 2, "backoff": { "initial_ms": 50, "max_ms": 50 } }),
        )
        .await
        .expect(201)
        .json();
    let done = api.wait_terminal(&t.id, Duration::from_secs(20)).await;
    assert_eq!(done.state, TaskState::Failed, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert!(
        done.error.as_deref().unwrap_or("").contains("timed out"),
        "{done:?}"
    );
    let ps = pids_in(&pids);
    assert_eq!(ps.len(), 4, "{ps:?}");
    for p in &ps {
        assert!(!group_alive(*p), "handler group {p} survives");
    }
    assert_eq!(
        std::fs::read_to_string(&sink).unwrap_or_default(),
        "",
        "a killed handler wrote its side effect"
    );
    eprintln!(
        "max_run_ms figures: killed handlers=3 surviving=0 side effects=0 kill+retry took {took:?}"
    );
    assert_doctor_cli_clean(&redis.url(), &ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelling_a_running_task_reaches_its_node_and_kills_the_handler_within_one_heartbeat() {
    let _serial = serial().await;
    let rounds = if long() { 20 } else { 5 };
    let redis = FaultRedis::start("everysec");
    let ns = unique_ns();
    let serve = Serve::start(&redis.url(), &ns).await;
    let api = serve.api();
    let dir = tempfile::tempdir().expect("temp dir");
    let pids = dir.path().join("pids");
    let cmd = format!("echo $$ >> '{}'; sleep 30", pids.display());
    // A long TTL: the renewals (every TTL/3) are not what tells the node.
    let _a = agent(
        "cancel",
        &[&serve.url],
        &["--queue", "cancel", "--capacity", "2", "--exec", &cmd],
        false,
    );
    node_ids(&api, &["cancel".to_string()], Duration::from_secs(30)).await;
    let (mut worst_state, mut worst_kill) = (Duration::ZERO, Duration::ZERO);
    for i in 0..rounds {
        let t: Task = api
            .post(
                "/v1/tasks",
                &json!({ "kind": "c", "queue": "cancel", "timeout_ms": 30_000, "max_attempts": 3 }),
            )
            .await
            .expect(201)
            .json();
        let deadline = Instant::now() + Duration::from_secs(15);
        while api.task(&t.id).await.state != TaskState::Running || pids_in(&pids).len() <= i {
            assert!(Instant::now() < deadline, "task not running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Somewhere within the heartbeat period.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..HEARTBEAT_MS))).await;
        let pgid = pids_in(&pids)[i];
        let asked = Instant::now();
        let c: Task = api
            .post(&format!("/v1/tasks/{}/cancel", t.id), &json!({}))
            .await
            .expect(200)
            .json();
        assert!(c.cancel_requested);
        let (mut state_at, mut kill_at) = (None, None);
        while state_at.is_none() || kill_at.is_none() {
            if kill_at.is_none() && !group_alive(pgid) {
                kill_at = Some(asked.elapsed());
            }
            if state_at.is_none() && api.task(&t.id).await.state == TaskState::Cancelled {
                state_at = Some(asked.elapsed());
            }
            assert!(
                asked.elapsed() < Duration::from_secs(10),
                "cancel not carried out"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worst_state = worst_state.max(state_at.unwrap());
        worst_kill = worst_kill.max(kill_at.unwrap());
        let done = api.task(&t.id).await;
        assert_eq!(done.attempts, 1, "{done:?}");
    }
    eprintln!(
        "cancel figures: cancels={rounds} worst cancel->handler killed={worst_kill:?} worst cancel->cancelled={worst_state:?} \
         (heartbeat {HEARTBEAT_MS} ms, gate {} ms)",
        HEARTBEAT_MS + 1000
    );
    let gate = Duration::from_millis(HEARTBEAT_MS + 1000);
    assert!(
        worst_kill <= gate && worst_state <= gate,
        "cancel took {worst_kill:?} / {worst_state:?}"
    );
    assert_doctor_cli_clean(&redis.url(), &ns);
}
