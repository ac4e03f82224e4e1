//! The web console (`/ui/`) in a real headless Chromium, driven over WebDriver
//! (Debian's `chromium` + `chromium-driver`, through fantoccini): sign in, live queue
//! counts, cancelling a task and draining a node from their pages, the human workbench
//! (claim, form, Ctrl+Enter, hand back), and a read-only token that sees no action.
//! The tests skip with a loud message when Chromium is missing, except under CI, where
//! `scripts/ensure-chromium.sh` (run by `scripts/test.sh`) installs it. One browser at a
//! time: the machine has two cores.

use crate::support::{SecApp, e2e_redis, free_port, spawn_sec_app};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One browser at a time across the tests of this binary.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// A chromedriver (in its own process group, killed with its Chromium on drop) and a
/// WebDriver session on a headless Chromium.
struct Browser {
    c: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    base: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Starts chromedriver and Chromium, or says loudly why not (`None`: skip). Under CI a
/// missing browser fails the test instead.
async fn browser(base: &str) -> Option<Browser> {
    let chromium = which("chromium").or_else(|| which("chromium-browser"));
    let driver = which("chromedriver");
    let (Some(chromium), Some(driver)) = (chromium, driver) else {
        let msg = "chromium and/or chromedriver not found: install them with \
                   `sh scripts/ensure-chromium.sh` (apt-get install chromium chromium-driver)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPING THE WEB CONSOLE TESTS: {msg} !!!!!!!!!!\n");
        return None;
    };
    let port = free_port();
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver")
    };
    let profile = tempfile::tempdir().expect("profile dir");
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1360,1080", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let c = loop {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    Some(Browser {
        c,
        driver: child,
        _profile: profile,
        base: base.to_string(),
    })
}

impl Browser {
    async fn goto(&self, hash: &str) {
        self.c
            .goto(&format!("{}/ui/{hash}", self.base))
            .await
            .expect("goto");
    }

    /// The first element matching `css`, waiting for it up to 30 s (CI runs the whole
    /// suite at once on two cores).
    async fn find(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css:?} appeared");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn text_until(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        loop {
            if let Ok(e) = self.c.find(Locator::Css(css)).await
                && let Ok(t) = e.text().await
            {
                if ok(t.trim()) {
                    return t;
                }
                last = t;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} never showed {what} (last text {last:?})"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    async fn text_is(&self, css: &str, want: &str) {
        self.text_until(css, want, |t| t == want).await;
    }

    /// Clicks the element matching `css`, finding it again if the page redrew it.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let e = self.find(css).await;
            match e.click().await {
                Ok(()) => return,
                Err(err) => assert!(Instant::now() < deadline, "could not click {css:?}: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn count(&self, css: &str) -> usize {
        self.c
            .find_all(Locator::Css(css))
            .await
            .expect("find_all")
            .len()
    }

    /// Signs in on the sign-in form and waits for the role badge.
    async fn sign_in(&self, token: &str, role: &str) {
        self.goto("").await;
        self.find("#token")
            .await
            .send_keys(token)
            .await
            .expect("type token");
        self.find("#signin-submit")
            .await
            .click()
            .await
            .expect("sign in");
        self.text_is("#role", role).await;
    }

    /// Saves a screenshot as `$MUSTER_UI_SHOTS/<name>.png` when that is set (to look at
    /// the pages while changing them).
    async fn shot(&self, name: &str) {
        if let Some(dir) = std::env::var_os("MUSTER_UI_SHOTS") {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let png = self.c.screenshot().await.expect("screenshot");
            std::fs::create_dir_all(&dir).expect("shots dir");
            std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).expect("save shot");
        }
    }

    async fn close(self) {
        let c = self.c.clone();
        let _ = c.close().await;
        drop(self);
    }
}

async fn send(
    app: &SecApp,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = app.http.request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

async fn submit(app: &SecApp, body: Value) -> String {
    let (status, v) = send(
        app,
        &app.admin,
        reqwest::Method::POST,
        "/v1/tasks",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "submit: {v}");
    v["id"].as_str().expect("id").to_string()
}

/// Heartbeats for a node every 200 ms until dropped (test nodes go offline otherwise).
struct KeepAlive(tokio::task::JoinHandle<()>);

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn keep_alive(app: &SecApp, node: &str, token: &str) -> KeepAlive {
    let (http, url, token) = (
        app.http.clone(),
        app.url(&format!("/v1/nodes/{node}/heartbeat")),
        token.to_string(),
    );
    KeepAlive(tokio::spawn(async move {
        loop {
            let _ = http.post(&url).bearer_auth(&token).send().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }))
}

async fn app() -> SecApp {
    spawn_sec_app(&e2e_redis().url(), |c| {
        c.heartbeat_interval = Duration::from_millis(500);
        if crate::support::on_cluster() {
            c.redis_target = Some(crate::support::e2e_target());
        }
    })
    .await
}

/// Reports an outcome with a node token.
async fn report(app: &SecApp, node_token: &str, task: &str, lease: &str, ok: bool) {
    let (path, body) = if ok {
        (
            format!("/v1/tasks/{task}/complete"),
            json!({"lease_token": lease, "result": {"ok": true}}),
        )
    } else {
        (
            format!("/v1/tasks/{task}/fail"),
            json!({"lease_token": lease, "error": "bad input", "retryable": false}),
        )
    };
    let (status, v) = send(app, node_token, reqwest::Method::POST, &path, Some(body)).await;
    assert_eq!(status, 200, "report {task}: {v}");
}

#[tokio::test]
async fn the_console_is_served_by_muster_and_the_role_travels_in_a_header() {
    let app = app().await;
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = plain.get(app.url("/")).send().await.expect("get /");
    assert_eq!(r.status().as_u16(), 303, "/ redirects");
    assert_eq!(r.headers()["location"], "/ui/");
    let r = plain.get(app.url("/ui/")).send().await.expect("get /ui/");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(r.text().await.unwrap().contains("/ui/app.js"));
    for (path, ct) in [
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let r = plain.get(app.url(path)).send().await.expect("asset");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with(ct)
        );
    }
    let r = plain
        .get(app.url("/ui/nope.js"))
        .send()
        .await
        .expect("asset");
    assert_eq!(r.status().as_u16(), 404);
    // The console's pages are not JSON API: they stay out of the OpenAPI document.
    let spec: Value = plain
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().expect("paths");
    assert!(paths.keys().all(
        |p| p.starts_with("/v1/") || ["/healthz", "/readyz", "/metrics"].contains(&p.as_str())
    ));

    // X-Muster-Role on authenticated answers, 403s included; none without a token.
    let role = |r: &reqwest::Response| {
        r.headers()
            .get("x-muster-role")
            .map(|v| v.to_str().unwrap().to_string())
    };
    for (token, want) in [
        (&app.admin, "admin"),
        (&app.read, "read"),
        (&app.submit, "submit"),
        (&app.agent, "agent"),
    ] {
        let r = plain
            .get(app.url("/v1/queues"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(role(&r).as_deref(), Some(want), "status {}", r.status());
    }
    let r = plain
        .post(app.url("/v1/queues/q/pause"))
        .bearer_auth(&app.read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_eq!(role(&r).as_deref(), Some("read"));
    let (node, node_token) = app.register_node("n", &["q"]).await;
    let r = plain
        .post(app.url(&format!("/v1/nodes/{node}/heartbeat")))
        .bearer_auth(&node_token)
        .send()
        .await
        .unwrap();
    assert_eq!(role(&r).as_deref(), Some("node"));
    let r = plain.get(app.url("/v1/queues")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(role(&r), None);
    let r = plain
        .get(app.url("/v1/queues"))
        .bearer_auth("nope-nope-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(role(&r), None);
}

#[tokio::test]
async fn signed_in_the_console_shows_queue_counts_change_as_tasks_complete() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            submit(
                &app,
                json!({"kind": "resize", "queue": "images", "payload": {"n": i}}),
            )
            .await,
        );
    }
    for i in 0..3 {
        submit(
            &app,
            json!({"kind": "send", "queue": "emails", "payload": {"n": i}}),
        )
        .await;
    }
    for i in 0..3 {
        submit(
            &app,
            json!({"kind": "thumb", "queue": "thumbnails", "payload": {"n": i}}),
        )
        .await;
    }
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.admin, "admin").await;
    b.goto("#/queues").await;
    b.text_is(r#"tr[data-queue="images"] td[data-count="pending"]"#, "6")
        .await;
    b.text_is(r#"tr[data-queue="images"] td[data-count="succeeded"]"#, "0")
        .await;

    // A machine node takes every image task: 4 succeed, 1 fails, 1 keeps running.
    let (node, token) = app.register_node("worker-1", &["images", "emails"]).await;
    let _beat = keep_alive(&app, &node, &token);
    let (gpu, gpu_token) = app.register_node("gpu-1", &["thumbnails"]).await;
    let _beat_gpu = keep_alive(&app, &gpu, &gpu_token);
    let leases = app.lease_n(&node, &token, 9, Duration::from_secs(10)).await;
    assert_eq!(leases.len(), 9);
    let images: Vec<_> = leases
        .iter()
        .filter(|(id, _)| id.ends_with(".images"))
        .collect();
    for (i, (task, lease)) in images.iter().enumerate().take(5) {
        report(&app, &token, task, lease, i != 2).await;
    }
    for (task, lease) in leases
        .iter()
        .filter(|(id, _)| id.ends_with(".emails"))
        .take(2)
    {
        report(&app, &token, task, lease, true).await;
    }
    b.text_is(r#"tr[data-queue="images"] td[data-count="succeeded"]"#, "4")
        .await;
    b.text_is(r#"tr[data-queue="images"] td[data-count="failed"]"#, "1")
        .await;
    b.text_is(r#"tr[data-queue="images"] td[data-count="running"]"#, "1")
        .await;
    b.text_is(r#"tr[data-queue="images"] td[data-count="pending"]"#, "0")
        .await;
    b.shot("queues").await;

    // The overview: live counts from the event stream, the chart, depths, nodes.
    b.goto("#/overview").await;
    b.text_is("#card-ok .v", "6").await;
    b.text_is("#card-failed .v", "1").await;
    b.text_is("#card-nodes .v", "2").await;
    b.text_is(
        r#"#depth-table tr[data-queue="emails"] td[data-count="succeeded"]"#,
        "2",
    )
    .await;
    assert!(
        b.count("#throughput rect.ok").await >= 1,
        "the chart has a throughput bar"
    );
    // Completing one more moves the overview without a reload (SSE).
    let (task, lease) = images[5];
    report(&app, &token, task, lease, true).await;
    b.text_is("#card-ok .v", "7").await;
    b.text_is("#live", "live").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = b.c.screenshot().await.expect("screenshot");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/img/overview.png");
    std::fs::create_dir_all(path.parent().unwrap()).expect("docs/img");
    std::fs::write(&path, &png).expect("save the screenshot");
    b.close().await;
}

#[tokio::test]
async fn an_admin_cancels_a_task_from_its_page() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let id = submit(
        &app,
        json!({"kind": "report", "queue": "ui-cancel", "payload": {"month": "2026-10"}}),
    )
    .await;
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.admin, "admin").await;
    b.goto(&format!("#/task/{id}")).await;
    b.text_is("#task-state", "pending").await;
    assert!(
        b.find("#task-fields")
            .await
            .text()
            .await
            .unwrap()
            .contains(&id)
    );
    assert_eq!(
        b.count(r#"button[data-action="retry"]"#).await,
        0,
        "no retry for a pending task"
    );
    b.click(r#"button[data-action="cancel"]"#).await;
    b.text_is("#task-state", "cancelled").await;
    assert_eq!(app.task(&id).await["state"], "cancelled");
    // The page now offers what fits a cancelled task.
    b.find(r#"button[data-action="retry"]"#).await;
    b.find(r#"button[data-action="delete"]"#).await;
    assert_eq!(b.count(r#"button[data-action="cancel"]"#).await, 0);
    b.shot("task").await;
    // Its history came from the event stream.
    b.text_until("#main", "the cancel event", |t| {
        t.contains("task.cancelled")
    })
    .await;
    b.close().await;
}

#[tokio::test]
async fn an_admin_drains_a_node_from_the_nodes_page() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let (node, token) = app.register_node("worker-drain", &["ui-drain"]).await;
    let _beat = keep_alive(&app, &node, &token);
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.admin, "admin").await;
    b.goto("#/nodes").await;
    let row = format!(r#"tr[data-node="{node}"]"#);
    b.text_is(&format!("{row} td[data-field=status]"), "active")
        .await;
    b.click(&format!(r#"{row} button[data-action="drain"]"#))
        .await;
    b.text_is(&format!("{row} td[data-field=status]"), "draining")
        .await;
    b.shot("nodes").await;
    let (status, v) = send(
        &app,
        &app.admin,
        reqwest::Method::GET,
        &format!("/v1/nodes/{node}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["status"], "draining");
    // The node hears it on its next heartbeat.
    let (_, hb) = send(
        &app,
        &token,
        reqwest::Method::POST,
        &format!("/v1/nodes/{node}/heartbeat"),
        None,
    )
    .await;
    assert_eq!(hb["status"], "draining");
    b.close().await;
}

#[tokio::test]
async fn a_person_claims_a_human_task_and_submits_the_form_with_ctrl_enter() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let (status, _) = send(
        &app,
        &app.admin,
        reqwest::Method::PUT,
        "/v1/queues/labels",
        Some(json!({"human_only": true})),
    )
    .await;
    assert_eq!(status, 200);
    let schema = json!({
        "type": "object",
        "required": ["label"],
        "properties": {
            "label": {"type": "string", "enum": ["cat", "dog", "neither"], "title": "What is it?"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "count": {"type": "integer"},
            "clear": {"type": "boolean", "title": "Clear picture"},
            "note": {"type": "string"}
        }
    });
    let pixel = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    let first = submit(&app, json!({
        "kind": "label-image", "queue": "labels", "timeout_ms": 60000, "result_schema": schema,
        "payload": {"text": "Is this a cat or a dog?", "image_url": pixel,
                    "html": "<p>Photo <b>#17</b><script>parent.document.title='pwned'</script></p>"}
    })).await;
    // A machine node on the same queue is never pushed a human-only task.
    let (machine, _) = app.register_node("machine", &["labels"]).await;

    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.admin, "admin").await;
    b.goto("#/work").await;
    let q = b.find(r#"#wb-queues input[data-queue="labels"]"#).await;
    if !q.is_selected().await.unwrap() {
        q.click().await.unwrap();
    }
    b.find("#wb-name").await.send_keys("Ada").await.unwrap();
    b.click("#wb-start").await;
    b.click("#wb-claim").await;
    b.text_until("#wb-text", "the task text", |t| t.contains("cat or a dog"))
        .await;
    let task_el = b.find("#wb-task").await;
    assert_eq!(
        task_el.attr("data-task").await.unwrap().as_deref(),
        Some(first.as_str())
    );
    assert_eq!(
        b.find("#wb-html")
            .await
            .attr("sandbox")
            .await
            .unwrap()
            .as_deref(),
        Some("")
    );
    assert!(
        b.find("#wb-image")
            .await
            .attr("src")
            .await
            .unwrap()
            .unwrap()
            .starts_with("data:image/png")
    );
    assert_ne!(
        b.c.title().await.unwrap(),
        "pwned",
        "the task's HTML ran no script"
    );
    b.shot("workbench").await;
    // The task's HTML is shown (in its sandboxed frame), without its script.
    b.find("#wb-html")
        .await
        .enter_frame()
        .await
        .expect("enter the frame");
    b.text_is("b", "#17").await;
    b.c.enter_parent_frame().await.expect("leave the frame");

    // The human node holds the task; the machine node got nothing.
    let t = app.task(&first).await;
    assert_eq!(t["state"], "running");
    let human_node = t["node"].as_str().unwrap().to_string();
    assert_ne!(human_node, machine);
    let (_, n) = send(
        &app,
        &app.admin,
        reqwest::Method::GET,
        &format!("/v1/nodes/{human_node}"),
        None,
    )
    .await;
    assert_eq!(
        (n["kind"].as_str(), n["name"].as_str()),
        (Some("human"), Some("Ada"))
    );

    // A second task waits: after the submit, the page claims it by itself.
    let second = submit(
        &app,
        json!({"kind": "label-image", "queue": "labels", "payload": {"text": "And this one?"}}),
    )
    .await;

    // A required field left empty is refused in the page, nothing is sent.
    b.click("#wb-submit").await;
    b.text_until("#wb-error", "the required-field message", |t| {
        t.contains("required")
    })
    .await;
    assert_eq!(app.task(&first).await["state"], "running");

    b.find("#wb-f-label")
        .await
        .select_by_value("1")
        .await
        .unwrap();
    b.find("#wb-f-confidence")
        .await
        .send_keys("0.9")
        .await
        .unwrap();
    b.click("#wb-f-clear").await;
    let note = b.find("#wb-f-note").await;
    note.send_keys("a sleepy dog").await.unwrap();
    let ctrl_enter = format!(
        "{}{}",
        char::from(fantoccini::key::Key::Control),
        char::from(fantoccini::key::Key::Enter)
    );
    note.send_keys(&ctrl_enter).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = app.task(&first).await;
        if t["state"] == "succeeded" || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(
        t["result"],
        json!({"label": "dog", "confidence": 0.9, "clear": true, "note": "a sleepy dog"})
    );
    assert_eq!(t["node"], human_node.as_str());

    // The next task arrived without a click; no schema: a JSON text area. Hand it back.
    b.text_until("#wb-text", "the second task", |t| {
        t.contains("And this one?")
    })
    .await;
    assert_eq!(
        b.find("#wb-task")
            .await
            .attr("data-task")
            .await
            .unwrap()
            .as_deref(),
        Some(second.as_str())
    );
    b.find("#wb-json").await;
    b.click("#wb-handback").await;
    b.find("#wb-claim").await;
    let t = app.task(&second).await;
    // A hand-back is a failed, retryable attempt: the task waits out its backoff and
    // returns to the queue (see docs/console.md).
    assert!(
        ["retrying", "pending"].contains(&t["state"].as_str().unwrap()),
        "{t}"
    );
    assert_eq!(t["error"], "handed back");
    assert_eq!(t["attempts"], 1);
    b.close().await;
}

#[tokio::test]
async fn a_read_only_token_sees_no_action_and_its_api_calls_get_403() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let id = submit(
        &app,
        json!({"kind": "report", "queue": "ro", "payload": {}}),
    )
    .await;
    let (node, _) = app.register_node("worker-ro", &["other"]).await;
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.read, "read").await;
    b.goto("#/queues").await;
    b.text_is(r#"tr[data-queue="ro"] td[data-count="pending"]"#, "1")
        .await;
    assert_eq!(
        b.count("button.action, input[data-field]").await,
        0,
        "queues page"
    );
    b.goto("#/nodes").await;
    b.find(&format!(r#"tr[data-node="{node}"]"#)).await;
    assert_eq!(b.count("button.action").await, 0, "nodes page");
    b.goto(&format!("#/task/{id}")).await;
    b.text_is("#task-state", "pending").await;
    assert_eq!(b.count("button.action").await, 0, "task page");
    b.goto("#/tasks?queue=ro").await;
    b.find(&format!(r#"tr[data-task="{id}"]"#)).await;
    assert_eq!(b.count("button.action").await, 0, "tasks page");
    b.shot("tasks-read-only").await;
    b.goto("#/work").await;
    b.find("#wb-denied").await;
    assert_eq!(b.count("#wb-start").await, 0);

    // What the page would do, the API refuses to this token.
    let status: Value = b
        .c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/v1/queues/ro/pause', {method: 'POST', headers: {Authorization: 'Bearer ' + sessionStorage.getItem('muster.token')}})
               .then((r) => done(r.status), () => done(0));",
            vec![],
        )
        .await
        .expect("fetch in the page");
    assert_eq!(status, json!(403));
    let m = reqwest::Method::POST;
    for (method, path, body) in [
        (m.clone(), "/v1/queues/ro/pause".to_string(), None),
        (
            reqwest::Method::PUT,
            "/v1/queues/ro".to_string(),
            Some(json!({"weight": 2})),
        ),
        (m.clone(), format!("/v1/tasks/{id}/cancel"), None),
        (m.clone(), format!("/v1/tasks/{id}/retry"), None),
        (reqwest::Method::DELETE, format!("/v1/tasks/{id}"), None),
        (m.clone(), format!("/v1/nodes/{node}/drain"), None),
        (reqwest::Method::DELETE, format!("/v1/nodes/{node}"), None),
        (
            m.clone(),
            "/v1/nodes".to_string(),
            Some(json!({"name": "me", "kind": "human", "queues": ["ro"]})),
        ),
    ] {
        let (status, v) = send(&app, &app.read, method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
    }
    assert_eq!(app.task(&id).await["state"], "pending", "nothing changed");
    b.close().await;
}

#[tokio::test]
async fn schedules_and_batches_show_their_fires_and_progress() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let (status, v) = send(
        &app,
        &app.admin,
        reqwest::Method::POST,
        "/v1/schedules",
        Some(
            json!({"name": "every-second", "cron": "* * * * * *", "timezone": "UTC",
                    "task": {"kind": "tick", "queue": "ticks"}}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, batch) = send(
        &app,
        &app.admin,
        reqwest::Method::POST,
        "/v1/batches",
        Some(
            json!({"tasks": [{"kind": "part", "queue": "parts"}, {"kind": "part", "queue": "parts"},
                              {"kind": "part", "queue": "parts"}]}),
        ),
    )
    .await;
    assert_eq!(status, 201, "{batch}");
    let batch_id = batch["id"].as_str().expect("batch id").to_string();
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.admin, "admin").await;
    b.goto("#/schedules").await;
    let row = r#"tr[data-schedule="every-second"]"#;
    b.text_until(row, "a fire", |t| t.contains("fired")).await;
    b.find(&format!(r#"{row} button[data-action="pause"]"#))
        .await;
    b.goto(&format!("#/batch/{batch_id}")).await;
    b.text_is("#batch-state", "running").await;
    b.text_is(r#"#batch-fields [data-count="unfinished"]"#, "3")
        .await;
    // Cancelling the children finishes the batch, live.
    let (_, page) = send(
        &app,
        &app.admin,
        reqwest::Method::GET,
        &format!("/v1/batches/{batch_id}/results"),
        None,
    )
    .await;
    for item in page["items"].as_array().expect("items") {
        let id = item["id"].as_str().expect("id");
        let (status, v) = send(
            &app,
            &app.admin,
            reqwest::Method::POST,
            &format!("/v1/tasks/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    b.text_is("#batch-state", "failed").await;
    b.text_is(r#"#batch-fields [data-count="cancelled"]"#, "3")
        .await;
    b.shot("batch").await;
    b.goto("#/batch/01ZZZZZZZZZZZZZZZZZZZZZZZZ").await;
    b.find("#not-available").await;
    b.close().await;
}

#[tokio::test]
async fn an_agent_token_works_on_human_tasks_without_reading_the_rest() {
    let _one = ONE_BROWSER.lock().await;
    let app = app().await;
    let (status, _) = send(
        &app,
        &app.admin,
        reqwest::Method::PUT,
        "/v1/queues/reviews",
        Some(json!({"human_only": true})),
    )
    .await;
    assert_eq!(status, 200);
    let id = submit(
        &app,
        json!({"kind": "review", "queue": "reviews", "payload": {"text": "Approve this change?"}}),
    )
    .await;
    let Some(b) = browser(&app.base).await else {
        return;
    };
    b.sign_in(&app.agent, "agent").await;
    // An agent token may not read queues: the console goes straight to the workbench,
    // asks for queue names, and hides the pages it could not show.
    b.find("#wb-queue-names")
        .await
        .send_keys("reviews")
        .await
        .unwrap();
    assert!(
        !b.find(r#"#nav a[data-page="queues"]"#)
            .await
            .is_displayed()
            .await
            .unwrap()
    );
    b.click("#wb-start").await;
    b.click("#wb-claim").await;
    b.text_is("#wb-text", "Approve this change?").await;
    // No result_schema: a JSON text area, submitted with Ctrl+Enter.
    let area = b.find("#wb-json").await;
    area.clear().await.unwrap();
    area.send_keys(r#"{"approved": false, "why": "no tests"}"#)
        .await
        .unwrap();
    let ctrl_enter = format!(
        "{}{}",
        char::from(fantoccini::key::Key::Control),
        char::from(fantoccini::key::Key::Enter)
    );
    area.send_keys(&ctrl_enter).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let t = loop {
        let t = app.task(&id).await;
        if t["state"] == "succeeded" || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(t["result"], json!({"approved": false, "why": "no tests"}));
    b.close().await;
}
