//! The client side of the CLI: commands that call any node's REST API
//! (`--api URL` or `PLEXI_API`, `--token` or `PLEXI_TOKEN`).

use anyhow::{bail, Context, Result};
use clap::Args;
use plexi_api::model::{HealthReport, NodeList};

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of any node's API.
    #[arg(
        long,
        env = "PLEXI_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Bearer token (read or admin).
    #[arg(long, env = "PLEXI_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    fn url(&self, path: &str) -> String {
        let base = self.api.trim_end_matches('/');
        if base.starts_with("http://") || base.starts_with("https://") {
            format!("{base}{path}")
        } else {
            format!("http://{base}{path}")
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let client = reqwest::Client::new();
        let mut req = client.get(self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.api))?;
        let status = res.status();
        if !status.is_success() {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            let msg = body["error"]["message"]
                .as_str()
                .unwrap_or("no error message");
            bail!(
                "{} {}: {msg}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
        }
        res.json().await.context("undecodable response")
    }
}

pub async fn nodes(api: &ApiArgs, json: bool) -> Result<()> {
    let list: NodeList = api.get("/api/v1/clustering/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:<9} {:<10} {:<10} {:>6} {:<22} PEER",
        "NODE", "STATUS", "VERSION", "REGION", "ZONE", "HB(s)", "API"
    );
    for n in list.nodes {
        println!(
            "{:<16} {:<8} {:<9} {:<10} {:<10} {:>6.1} {:<22} {}{}",
            n.node_id,
            n.status,
            n.version,
            n.region,
            n.zone,
            n.last_heartbeat_age_ms as f64 / 1000.0,
            n.api_address,
            n.peer_id,
            if n.is_local { " (answering)" } else { "" }
        );
    }
    Ok(())
}

pub async fn health(api: &ApiArgs, node_id: &str) -> Result<()> {
    let r: HealthReport = api
        .get(&format!("/api/v1/clustering/nodes/{node_id}/health"))
        .await?;
    println!(
        "{} ({}) {} healthy={} status={} uptime={}s source={}",
        r.node_id, r.peer_id, r.version, r.healthy, r.status, r.uptime_seconds, r.source
    );
    for c in r.checks {
        println!(
            "  [{}] {:<12} {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    Ok(())
}
