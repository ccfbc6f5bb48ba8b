//! `plexi audit`: the audit log of every change, newest first, and whether
//! its hash chains verify on the answering node; `plexi audit verify`: every
//! chain that node holds checked from its first entry (hash, link, seq
//! continuity, signature, signer, signed head), the first bad entry named,
//! exit code 1 on any failure.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use plexi_api::model::{AuditChainStatus, AuditList, AuditVerifyReport};
use reqwest::Method;

use super::client::ApiArgs;
use super::table::{dash, Left, Right, Table};

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check every audit chain the answering node holds; exit 1 if any
    /// fails, naming its first bad entry.
    Verify {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn verify(api: &ApiArgs, json: bool) -> Result<()> {
    let report: AuditVerifyReport = api.get("/api/v1/clustering/audit/verify").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut t = Table::new(&[
            ("NODE", Left),
            ("CHAIN", Left),
            ("STATUS", Left),
            ("ENTRIES", Right),
            ("HEAD", Right),
            ("SIGNED HEAD", Right),
            ("FIRST BAD ENTRY", Left),
        ]);
        for c in &report.chains {
            t.row([
                c.node_id
                    .as_ref()
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.chain.clone(),
                serde_json::to_value(c.status)?
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                c.entries.to_string(),
                c.head_seq.to_string(),
                c.signed_head_seq
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                c.problem
                    .as_ref()
                    .map(|p| {
                        let fault = serde_json::to_value(p.fault).unwrap_or_default();
                        format!(
                            "seq {}: {}: {}",
                            p.seq,
                            fault.as_str().unwrap_or(""),
                            p.message
                        )
                    })
                    .unwrap_or_else(|| "-".into()),
            ]);
        }
        t.print();
    }
    let failed: Vec<String> = report
        .chains
        .iter()
        .filter(|c| c.status == AuditChainStatus::Failed)
        .map(|c| {
            let name = c
                .node_id
                .as_ref()
                .map(|n| n.to_string())
                .unwrap_or_default();
            match &c.problem {
                Some(p) => format!("{name} ({}) at seq {}", c.chain, p.seq),
                None => format!("{name} ({})", c.chain),
            }
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "{} audit chain(s) on {} do not verify: {}",
            failed.len(),
            report.node_id,
            failed.join("; ")
        );
    }
    let legacy = report
        .chains
        .iter()
        .filter(|c| c.status == AuditChainStatus::LegacyUnsigned)
        .count();
    println!(
        "{} chain(s) on {} verified{}",
        report.chains.len() - legacy,
        report.node_id,
        if legacy > 0 {
            format!("; {legacy} legacy unsigned chain(s) link but prove no author")
        } else {
            String::new()
        }
    );
    Ok(())
}

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
