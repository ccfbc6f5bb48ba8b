//! `plexi nodes` (the cluster's members as any node sees them) and
//! `plexi health NODE` (one node's health checks, asked through any node).

use anyhow::Result;
use plexi_api::model::{HealthReport, NodeList};

use super::client::{encode_segment, ApiArgs};
use super::table::{Left, Right, Table};

pub async fn nodes(api: &ApiArgs, json: bool) -> Result<()> {
    let list: NodeList = api.get("/api/v1/clustering/nodes").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        ("NODE", Left),
        ("STATUS", Left),
        ("VERSION", Left),
        ("REGION", Left),
        ("ZONE", Left),
        ("HB(s)", Right),
        ("API", Left),
        ("PEER", Left),
    ]);
    for n in list.nodes {
        t.row([
            n.node_id.to_string(),
            n.status.to_string(),
            n.version,
            n.region,
            n.zone,
            format!("{:.1}", n.last_heartbeat_age_ms as f64 / 1000.0),
            n.api_address,
            format!(
                "{}{}",
                n.peer_id,
                if n.is_local { " (answering)" } else { "" }
            ),
        ]);
    }
    t.print();
    Ok(())
}

pub async fn health(api: &ApiArgs, node_id: &str) -> Result<()> {
    let r: HealthReport = api
        .get(&format!(
            "/api/v1/clustering/nodes/{}/health",
            encode_segment(node_id)
        ))
        .await?;
    println!(
        "{} ({}) {} healthy={} status={} uptime={}s source={}",
        r.node_id, r.peer_id, r.version, r.healthy, r.status, r.uptime_seconds, r.source
    );
    let mut t = Table::new(&[("CHECK", Left), ("NAME", Left), ("DETAIL", Left)])
        .indent("  ")
        .headless();
    for c in r.checks {
        t.row([
            format!("[{}]", if c.ok { "ok" } else { "FAIL" }),
            c.name,
            c.detail,
        ]);
    }
    t.print();
    Ok(())
}
