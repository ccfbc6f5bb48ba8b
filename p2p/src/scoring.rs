//! Gossipsub peer scoring for the membership topic: a peer whose messages
//! fail validation (undecodable, bad signature) loses score fast and is
//! graylisted (its messages ignored, no gossip to or from it) and recovers
//! once it stops. A peer the swarm bans for misbehaving elsewhere (refused
//! or malformed calls, see `guard`) is blacklisted for the ban instead: no
//! application score, which would have to be decayed by hand. Everything
//! else is tuned so honest members on one host (testnets, benchmarks: many
//! peers on one IP, few messages) never score down.

use std::time::Duration;

use libp2p::gossipsub::{IdentTopic, PeerScoreParams, PeerScoreThresholds, TopicScoreParams};

/// Score lost per invalid message, squared by count (P4): two invalid
/// messages reach the graylist.
pub const INVALID_MESSAGE_WEIGHT: f64 = -25.0;
/// Per decay interval (1 s), what remains of the invalid-message counter:
/// a peer that stops misbehaving recovers within about a minute.
pub const INVALID_MESSAGE_DECAY: f64 = 0.9;
/// Below this score we stop gossiping with a peer.
pub const GOSSIP_THRESHOLD: f64 = -10.0;
/// Below this we do not publish to it.
pub const PUBLISH_THRESHOLD: f64 = -40.0;
/// Below this its messages are ignored (graylist).
pub const GRAYLIST_THRESHOLD: f64 = -50.0;

// One invalid message is forgiven; two reach the graylist (P4 squares the
// count).
const _: () = assert!(INVALID_MESSAGE_WEIGHT > GRAYLIST_THRESHOLD);
const _: () = assert!(INVALID_MESSAGE_WEIGHT * 4.0 < GRAYLIST_THRESHOLD);

/// Score parameters and thresholds for a swarm that uses `topic`.
pub fn params(topic: &str) -> (PeerScoreParams, PeerScoreThresholds) {
    let topic_params = TopicScoreParams {
        topic_weight: 1.0,
        // P1: a little credit for time in the mesh, capped.
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        // P2: a little credit for first deliveries, capped.
        first_message_deliveries_weight: 0.1,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        // P3/P3b off: heartbeats are few, a delivery deficit means nothing.
        mesh_message_deliveries_weight: 0.0,
        mesh_message_deliveries_decay: 0.5,
        mesh_message_deliveries_cap: 100.0,
        mesh_message_deliveries_threshold: 1.0,
        mesh_message_deliveries_window: Duration::from_millis(10),
        mesh_message_deliveries_activation: Duration::from_secs(5),
        mesh_failure_penalty_weight: 0.0,
        mesh_failure_penalty_decay: 0.5,
        // P4: invalid messages.
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: INVALID_MESSAGE_DECAY,
    };
    let mut params = PeerScoreParams {
        topic_score_cap: 10.0,
        app_specific_weight: 0.0,
        // Test clusters put every node on 127.0.0.1: no IP colocation penalty.
        ip_colocation_factor_weight: 0.0,
        ..PeerScoreParams::default()
    };
    params
        .topics
        .insert(IdentTopic::new(topic).hash(), topic_params);
    let thresholds = PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 1.0,
    };
    (params, thresholds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_valid() {
        let (params, thresholds) = params("t");
        params.validate().unwrap();
        thresholds.validate().unwrap();
    }
}
