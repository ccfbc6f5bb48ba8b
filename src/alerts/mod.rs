//! Cluster alerts: what an operator must know (a member suspect or dead, a
//! node nearly full, under-replicated objects, a slow node, corruption, an
//! update's course, maintenance mode), the same on every node.
//!
//! `rules.rs` (pure) derives the alerts that should be active from facts
//! every node holds alike: the gossiped node records, the replicated update
//! operations and maintenance mode (member liveness is each node's own
//! failure detector, which settles within a few heartbeats). `lifecycle.rs`
//! (pure) turns those desired sets over time into raised and resolved
//! transitions with a bounded history. This file is the thin glue: the
//! task that feeds them every [`TICK`] and on changes, the events on the
//! server-sent stream (`alert.raised`, `alert.resolved`, `member`), the
//! gauge `plexi_alerts_active{severity}` and the API view.

pub mod lifecycle;
pub mod rules;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexi_api::model::{Alert, AlertList, ClusterEvent, MemberEvent};
use plexi_p2p::{P2pEvent, P2pHandle};
use plexi_util::clock::{rfc3339_ms, wall_ms};
use plexi_util::types::{AlertSeverity, AlertState};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

use crate::updates::state::UpdateState;
use lifecycle::{AlertRecord, Lifecycle, Transition};
use rules::{Facts, MemberFact, Thresholds};

/// How often the alerts are derived anew (also on every member status
/// change and every change of the replicated update state).
pub const TICK: Duration = Duration::from_millis(500);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SeverityLabels {
    severity: &'static str,
}

/// The node's alert table and what it publishes.
pub struct Alerts {
    table: Mutex<Lifecycle>,
    active: Family<SeverityLabels, Gauge>,
    events: broadcast::Sender<ClusterEvent>,
    thresholds: Thresholds,
}

fn to_api(r: &AlertRecord) -> Alert {
    Alert {
        alert_id: r.alert_id.clone(),
        kind: r.kind,
        severity: r.kind.severity(),
        state: if r.resolved_at_ms.is_some() {
            AlertState::Resolved
        } else {
            AlertState::Active
        },
        subject: r.subject.clone(),
        message: r.message.clone(),
        raised_at: rfc3339_ms(r.raised_at_ms),
        resolved_at: r.resolved_at_ms.map(rfc3339_ms),
    }
}

fn event(kind: &str, data: serde_json::Value) -> ClusterEvent {
    ClusterEvent {
        kind: kind.into(),
        at: rfc3339_ms(wall_ms()),
        data,
    }
}

impl Alerts {
    pub fn new(
        thresholds: Thresholds,
        events: broadcast::Sender<ClusterEvent>,
        registry: &mut Registry,
    ) -> Arc<Self> {
        let active = Family::<SeverityLabels, Gauge>::default();
        registry.register(
            "plexi_alerts_active",
            "Active alerts on this node, by severity",
            active.clone(),
        );
        for s in AlertSeverity::ALL {
            active
                .get_or_create(&SeverityLabels {
                    severity: s.as_str(),
                })
                .set(0);
        }
        Arc::new(Alerts {
            table: Mutex::new(Lifecycle::default()),
            active,
            events,
            thresholds,
        })
    }

    /// Active alerts (newest raised first) and recent ones (newest
    /// resolved first), each at most `limit`.
    pub fn list(&self, limit: usize) -> AlertList {
        let t = self.table.lock().expect("alerts");
        AlertList {
            active: t.active().iter().take(limit).map(to_api).collect(),
            recent: t.recent().take(limit).map(to_api).collect(),
        }
    }

    /// Derives the alerts from `facts` at `now_ms`, applies them, and
    /// publishes each transition and the gauges.
    pub fn observe(&self, facts: &Facts, now_ms: u64) {
        let desired = rules::derive(facts, now_ms);
        let (transitions, active) = {
            let mut t = self.table.lock().expect("alerts");
            let tr = t.apply(&desired, now_ms);
            (tr, t.active())
        };
        for tr in transitions {
            let (kind, rec) = match &tr {
                Transition::Raised(r) => ("alert.raised", r),
                Transition::Resolved(r) => ("alert.resolved", r),
            };
            tracing::info!(
                alert_id = %rec.alert_id,
                kind = %rec.kind,
                subject = %rec.subject,
                message = %rec.message,
                "{kind}"
            );
            let data = serde_json::to_value(to_api(rec)).unwrap_or_default();
            let _ = self.events.send(event(kind, data));
        }
        for s in AlertSeverity::ALL {
            let n = active.iter().filter(|a| a.kind.severity() == *s).count();
            self.active
                .get_or_create(&SeverityLabels {
                    severity: s.as_str(),
                })
                .set(n as i64);
        }
    }
}

/// The facts of this moment: the membership table and the replicated state.
fn facts(p2p: &P2pHandle, updates: &UpdateState, thresholds: Thresholds) -> Facts {
    let members = p2p
        .members()
        .into_iter()
        .map(|m| {
            let s = m.record.state;
            MemberFact {
                node_id: s.name,
                peer_id: s.peer_id,
                status: m.status,
                incarnation: s.incarnation,
                capacity_bytes: s.capacity_bytes,
                used_bytes: s.used_bytes,
                store_latency_us: s.store_latency_us,
                replica_counts: s.replica_counts,
            }
        })
        .collect();
    Facts {
        local_peer: p2p.local_peer_id().to_string(),
        members,
        ops: updates.all(),
        maintenance: updates.maintenance(),
        thresholds,
    }
}

/// Feeds the table every [`TICK`], on every member status change (also
/// sent on the event stream as `member`) and on every change of the
/// replicated update state.
pub fn spawn(alerts: Arc<Alerts>, p2p: P2pHandle, updates: Arc<UpdateState>) {
    let mut p2p_events = p2p.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = updates.changed.notified() => {}
                ev = p2p_events.recv() => match ev {
                    Ok(P2pEvent::MemberStatus { peer_id, name, status }) => {
                        let data = MemberEvent { node_id: name.into(), peer_id, status };
                        let data = serde_json::to_value(data).unwrap_or_default();
                        let _ = alerts.events.send(event("member", data));
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(skipped = n, "p2p events lagged; alerts derive anew");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
            }
            let f = facts(&p2p, &updates, alerts.thresholds);
            alerts.observe(&f, wall_ms());
        }
    });
}
