//! Fenced locks (`/v1/locks`): mutual exclusion, strictly increasing fences, holder-only
//! extend and release, expiry, input validation and roles.

use crate::support::{Http, assert_doctor_clean, register_node, spawn_app};
use muster::domain::coord::Lock;
use serde_json::json;
use std::time::Duration;

async fn release(api: &Http, name: &str, token: &str) -> crate::support::Resp {
    let rb = api
        .req(reqwest::Method::DELETE, &format!("/v1/locks/{name}"))
        .json(&json!({ "token": token }));
    api.send(rb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_acquirers_get_exactly_one_lock() {
    let app = spawn_app().await;
    let mut joins = Vec::new();
    for _ in 0..50 {
        let api = app.api.clone();
        joins.push(tokio::spawn(async move {
            api.post("/v1/locks/report.daily", &json!({ "ttl_ms": 30_000 }))
                .await
        }));
    }
    let mut won = Vec::new();
    let mut held = 0;
    for j in joins {
        let r = j.await.expect("join");
        match r.status {
            201 => won.push(r.json::<Lock>()),
            409 => {
                assert_eq!(r.problem(409), "lock_held");
                let secs: u64 = r
                    .header("retry-after")
                    .expect("Retry-After on 409")
                    .parse()
                    .expect("seconds");
                assert!((1..=30).contains(&secs), "Retry-After {secs}");
                held += 1;
            }
            s => panic!("unexpected status {s}: {}", r.text),
        }
    }
    assert_eq!(won.len(), 1, "exactly one acquirer wins");
    assert_eq!(held, 49);
    let lock = &won[0];
    assert_eq!(lock.fence, 1);
    assert_eq!(lock.name, "report.daily");
    assert!(lock.token.starts_with("1."), "{}", lock.token);
    assert_eq!(
        lock.token.len(),
        2 + 32,
        "128-bit random part: {}",
        lock.token
    );
    assert_doctor_clean(&app.store).await;
}

#[tokio::test]
async fn fences_increase_across_acquire_release_expire_and_acquire() {
    let app = spawn_app().await;
    let a: Lock = app
        .api
        .post("/v1/locks/res", &json!({ "ttl_ms": 10_000 }))
        .await
        .expect(201)
        .json();
    release(&app.api, "res", &a.token).await.expect(204);
    let b: Lock = app
        .api
        .post("/v1/locks/res", &json!({ "ttl_ms": 200 }))
        .await
        .expect(201)
        .json();
    assert!(b.fence > a.fence);
    // Expiry frees the lock by itself; the fence still goes up.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let c: Lock = app
        .api
        .post("/v1/locks/res", &json!({ "ttl_ms": 10_000 }))
        .await
        .expect(201)
        .json();
    assert!(c.fence > b.fence, "{} after {}", c.fence, b.fence);
    assert_eq!((a.fence, b.fence, c.fence), (1, 2, 3));
    // Another name has its own counter.
    let other: Lock = app
        .api
        .post("/v1/locks/other", &json!({ "ttl_ms": 10_000 }))
        .await
        .expect(201)
        .json();
    assert_eq!(other.fence, 1);
    assert_doctor_clean(&app.store).await;
}

#[tokio::test]
async fn extend_and_release_with_a_stale_or_wrong_token_change_nothing() {
    let app = spawn_app().await;
    let old: Lock = app
        .api
        .post("/v1/locks/db", &json!({ "ttl_ms": 150 }))
        .await
        .expect(201)
        .json();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cur: Lock = app
        .api
        .post("/v1/locks/db", &json!({ "ttl_ms": 20_000 }))
        .await
        .expect(201)
        .json();
    // The expired holder cannot extend nor release the new holder's lock.
    let r = app
        .api
        .post(
            "/v1/locks/db/extend",
            &json!({ "token": old.token, "ttl_ms": 60_000 }),
        )
        .await;
    assert_eq!(r.problem(409), "lock_not_held");
    let r = release(&app.api, "db", &old.token).await;
    assert_eq!(r.problem(409), "lock_not_held");
    // A well-formed token of the right fence but wrong randomness: same.
    let forged = format!("{}.{}", cur.fence, "0".repeat(32));
    assert_eq!(
        release(&app.api, "db", &forged).await.problem(409),
        "lock_not_held"
    );
    // Nothing changed: still held by `cur`, with its own expiry.
    let mut conn = crate::support::e2e_conn();
    let holder: String = redis::cmd("GET")
        .arg(app.store.keys.lock_holder("db"))
        .query(&mut conn)
        .expect("get");
    assert_eq!(holder, cur.token);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(app.store.keys.lock_holder("db"))
        .query(&mut conn)
        .expect("pttl");
    assert!(pttl <= 20_000 && pttl > 15_000, "pttl {pttl}");
    let r = app
        .api
        .post("/v1/locks/db", &json!({ "ttl_ms": 1000 }))
        .await;
    assert_eq!(r.problem(409), "lock_held");
    // The holder extends (new expiry) and releases.
    let ext: Lock = app
        .api
        .post(
            "/v1/locks/db/extend",
            &json!({ "token": cur.token, "ttl_ms": 60_000 }),
        )
        .await
        .expect(200)
        .json();
    assert_eq!((ext.fence, &ext.token), (cur.fence, &cur.token));
    assert!(ext.expires_at > cur.expires_at);
    release(&app.api, "db", &cur.token).await.expect(204);
    // Released twice: the second is not the holder any more.
    assert_eq!(
        release(&app.api, "db", &cur.token).await.problem(409),
        "lock_not_held"
    );
    assert_doctor_clean(&app.store).await;
}

#[tokio::test]
async fn bad_lock_requests_get_4xx_and_store_nothing() {
    let app = spawn_app().await;
    for (path, body, status) in [
        ("/v1/locks/a*b", json!({ "ttl_ms": 1000 }), 400),
        ("/v1/locks/a%20b", json!({ "ttl_ms": 1000 }), 400),
        ("/v1/locks/ok", json!({ "ttl_ms": 0 }), 422),
        ("/v1/locks/ok", json!({ "ttl_ms": -5 }), 422),
        ("/v1/locks/ok", json!({ "ttl_ms": 86_400_001_i64 }), 422),
        ("/v1/locks/ok", json!({ "ttl_ms": "soon" }), 422),
        ("/v1/locks/ok", json!({}), 422),
        ("/v1/locks/ok", json!({ "ttl_ms": 1000, "extra": 1 }), 422),
        (
            "/v1/locks/ok/extend",
            json!({ "token": "nope", "ttl_ms": 1000 }),
            422,
        ),
        ("/v1/locks/ok/extend", json!({ "ttl_ms": 1000 }), 422),
    ] {
        let r = app.api.post(path, &body).await;
        r.problem(status);
    }
    let r = app.api.post_raw("/v1/locks/ok", "{not json").await;
    r.problem(400);
    let mut conn = crate::support::e2e_conn();
    let keys = crate::support::ns_keys(&mut conn, &app.ns);
    assert!(
        keys.iter().all(|k| !k.contains("~lock")),
        "no lock key stored: {keys:?}"
    );
}

#[tokio::test]
async fn node_tokens_may_lock_and_read_tokens_may_not() {
    let app = spawn_app().await;
    let node = register_node(&app.api, "locker", &["q"], 1).await;
    let as_node = app.client(Some(&node.token));
    let l: Lock = as_node
        .post("/v1/locks/shared", &json!({ "ttl_ms": 5000 }))
        .await
        .expect(201)
        .json();
    release(&as_node, "shared", &l.token).await.expect(204);
    let anon = app.client(None);
    anon.post("/v1/locks/shared", &json!({ "ttl_ms": 5000 }))
        .await
        .problem(401);
}

/// Issue 16 item 3: a fence counter was a permanent key per lock name (500 names, 500
/// keys for ever). It now expires `LOCK_FENCE_KEEP_MS` after the lock's last expiry;
/// grants and extends push it on, so fences still increase while that matters.
#[tokio::test]
async fn fence_counters_expire_a_week_after_the_lock_and_grants_push_them_on() {
    use muster::domain::coord::LOCK_FENCE_KEEP_MS as KEEP;
    let app = spawn_app().await;
    let mut conn = crate::support::e2e_conn();
    let fence_key = app.store.keys.lock_fence("exp");
    let pttl = |conn: &mut crate::support::E2eConn| -> i64 {
        redis::cmd("PTTL")
            .arg(&fence_key)
            .query(conn)
            .expect("pttl")
    };
    let a: Lock = app
        .api
        .post("/v1/locks/exp", &json!({ "ttl_ms": 10_000 }))
        .await
        .expect(201)
        .json();
    let t = pttl(&mut conn);
    assert!(
        t > KEEP && t <= KEEP + 10_000,
        "fence counter PTTL {t}: expected the lock's TTL plus {KEEP}"
    );
    // An extend never leaves the counter expiring before the lock (plus the keep).
    let _: () = redis::cmd("PEXPIRE")
        .arg(&fence_key)
        .arg(60_000)
        .query(&mut conn)
        .expect("pexpire");
    app.api
        .post(
            "/v1/locks/exp/extend",
            &json!({ "token": a.token, "ttl_ms": 3_600_000 }),
        )
        .await
        .expect(200);
    let t = pttl(&mut conn);
    assert!(
        t > KEEP + 3_500_000,
        "extend did not push the counter on: {t}"
    );
    release(&app.api, "exp", &a.token).await.expect(204);
    // Still counting while it lives: the next grant is fence 2.
    let b: Lock = app
        .api
        .post("/v1/locks/exp", &json!({ "ttl_ms": 1_000 }))
        .await
        .expect(201)
        .json();
    assert_eq!(b.fence, 2);
    release(&app.api, "exp", &b.token).await.expect(204);
    assert_doctor_clean(&app.store).await;
    // Once the counter ran out (simulated), the name leaves no key and starts again.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&fence_key)
        .arg(1)
        .query(&mut conn)
        .expect("pexpire");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let keys = crate::support::ns_keys(&mut conn, &app.ns);
    assert!(
        keys.iter().all(|k| !k.contains("~lock:exp")),
        "a free lock whose counter expired left keys: {keys:?}"
    );
    let c: Lock = app
        .api
        .post("/v1/locks/exp", &json!({ "ttl_ms": 1_000 }))
        .await
        .expect(201)
        .json();
    assert_eq!(c.fence, 1);
}
