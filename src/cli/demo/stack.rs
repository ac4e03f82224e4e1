//! The demo's private stack: a redis-server (or a fresh namespace in `--redis-url`),
//! the control plane in-process, and `muster agent --builtin` child processes that die
//! with muster; [`Stack::shutdown`] stops it all in order.

use super::{DemoArgs, HEARTBEAT_MS, QUEUE, REAPER_MS};
use crate::cli::client::Explain as _;
use crate::cli::local::{self, ChildProc};
use crate::client::Client;
use crate::config::Config;
use anyhow::Context as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Timeout of the demo's calls (a page of results is a few MB of JSON).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the demo started; [`Stack::shutdown`] stops it in order.
#[derive(Default)]
pub(super) struct Stack {
    plane: local::LocalPlane,
    pub(super) agents: Vec<ChildProc>,
}

/// What [`Stack::start`] reports about the stack it started.
pub(super) struct Started {
    /// A client of the control plane with the admin token.
    pub(super) api: Client,
    /// The control plane's URL.
    pub(super) server_url: String,
    /// One line about the Redis in use.
    pub(super) redis_desc: String,
}

impl Stack {
    /// Starts Redis (unless `--redis-url`), the control plane and the agent processes,
    /// and waits until every agent has registered.
    pub(super) async fn start(
        &mut self,
        args: &DemoArgs,
        work: &WorkDir,
    ) -> anyhow::Result<Started> {
        let token = local::random_hex_token();
        let (redis_url, namespace) = self
            .plane
            .redis(
                args.redis_url.as_deref(),
                "muster-demo",
                &work.path.join("redis"),
                local::AOF_EVERYSEC,
            )
            .await?;
        let mut cfg = Config::new("127.0.0.1:0", redis_url.clone());
        cfg.namespace = namespace.clone();
        cfg.admin_token = Some(token.clone());
        cfg.heartbeat_interval = Duration::from_millis(HEARTBEAT_MS);
        cfg.reaper_interval = Duration::from_millis(REAPER_MS);
        let server_url = self.plane.serve(cfg).await?;
        for i in 1..=args.agents {
            let agent = spawn_agent(args, work, &server_url, &token, &format!("demo-agent-{i}"))?;
            self.agents.push(agent);
        }
        let api = Client::builder(&[&server_url])
            .token(Some(&token))
            .timeout(CALL_TIMEOUT)
            .build()
            .explain()?;
        self.wait_for_agents(&api, work).await?;
        let redis_desc = match &self.plane.redis {
            Some(r) => format!("private redis-server (pid {}, port {})", r.pid(), r.port()),
            None => format!("{redis_url} (namespace {namespace})"),
        };
        Ok(Started {
            api,
            server_url,
            redis_desc,
        })
    }

    /// Waits until every agent process has registered its node.
    async fn wait_for_agents(&mut self, api: &Client, work: &WorkDir) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for a in &mut self.agents {
                if let Some(status) = a.child.try_wait()? {
                    let log = std::fs::read_to_string(work.path.join(format!("{}.log", a.name)))
                        .unwrap_or_default();
                    let last = log
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("no output");
                    anyhow::bail!(
                        "agent {} exited at start ({status}): {}",
                        a.name,
                        last.trim()
                    );
                }
            }
            let nodes = api.nodes_list().await.explain()?.value;
            let up = self
                .agents
                .iter()
                .filter(|a| nodes.items.iter().any(|n| n.name == a.name))
                .count();
            if up == self.agents.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "only {up} of {} agents registered within 30s",
                    self.agents.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the agents (SIGTERM: they drain and deregister), then the control plane,
    /// removes the namespace (with `--redis-url`) and stops Redis.
    pub(super) async fn shutdown(&mut self) {
        let agents = std::mem::take(&mut self.agents);
        let stops = agents.into_iter().map(|mut a| async move {
            a.terminate(Duration::from_secs(10)).await;
        });
        futures::future::join_all(stops).await;
        self.plane.shutdown("demo").await;
    }
}

/// Starts one `muster agent --builtin` process, its log in the work directory; it is
/// killed when muster dies, however it dies.
fn spawn_agent(
    args: &DemoArgs,
    work: &WorkDir,
    server_url: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<ChildProc> {
    let exe = std::env::current_exe().context("cannot find the muster binary to start agents")?;
    let log = std::fs::File::create(work.path.join(format!("{name}.log")))?;
    let mut cmd = tokio::process::Command::new(&exe);
    local::die_with_muster(&mut cmd, libc::SIGKILL);
    let child = cmd
        .args([
            "agent",
            "--server",
            server_url,
            "--token",
            token,
            "--builtin",
            "--queue",
            QUEUE,
        ])
        .args([
            "--capacity",
            &args.capacity.to_string(),
            "--name",
            name,
            "--grace-secs",
            "5",
        ])
        .env("RUST_LOG", "warn")
        .env_remove("MUSTER_SERVER")
        .env_remove("MUSTER_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {} agent", exe.display()))?;
    let pid = child.id().unwrap_or(0);
    Ok(ChildProc {
        child,
        pid,
        name: name.to_string(),
    })
}

/// A temp directory removed on drop.
pub(super) struct WorkDir {
    pub(super) path: PathBuf,
}

impl WorkDir {
    pub(super) fn create() -> anyhow::Result<WorkDir> {
        let path =
            std::env::temp_dir().join(format!("muster-demo-{}", &local::random_hex_token()[..12]));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
