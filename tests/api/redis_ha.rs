//! Redis Cluster and Sentinel on real servers: a primary is killed -9 while 2,000
//! submissions and a workload run; muster answers 503 (never 500) meanwhile, reconnects
//! by itself, and with `--replica-acks 1` loses no acknowledged submission; no result
//! is ever accepted twice. Also the Cluster specifics: a batch and dependencies over
//! queues in several slots, and `muster doctor --redis-cluster`.

use crate::support::*;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `muster doctor --redis-cluster <seeds> --namespace <ns>`.
fn doctor_cluster(seeds: &str, ns: &str) -> std::process::Output {
    std::process::Command::new(muster_bin())
        .args(["doctor", "--redis-cluster", seeds, "--namespace", ns])
        .output()
        .expect("doctor")
}

/// What a stream of submissions saw.
#[derive(Default, Debug)]
struct Tally {
    acked: Vec<String>,
    unavailable: usize,
    other: Vec<(u16, String)>,
}

/// Submits `n` tasks one by one over `queues` from `workers` concurrent clients;
/// `at_half` runs once half of them are acknowledged (while the others go on).
async fn submit_through(
    api: &Http,
    n: usize,
    queues: &[&str],
    at_half: impl FnOnce() + Send + 'static,
) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let trigger = Arc::new(std::sync::Mutex::new(Some(
        Box::new(at_half) as Box<dyn FnOnce() + Send>
    )));
    let mut joins = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        let next = next.clone();
        let acked = acked.clone();
        let trigger = trigger.clone();
        let queues: Vec<String> = queues.iter().map(|q| q.to_string()).collect();
        joins.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return t;
                }
                let q = &queues[i % queues.len()];
                let body = json!({ "kind": "echo", "queue": q, "payload": { "i": i }, "timeout_ms": 5000 });
                // A 503 is retried (with the same idempotency key) until it is answered.
                let key = format!("k{i}");
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let r = api
                        .send(
                            api.req(reqwest::Method::POST, "/v1/tasks")
                                .header("Idempotency-Key", &key)
                                .json(&body),
                        )
                        .await;
                    match r.status {
                        200 | 201 => {
                            let task: muster::domain::Task = r.json();
                            t.acked.push(task.id);
                            if acked.fetch_add(1, Ordering::Relaxed) + 1 == n / 2
                                && let Some(f) = trigger.lock().unwrap().take()
                            {
                                f();
                            }
                            break;
                        }
                        503 => {
                            assert!(
                                r.header("retry-after").is_some(),
                                "a 503 names Retry-After"
                            );
                            t.unavailable += 1;
                            assert!(Instant::now() < deadline, "503 for a whole minute");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        s => {
                            t.other.push((s, r.text.clone()));
                            break;
                        }
                    }
                }
            }
        }));
    }
    let mut all = Tally::default();
    for j in joins {
        let t = j.await.expect("submitter");
        all.acked.extend(t.acked);
        all.unavailable += t.unavailable;
        all.other.extend(t.other);
    }
    all
}

/// After the run: the acknowledged tasks that are gone, and the tasks whose result was
/// accepted more than once (two `task.succeeded` events in their queue's stream).
async fn audit(
    app: &TestApp,
    conn: &mut impl redis::ConnectionLike,
    acked: &[String],
    queues: &[&str],
) -> (Vec<String>, Vec<String>) {
    let mut lost = Vec::new();
    for id in acked {
        let r = app.api.get(&format!("/v1/tasks/{id}")).await;
        if r.status == 404 {
            lost.push(id.clone());
        } else {
            assert_eq!(r.status, 200, "GET {id}: {}", r.text);
        }
    }
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    for q in queues {
        for (kind, task, _) in stream_events(conn, &app.ns, q) {
            if kind == "task.succeeded" {
                *succeeded.entry(task).or_default() += 1;
            }
        }
    }
    let twice = succeeded
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect();
    (lost, twice)
}

fn agent_args<'a>(name: &'a str, queues: &'a [&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--builtin", "--capacity", "32", "--name", name];
    for q in queues {
        a.push("--queue");
        a.push(q);
    }
    a
}

async fn wait_all_terminal(app: &TestApp, ids: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    let mut open: HashSet<String> = ids.iter().cloned().collect();
    while !open.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} acknowledged tasks never ended, e.g. {:?}",
            open.len(),
            open.iter().next()
        );
        let mut done = Vec::new();
        for id in open.iter().take(200) {
            let r = app.api.get(&format!("/v1/tasks/{id}")).await;
            if r.status == 200 {
                let t: muster::domain::Task = r.json();
                if t.state.is_terminal() {
                    assert_eq!(
                        t.state,
                        muster::domain::TaskState::Succeeded,
                        "{id} ended {:?}: {:?}",
                        t.state,
                        t.error
                    );
                    done.push(id.clone());
                }
            }
        }
        for d in done {
            open.remove(&d);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `kill` (kill -9 a primary, bring it back a few seconds later) once half of
/// 2,000 submissions are acknowledged, waits for `restart` to be done, and checks:
/// no answer but 201 or 503, every acknowledged task still there (when `acks` > 0)
/// and ending succeeded, no result accepted twice, doctor clean. Returns the number of
/// acknowledged submissions lost.
async fn failover_run(
    app: &TestApp,
    queues: &[&str],
    kill: impl FnOnce() + Send + 'static,
    restart: impl FnOnce(),
    conn: impl FnOnce() -> E2eConn,
    acks: u32,
) -> usize {
    let mut agents = vec![
        spawn_agent_process(&[&app.url], &agent_args("x1", queues)),
        spawn_agent_process(&[&app.url], &agent_args("x2", queues)),
    ];
    let tally = submit_through(&app.api, 2000, queues, kill).await;
    assert!(
        tally.other.is_empty(),
        "answers other than 201/503: {:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    assert_eq!(
        tally.acked.len(),
        2000,
        "every submission acknowledged in the end"
    );
    eprintln!(
        "failover: {} answers were 503 while the primary was away",
        tally.unavailable
    );
    restart();
    let mut c = conn();
    let (lost, twice) = audit(app, &mut c, &tally.acked, queues).await;
    eprintln!(
        "failover with replica-acks {acks}: {} acknowledged submissions lost",
        lost.len()
    );
    if acks > 0 {
        assert!(
            lost.is_empty(),
            "acknowledged submissions lost: {}",
            lost.len()
        );
    }
    let kept: Vec<String> = tally
        .acked
        .iter()
        .filter(|id| !lost.contains(id))
        .cloned()
        .collect();
    wait_all_terminal(app, &kept, Duration::from_secs(180)).await;
    let (_, twice_after) = audit(app, &mut c, &kept, queues).await;
    assert!(
        twice.is_empty() && twice_after.is_empty(),
        "results accepted twice: {twice_after:?}"
    );
    for a in &mut agents {
        a.kill9();
    }
    assert_doctor_clean(&app.store).await;
    lost.len()
}

async fn cluster_failover(acks: u32) -> usize {
    let cluster = TestCluster::start(3, 1);
    let ns = unique_ns();
    let app = spawn_app_target(cluster.target(), &ns, acks).await;
    let queues = ["ha-a", "ha-b", "ha-c", "ha-d", "ha-e", "ha-f"];
    let victim = cluster.primary_of(&format!("{ns}:{{ha-a}}:pending"));
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let killer = cluster.clone();
    let restarter = cluster.clone();
    failover_run(
        &app,
        &queues,
        move || {
            killer.lock().unwrap().nodes[victim].kill9();
            // Its replica takes over within the node timeout; the old primary comes back
            // a few seconds later (as a replica: a primary alone cannot ack a WAIT 1).
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(5));
                killer.lock().unwrap().nodes[victim].restart();
            });
        },
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while restarter.lock().unwrap().nodes[victim].killed() {
                assert!(Instant::now() < deadline, "the old primary never came back");
                std::thread::sleep(Duration::from_millis(100));
            }
            restarter.lock().unwrap().wait_ok(Duration::from_secs(30));
        },
        move || {
            let live: Vec<String> = urls
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != victim)
                .map(|(_, u)| u)
                .collect();
            E2eConn::Cluster(
                Box::new(
                    redis::cluster::ClusterClient::new(live)
                        .expect("client")
                        .get_connection()
                        .expect("cluster connection"),
                ),
                Vec::new(),
            )
        },
        acks,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_during_2000_submissions_with_replica_acks_1_loses_none() {
    assert_eq!(cluster_failover(1).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_primary_killed_during_2000_submissions_without_replica_acks_counts_its_loss() {
    // The default acknowledges before any replica has the write: what a failover loses
    // is counted (printed) and bounded by what was in flight, never a 500.
    let lost = cluster_failover(0).await;
    assert!(lost < 2000, "{lost} lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_during_2000_submissions_with_replica_acks_1_loses_none() {
    let set = TestSentinels::start();
    let ns = unique_ns();
    let app = spawn_app_target(set.target(), &ns, 1).await;
    let queues = ["sa", "sb"];
    let set = Arc::new(std::sync::Mutex::new(set));
    let killer = set.clone();
    let restarter = set.clone();
    let reader = set.clone();
    let lost = failover_run(
        &app,
        &queues,
        move || {
            killer.lock().unwrap().data[0].kill9();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(6));
                killer.lock().unwrap().data[0].restart();
            });
        },
        move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while restarter.lock().unwrap().data[0].killed() {
                assert!(Instant::now() < deadline, "the old primary never came back");
                std::thread::sleep(Duration::from_millis(100));
            }
        },
        move || {
            let s = reader.lock().unwrap();
            let port = s.primary_port().expect("a primary");
            E2eConn::One(connect(&format!("redis://127.0.0.1:{port}")))
        },
        1,
    )
    .await;
    assert_eq!(lost, 0);
    let s = set.lock().unwrap();
    assert_eq!(
        s.primary_port(),
        Some(s.data[1].port),
        "the replica was promoted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muster_serve_and_doctor_take_a_cluster_by_its_seed_nodes_and_refuse_bad_flags() {
    let cluster = TestCluster::start(3, 0);
    let seeds = cluster
        .nodes
        .iter()
        .map(|n| n.url())
        .collect::<Vec<_>>()
        .join(",");
    let ns = unique_ns();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut serve = Proc::spawn(
        "serve --redis-cluster",
        &[
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--redis-cluster".into(),
            seeds.clone(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
            "--namespace".into(),
            ns.clone(),
        ],
    );
    let api = Http::new(&url, Some(ADMIN_TOKEN));
    eventually(
        Duration::from_secs(30),
        "serve ready on the cluster",
        || async {
            let r = reqwest::get(format!("{url}/readyz")).await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    // Tasks on queues in different slots (and so, here, on different primaries).
    let mut ids = Vec::new();
    for q in ["alpha", "beta", "gamma", "delta"] {
        ids.push(api.submit(json!({ "kind": "k", "queue": q })).await.id);
    }
    for id in &ids {
        assert_eq!(api.task(id).await.state, muster::domain::TaskState::Pending);
    }
    let queues = api.get("/v1/queues").await.expect(200);
    let names: Vec<String> = queues.json::<serde_json::Value>()["items"]
        .as_array()
        .expect("queues")
        .iter()
        .filter_map(|q| q["name"].as_str().map(str::to_string))
        .collect();
    for q in ["alpha", "beta", "gamma", "delta"] {
        assert!(names.contains(&q.to_string()), "{q} in {names:?}");
    }
    serve.kill9();
    let out = doctor_cluster(&seeds, &ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    for (args, says) in [
        (vec!["serve", "--redis-cluster", " , "], "no Redis URL"),
        (
            vec!["doctor", "--redis-cluster", "nope://x"],
            "bad Redis URL",
        ),
        (
            vec!["serve", "--redis-sentinel", "redis://127.0.0.1:1"],
            "sentinel-master",
        ),
        (
            vec![
                "serve",
                "--redis-cluster",
                "redis://127.0.0.1:1",
                "--redis-sentinel",
                "redis://127.0.0.1:2",
            ],
            "cannot be used with",
        ),
    ] {
        let out = std::process::Command::new(muster_bin())
            .args(&args)
            .env("MUSTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("muster");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_over_queues_on_several_primaries_is_stored_per_queue_and_rolled_back_when_a_part_fails()
 {
    let mut cluster = TestCluster::start(3, 0);
    let ns = unique_ns();
    let app = spawn_app_target(cluster.target(), &ns, 0).await;
    // Two queues whose slots live on different primaries.
    let first = "q-first";
    let p_first = cluster.primary_of(&format!("{ns}:{{{first}}}:pending"));
    let second = (0..100)
        .map(|i| format!("q-second-{i}"))
        .find(|q| cluster.primary_of(&format!("{ns}:{{{q}}}:pending")) != p_first)
        .expect("a queue on another primary");
    let p_second = cluster.primary_of(&format!("{ns}:{{{second}}}:pending"));

    let batch = |n: usize| -> serde_json::Value {
        let tasks: Vec<serde_json::Value> = (0..n)
            .map(|i| {
                let q = if i % 2 == 0 { first } else { second.as_str() };
                json!({ "kind": "k", "queue": q, "payload": { "i": i } })
            })
            .collect();
        json!({ "tasks": tasks })
    };
    let ok = app.api.post("/v1/tasks/batch", &batch(10)).await;
    assert!(ok.status == 200 || ok.status == 201, "{}", ok.text);
    let ids: Vec<String> = ok.json::<serde_json::Value>()["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(ids.len(), 10, "{}", ok.text);
    for id in &ids {
        assert_eq!(
            app.api.task(id).await.state,
            muster::domain::TaskState::Pending
        );
    }
    assert_eq!(app.api.queue_counts(first).await.pending, 5);
    assert_eq!(app.api.queue_counts(&second).await.pending, 5);

    // The second queue's primary dies: the part stored on the first is rolled back.
    cluster.nodes[p_second].kill9();
    let failed = app.api.post("/v1/tasks/batch", &batch(10)).await;
    assert_eq!(failed.status, 503, "{}", failed.text);
    assert!(failed.header("retry-after").is_some());
    // (Read from the store: the API's queue view also reads keys that may have lived on
    // the dead primary, like the node directory.)
    let info = app
        .store
        .queue_info(first)
        .await
        .expect("the first queue is readable");
    assert_eq!(
        info.counts.pending, 5,
        "the first queue's part was rolled back: {info:?}"
    );
    assert_eq!(
        info.counts.cancelled, 0,
        "rolled-back tasks are deleted: {info:?}"
    );
    for id in &ids {
        if id.ends_with(first) {
            assert_eq!(
                app.api.task(id).await.state,
                muster::domain::TaskState::Pending
            );
        }
    }
}

/// A CA and a certificate for 127.0.0.1 made with `openssl` in `dir`: (ca, cert, key).
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl on PATH (apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=muster-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.crt"), p("srv.crt"), p("srv.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_user_on_one_server_and_a_password_on_a_cluster() {
    let dir = tempfile::tempdir().expect("dir");
    let (ca, cert, key) = make_certs(dir.path());
    let tls_port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &tls_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", &dir.path().display().to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    let rcli = |args: &[&str]| {
        std::process::Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-p", &tls_port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli")
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&rcli(&["ping"]).stdout).contains("PONG") {
        assert!(
            Instant::now() < deadline,
            "TLS redis-server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // An ACL user that may do what muster does, and nothing about other users.
    let setuser = rcli(&[
        "ACL",
        "SETUSER",
        "muster",
        "on",
        ">a-long-password",
        "~*",
        "&*",
        "+@all",
        "-@dangerous",
        "+config|get",
        "+info",
        "+script",
        "+flushall",
    ]);
    assert!(String::from_utf8_lossy(&setuser.stdout).contains("OK"));
    let _ = rcli(&["ACL", "SETUSER", "default", "off"]);

    let url = format!("rediss://muster:a-long-password@127.0.0.1:{tls_port}/");
    let port = free_port();
    let mut serve = std::process::Command::new(muster_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &url,
        ])
        .args(["--admin-token", ADMIN_TOKEN, "--namespace", &unique_ns()])
        .env("SSL_CERT_FILE", &ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("muster serve");
    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "serve over TLS ready", || async {
        let r = reqwest::get(format!("{base}/readyz")).await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    let api = Http::new(&base, Some(ADMIN_TOKEN));
    let t = api
        .submit(json!({ "kind": "k", "payload": { "over": "tls" } }))
        .await;
    assert_eq!(api.task(&t.id).await.payload, json!({ "over": "tls" }));
    let _ = serve.kill();
    let _ = serve.wait();

    // Untrusted certificate, wrong password: one line, exit 1, no retry loop.
    for (env_ca, u, says) in [
        (false, url.clone(), "certificate"),
        (
            true,
            format!("rediss://muster:wrong@127.0.0.1:{tls_port}/"),
            "auth",
        ),
    ] {
        let mut cmd = std::process::Command::new(muster_bin());
        cmd.args(["doctor", "--redis-url", &u, "--namespace", "x"]);
        cmd.env_remove("SSL_CERT_FILE");
        if env_ca {
            cmd.env("SSL_CERT_FILE", &ca);
        }
        let out = cmd.output().expect("doctor");
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert_eq!(out.status.code(), Some(1), "{u}: {err}");
        assert!(err.contains(says), "{u}: {err}");
        assert!(
            !err.contains("a-long-password") && !err.contains("wrong@"),
            "the password is redacted: {err}"
        );
    }
    let _ = redis.kill();
    let _ = redis.wait();

    // A cluster whose nodes require a password: the seed URLs carry it.
    let extra: Vec<String> = [
        "--requirepass",
        "cluster-pass",
        "--masterauth",
        "cluster-pass",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let cluster = TestCluster::start_with(3, 0, &extra, Some("cluster-pass"));
    let seeds = cluster
        .nodes
        .iter()
        .map(|n| format!("redis://:cluster-pass@127.0.0.1:{}", n.port))
        .collect::<Vec<_>>()
        .join(",");
    let ns = unique_ns();
    let store = muster::store::Store::connect_to(
        &muster::store::RedisTarget::Cluster(muster::store::RedisTarget::list(&seeds)),
        &ns,
        Duration::from_secs(3),
    )
    .await
    .expect("cluster with a password");
    store.prepare().await.expect("prepare on the cluster");
    let out = doctor_cluster(&seeds, &ns);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = seeds.replace("cluster-pass", "nope");
    let out = doctor_cluster(&bad, &ns);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_acks_a_write_answers_only_once_a_replica_has_it_and_503_while_none_is_there()
{
    let primary = Node::start(&[]);
    let mut replica = Node::start(&[
        "--replicaof".into(),
        "127.0.0.1".into(),
        primary.port.to_string(),
    ]);
    // In sync: the replica's link is up and it acknowledges a write (WAIT 1).
    eventually(Duration::from_secs(20), "the replica in sync", || async {
        let link = cli(replica.port, &["info", "replication"]);
        let acked = cli(primary.port, &["wait", "1", "200"]);
        (link.contains("master_link_status:up") && acked.trim() == "1").then_some(())
    })
    .await;
    let ns = unique_ns();
    let app = spawn_app_target(
        muster::store::RedisTarget::Standalone(primary.url()),
        &ns,
        1,
    )
    .await;
    let t = app.api.submit(json!({ "kind": "k", "payload": 1 })).await;
    // What the primary acknowledged, the replica has.
    let on_replica = cli(
        replica.port,
        &["hget", &app.store.keys.task("default", &t.id), "state"],
    );
    assert_eq!(on_replica.trim(), "pending");

    replica.kill9();
    eventually(
        Duration::from_secs(10),
        "the primary sees no replica",
        || async {
            let info = cli(primary.port, &["info", "replication"]);
            info.contains("connected_slaves:0").then_some(())
        },
    )
    .await;
    let r = app
        .api
        .post("/v1/tasks", &json!({ "kind": "k", "payload": 2 }))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());

    replica.restart();
    let ok = eventually(
        Duration::from_secs(30),
        "writes acknowledged again",
        || async {
            let r = app
                .api
                .post("/v1/tasks", &json!({ "kind": "k", "payload": 3 }))
                .await;
            (r.status == 201).then_some(r)
        },
    )
    .await;
    let id = ok.json::<muster::domain::Task>().id;
    let on_replica = cli(
        replica.port,
        &["hget", &app.store.keys.task("default", &id), "state"],
    );
    assert_eq!(on_replica.trim(), "pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_of_a_live_primary_muster_writes_to_the_new_one_without_a_restart()
 {
    let set = TestSentinels::start();
    let app = spawn_app_target(set.target(), &unique_ns(), 0).await;
    let before = app.api.submit(json!({ "kind": "k", "payload": 1 })).await;
    let old = set.primary_port().expect("a primary");
    let bkey = app.store.keys.task("default", &before.id);
    // (Replication is asynchronous: the failover below would lose it unless the replica
    // has it; that loss is --replica-acks' business, not this test's.)
    eventually(
        Duration::from_secs(20),
        "the replica has the first task",
        || async {
            (cli(set.data[1].port, &["hget", &bkey, "state"]).trim() == "pending").then_some(())
        },
    )
    .await;
    // A planned failover: the old primary lives on as a replica (writes there: READONLY).
    let out = cli(set.sentinels[0].port, &["sentinel", "failover", "mymaster"]);
    assert!(out.contains("OK"), "{out}");
    eventually(
        Duration::from_secs(30),
        "the sentinels name the replica",
        || async { set.primary_port().filter(|p| *p != old) },
    )
    .await;
    // Within a second or so of the Sentinels naming it, muster writes to the new one.
    let new = set.primary_port().expect("a primary");
    let named_at = Instant::now();
    eventually(
        Duration::from_secs(10),
        "a submission on the new primary",
        || async {
            let r = app
                .api
                .post("/v1/tasks", &json!({ "kind": "k", "payload": 2 }))
                .await;
            assert!(
                r.status == 201 || r.status == 503,
                "{}: {}",
                r.status,
                r.text
            );
            if r.status != 201 {
                return None;
            }
            let t = r.json::<muster::domain::Task>();
            let key = app.store.keys.task("default", &t.id);
            (cli(new, &["hget", &key, "state"]).trim() == "pending").then_some(())
        },
    )
    .await;
    eprintln!(
        "writes reached the new primary {:?} after the sentinels named it",
        named_at.elapsed()
    );
    assert_eq!(
        app.api.task(&before.id).await.payload,
        json!(1),
        "the earlier task is there"
    );
}

/// Moves `slot` from the primary on `src` to the one on `dst` the way `redis-cli
/// --cluster reshard` does (IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE on
/// every primary), pausing between batches so that traffic meets the half-moved slot.
fn move_slot(slot: u16, src: u16, dst: u16, others: &[u16]) {
    let id = |p: u16| cli(p, &["cluster", "myid"]).trim().to_string();
    let (src_id, dst_id) = (id(src), id(dst));
    let s = slot.to_string();
    assert!(cli(dst, &["cluster", "setslot", &s, "importing", &src_id]).contains("OK"));
    assert!(cli(src, &["cluster", "setslot", &s, "migrating", &dst_id]).contains("OK"));
    loop {
        let keys: Vec<String> = cli(src, &["cluster", "getkeysinslot", &s, "5"])
            .lines()
            .map(str::to_string)
            .filter(|k| !k.is_empty())
            .collect();
        if keys.is_empty() {
            break;
        }
        let mut args: Vec<&str> = vec!["migrate", "127.0.0.1"];
        let dport = dst.to_string();
        args.push(&dport);
        args.extend(["", "0", "5000", "KEYS"]);
        args.extend(keys.iter().map(String::as_str));
        let out = cli(src, &args);
        assert!(
            out.contains("OK") || out.contains("NOKEY"),
            "MIGRATE: {out}"
        );
        std::thread::sleep(Duration::from_millis(30));
    }
    for p in [dst, src].iter().chain(others) {
        assert!(cli(*p, &["cluster", "setslot", &s, "node", &dst_id]).contains("OK"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_a_queues_slot_while_tasks_flow_loses_nothing_and_leaves_nothing_stuck() {
    let cluster = TestCluster::start(3, 0);
    let ns = unique_ns();
    let app = spawn_app_target(cluster.target(), &ns, 0).await;
    let queue = "moving";
    let src_i = cluster.primary_of(&format!("{ns}:{{{queue}}}:pending"));
    let src = cluster.nodes[src_i].port;
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.port).collect();
    let dst = *ports.iter().find(|p| **p != src).expect("another primary");
    let others: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|p| *p != src && *p != dst)
        .collect();
    let slot: u16 = cli(src, &["cluster", "keyslot", queue])
        .trim()
        .parse()
        .expect("slot");
    let mut agents = vec![
        spawn_agent_process(&[&app.url], &agent_args("m1", &[queue])),
        spawn_agent_process(&[&app.url], &agent_args("m2", &[queue])),
    ];
    let moved = Arc::new(std::sync::Mutex::new(false));
    let m2 = moved.clone();
    let tally = submit_through(&app.api, 1500, &[queue], move || {
        // Half submitted (many done, some running, some pending): move the slot while
        // the other half comes and the agents work.
        std::thread::spawn(move || {
            move_slot(slot, src, dst, &others);
            *m2.lock().unwrap() = true;
        });
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !*moved.lock().unwrap() {
        assert!(Instant::now() < deadline, "the slot move did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        tally.other.is_empty(),
        "answers other than 201/503: {:?}",
        &tally.other[..tally.other.len().min(5)]
    );
    eprintln!(
        "resharding: {} answers were 503 while the slot moved",
        tally.unavailable
    );
    assert_eq!(tally.acked.len(), 1500);
    wait_all_terminal(&app, &tally.acked, Duration::from_secs(120)).await;
    assert_eq!(
        cli(src, &["cluster", "countkeysinslot", &slot.to_string()]).trim(),
        "0",
        "every key of the queue left the old primary"
    );
    let mut c = E2eConn::Cluster(
        Box::new(
            redis::cluster::ClusterClient::new(
                cluster.nodes.iter().map(|n| n.url()).collect::<Vec<_>>(),
            )
            .expect("client")
            .get_connection()
            .expect("cluster connection"),
        ),
        Vec::new(),
    );
    let (lost, twice) = audit(&app, &mut c, &tally.acked, &[queue]).await;
    assert!(lost.is_empty(), "lost: {}", lost.len());
    assert!(twice.is_empty(), "results accepted twice: {twice:?}");
    for a in &mut agents {
        a.kill9();
    }
    assert_doctor_clean(&app.store).await;
}
