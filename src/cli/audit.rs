//! `plexi audit`: the audit log of every change, newest first, and whether
//! its hash chains verify on the answering node.

use anyhow::Result;
use clap::Args;
use plexi_api::model::AuditList;
use reqwest::Method;

use super::client::ApiArgs;
use super::table::{dash, Left, Table};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// How many entries, newest first (1-10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

/// One line of JSON, cut to `max` characters.
fn short_json(v: &serde_json::Value, max: usize) -> String {
    if v.is_null() || v.as_object().is_some_and(|o| o.is_empty()) {
        return String::new();
    }
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

pub async fn audit(api: &ApiArgs, a: &AuditArgs) -> Result<()> {
    let list: AuditList = api
        .call(
            Method::GET,
            "/api/v1/clustering/audit",
            &[("limit", a.limit.to_string())],
            None,
        )
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let mut t = Table::new(&[
        ("AT", Left),
        ("NODE", Left),
        ("ACTOR", Left),
        ("ACTION", Left),
        ("OPERATION", Left),
        ("DETAIL", Left),
    ]);
    for e in &list.entries {
        t.row([
            e.at.clone(),
            e.node_id.to_string(),
            e.actor.clone(),
            e.action.to_string(),
            dash(&e.operation_id).to_string(),
            short_json(&e.detail, 60),
        ]);
    }
    t.print();
    if list.chains_verified {
        let n = list.entries.len();
        println!(
            "{n} {}; hash chains verified",
            if n == 1 { "entry" } else { "entries" }
        );
    } else {
        eprintln!("WARNING: an audit hash chain on this node does not verify: the log may have been altered");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_cut() {
        let v = serde_json::json!({"k": "x".repeat(100)});
        let s = short_json(&v, 20);
        assert_eq!(s.chars().count(), 20);
        assert!(s.ends_with("..."));
        assert_eq!(short_json(&serde_json::Value::Null, 20), "");
    }
}
