//! `plexi alerts [--all]`: the cluster's active alerts (newest raised
//! first), and with `--all` the recently resolved ones too.

use anyhow::Result;
use clap::Args;
use plexi_api::model::{Alert, AlertList};

use super::client::ApiArgs;
use super::table::{dash, Left, Table};

#[derive(Args, Debug)]
pub struct AlertsArgs {
    /// Also list recently resolved alerts.
    #[arg(long)]
    pub all: bool,
    /// At most this many of each (1-1000).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
}

fn table(alerts: &[Alert], resolved: bool) -> Table {
    let mut cols = vec![
        ("SEVERITY", Left),
        ("KIND", Left),
        ("SUBJECT", Left),
        ("RAISED", Left),
    ];
    if resolved {
        cols.push(("RESOLVED", Left));
    }
    cols.push(("MESSAGE", Left));
    let mut t = Table::new(&cols);
    for a in alerts {
        let mut row = vec![
            a.severity.to_string(),
            a.kind.to_string(),
            a.subject.clone(),
            a.raised_at.clone(),
        ];
        if resolved {
            row.push(dash(&a.resolved_at).to_string());
        }
        row.push(a.message.clone());
        t.row(row);
    }
    t
}

pub async fn alerts(api: &ApiArgs, args: &AlertsArgs) -> Result<()> {
    let list: AlertList = api
        .get(&format!("/api/v1/clustering/alerts?limit={}", args.limit))
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if list.active.is_empty() {
        println!("no active alerts");
    } else {
        table(&list.active, false).print();
    }
    if args.all {
        println!();
        if list.recent.is_empty() {
            println!("no recently resolved alerts");
        } else {
            println!("recently resolved:");
            table(&list.recent, true).print();
        }
    }
    Ok(())
}
