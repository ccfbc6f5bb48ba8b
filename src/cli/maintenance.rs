//! `plexi maintenance on|off|status`: the cluster's maintenance mode, in
//! which no update operation starts.

use anyhow::Result;
use clap::Subcommand;
use plexi_api::model::{Maintenance, MaintenanceRequest};

use super::client::ApiArgs;
use super::table::dash;

#[derive(Subcommand, Debug)]
pub enum MaintenanceCmd {
    /// Enter maintenance mode: no update operation starts until it ends.
    On {
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: Option<String>,
        /// Ends by itself after this long: seconds, or `10m`, `2h`
        /// (default: maintenance_mode_timeout_seconds).
        #[arg(long, value_parser = parse_timeout)]
        timeout: Option<u64>,
    },
    /// Leave maintenance mode.
    Off,
    /// Whether maintenance mode is on.
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Seconds from `600` or a duration such as `10m`.
fn parse_timeout(s: &str) -> Result<u64, String> {
    let secs = match s.trim().parse::<u64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is neither seconds nor a duration like 10m: {e}"))?
            .as_secs(),
    };
    if secs == 0 {
        return Err("the timeout must be at least one second".into());
    }
    Ok(secs)
}

pub async fn maintenance(api: &ApiArgs, cmd: &MaintenanceCmd) -> Result<()> {
    const PATH: &str = "/api/v1/clustering/maintenance";
    let (m, json): (Maintenance, bool) = match cmd {
        MaintenanceCmd::On { reason, timeout } => {
            let req = MaintenanceRequest {
                enabled: true,
                reason: reason.clone(),
                timeout_seconds: *timeout,
            };
            (api.post_json(PATH, &req).await?, false)
        }
        MaintenanceCmd::Off => {
            let req = MaintenanceRequest {
                enabled: false,
                reason: None,
                timeout_seconds: None,
            };
            (api.post_json(PATH, &req).await?, false)
        }
        MaintenanceCmd::Status { json } => (api.get(PATH).await?, *json),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&m)?);
        return Ok(());
    }
    if m.enabled {
        println!(
            "maintenance mode ON since {} by {}, ends {}{}",
            dash(&m.started_at),
            if m.set_by.is_empty() { "-" } else { &m.set_by },
            dash(&m.expires_at),
            if m.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", m.reason)
            }
        );
    } else {
        println!("maintenance mode off");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_in_seconds_or_durations() {
        assert_eq!(parse_timeout("600"), Ok(600));
        assert_eq!(parse_timeout("10m"), Ok(600));
        assert_eq!(parse_timeout("1h 30m"), Ok(5400));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
