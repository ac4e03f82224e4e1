//! Router tests with `oneshot`: the axum router of a built application, called in-process
//! (no socket), for validation, auth and the problem+json shape of every refusal. Each
//! case names what it sends and the status and `code` it must get; nothing may be stored
//! by a refused request (checked by the namespace's key count).

use crate::helpers::shared_redis;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<&'static str>,
    content_type: Option<&'static str>,
    body: &'static str,
    status: u16,
    code: &'static str,
}

const ADMIN: &str = "router-admin-0123456789abcdef";
const READ: &str = "router-read-0123456789abcdef";
const SUBMIT: &str = "router-submit-0123456789abcdef";

#[tokio::test]
async fn the_router_refuses_bad_requests_with_problem_json_and_stores_nothing() {
    let redis = shared_redis();
    let mut cfg = muster::config::Config::new("127.0.0.1:0", redis.url());
    cfg.namespace = format!("router{}", std::process::id());
    cfg.admin_token = Some(ADMIN.into());
    cfg.tokens = vec![
        (muster::domain::roles::Role::Read, READ.into()),
        (muster::domain::roles::Role::Submit, SUBMIT.into()),
    ];
    let app = muster::startup::Application::build(cfg.clone())
        .await
        .expect("build");
    let router = muster::api::router(app.state().clone());
    let json = Some("application/json");
    let cases = [
        Case {
            name: "no token",
            method: "GET",
            path: "/v1/queues",
            token: None,
            content_type: None,
            body: "",
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "unknown token",
            method: "GET",
            path: "/v1/queues",
            token: Some("nope-0123456789abcdef"),
            content_type: None,
            body: "",
            status: 401,
            code: "unauthorized",
        },
        Case {
            name: "read token submits",
            method: "POST",
            path: "/v1/tasks",
            token: Some(READ),
            content_type: json,
            body: r#"{"kind":"k"}"#,
            status: 403,
            code: "forbidden",
        },
        Case {
            name: "read token, malformed body: 403 first",
            method: "POST",
            path: "/v1/tasks",
            token: Some(READ),
            content_type: json,
            body: "{",
            status: 403,
            code: "forbidden",
        },
        Case {
            name: "submit token changes a queue",
            method: "PUT",
            path: "/v1/queues/q",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"{"weight":2}"#,
            status: 403,
            code: "forbidden",
        },
        Case {
            name: "malformed JSON",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: "{\"kind\":",
            status: 400,
            code: "malformed_json",
        },
        Case {
            name: "not JSON",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: Some("text/plain"),
            body: r#"{"kind":"k"}"#,
            status: 415,
            code: "unsupported_media_type",
        },
        Case {
            name: "an array body",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"["k"]"#,
            status: 422,
            code: "invalid_body",
        },
        Case {
            name: "unknown field",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"{"kind":"k","colour":1}"#,
            status: 422,
            code: "invalid_body",
        },
        Case {
            name: "priority out of range",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"{"kind":"k","priority":10}"#,
            status: 422,
            code: "invalid_task",
        },
        Case {
            name: "a kind with a bidi override",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: "{\"kind\":\"pay\u{202E}lyap\"}",
            status: 422,
            code: "invalid_task",
        },
        Case {
            name: "unknown dependency",
            method: "POST",
            path: "/v1/tasks",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"{"kind":"k","depends_on":["01J9ZV7Q5X7M3S1RZ0B6H8K2QW.q"]}"#,
            status: 409,
            code: "unknown_dependency",
        },
        Case {
            name: "empty batch",
            method: "POST",
            path: "/v1/tasks/batch",
            token: Some(SUBMIT),
            content_type: json,
            body: r#"{"tasks":[]}"#,
            status: 422,
            code: "empty_batch",
        },
        Case {
            name: "unknown task",
            method: "GET",
            path: "/v1/tasks/01J9ZV7Q5X7M3S1RZ0B6H8K2QW.q",
            token: Some(READ),
            content_type: None,
            body: "",
            status: 404,
            code: "not_found",
        },
        Case {
            name: "unknown batch",
            method: "GET",
            path: "/v1/batches/01J9ZV7Q5X7M3S1RZ0B6H8K2QW",
            token: Some(READ),
            content_type: None,
            body: "",
            status: 404,
            code: "not_found",
        },
        Case {
            name: "no such route",
            method: "GET",
            path: "/v1/nothing",
            token: Some(READ),
            content_type: None,
            body: "",
            status: 404,
            code: "not_found",
        },
        Case {
            name: "wrong method",
            method: "DELETE",
            path: "/v1/queues",
            token: Some(ADMIN),
            content_type: None,
            body: "",
            status: 405,
            code: "method_not_allowed",
        },
    ];
    let mut conn = redis::Client::open(redis.url().as_str())
        .expect("url")
        .get_connection()
        .expect("redis");
    let pattern = format!("{}:*", cfg.namespace);
    let keys = |c: &mut redis::Connection| -> usize {
        redis::cmd("KEYS")
            .arg(&pattern)
            .query::<Vec<String>>(c)
            .expect("keys")
            .len()
    };
    let before = keys(&mut conn);
    for c in cases {
        let mut req = Request::builder().method(c.method).uri(c.path);
        if let Some(t) = c.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(ct) = c.content_type {
            req = req.header("content-type", ct);
        }
        let res = router
            .clone()
            .oneshot(req.body(Body::from(c.body)).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let content_type = res.headers().get("content-type").cloned();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        let problem: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {bytes:?}", c.name));
        assert_eq!(
            status,
            StatusCode::from_u16(c.status).unwrap(),
            "{}: {problem}",
            c.name
        );
        assert_eq!(
            content_type.as_ref().and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{}",
            c.name
        );
        assert_eq!(problem["code"], c.code, "{}: {problem}", c.name);
        assert_eq!(problem["status"], c.status, "{}", c.name);
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}: a refusal explains itself: {problem}",
            c.name
        );
    }
    assert_eq!(
        keys(&mut conn),
        before,
        "a refused request stored something"
    );
}
