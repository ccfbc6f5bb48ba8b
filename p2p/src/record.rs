//! A node's signed, versioned state record: what every member gossips about
//! itself and what the membership table stores about everyone else.
//!
//! Only the owner of a peer id can produce a record for it: the body is CBOR,
//! signed with the node's libp2p ed25519 key, and carries the public key so any
//! holder can verify it and relay it (pull exchange) without trusting the relay.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::codec::{decode_cbor, encode_cbor};
use crate::P2pError;

/// Upper bound on the encoded body of one record (gossipsub caps a message at
/// 64 KiB; a record is far below that, and anything larger is hostile).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
/// Upper bound on the listen addresses one record may carry.
pub const MAX_ADDRESSES: usize = 16;

/// What a node says about itself in its own record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelfStatus {
    /// Running and participating.
    Active,
    /// Left the cluster on purpose (SIGTERM); final for this incarnation.
    Left,
}

/// The body of a record: the node's own view of itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeState {
    pub peer_id: String,
    pub name: String,
    /// Bumped (and persisted) at every start of the node.
    pub incarnation: u64,
    /// Bumped at every heartbeat within an incarnation.
    pub heartbeat: u64,
    pub status: SelfStatus,
    pub version: String,
    pub region: String,
    pub zone: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub object_count: u64,
    /// The node's own measured store write+flush latency (µs), for
    /// performance-aware placement that every node computes alike.
    pub store_latency_us: u64,
    /// Starts of the node that followed a run which did not stop cleanly
    /// (crash, SIGKILL, power loss), persisted by the node. Planned stops
    /// (a graceful leave, a restart for an update) are not counted. Its
    /// failure history, for reliability that every node computes alike.
    /// Absent in records of older versions.
    #[serde(default)]
    pub unplanned_restarts: u64,
    pub healthy: bool,
    /// What the node found about its replicas (alerts on every node read
    /// it). Absent in records of older versions.
    #[serde(default)]
    pub replica_counts: ReplicaCounts,
    /// The node's REST API address (`host:port`).
    pub api_address: String,
    /// libp2p multiaddrs the node listens on.
    pub listen_addresses: Vec<String>,
    /// Where the node stands (`node.location`); absent in records of older
    /// versions and of nodes without one.
    #[serde(default)]
    pub location: Option<plexi_util::types::GeoLocation>,
}

/// A node's own findings about the replicas it holds, gossiped so that
/// every node derives the same alerts from them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaCounts {
    /// Objects with fewer current live replicas than their replication
    /// factor that this node counted in its last pass (each object is
    /// counted by one node only: its first current holder in placement order).
    #[serde(default)]
    pub under_replicated_objects: u64,
    /// Corrupt local replicas found (scrub or reads) since this node started.
    #[serde(default)]
    pub corrupt_replicas: u64,
    /// Wall-clock ms of the last one found (0: none).
    #[serde(default)]
    pub corrupt_found_at_ms: u64,
}

impl NodeState {
    /// The order in which records of one peer supersede each other.
    pub fn version(&self) -> (u64, u64) {
        (self.incarnation, self.heartbeat)
    }

    /// The order in which records of one peer supersede each other:
    /// incarnation, then `left` above any active record of the same
    /// incarnation (leaving is final for it: a later heartbeat of that
    /// incarnation cannot undo it), then heartbeat.
    pub fn precedence(&self) -> (u64, bool, u64) {
        (
            self.incarnation,
            self.status == SelfStatus::Left,
            self.heartbeat,
        )
    }
}

/// A record as it travels: CBOR body, signature over it, signer's public key
/// (protobuf encoding, as libp2p defines it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRecord {
    #[serde(with = "crate::protocol::serde_bytes")]
    pub body: Vec<u8>,
    #[serde(with = "crate::protocol::serde_bytes")]
    pub signature: Vec<u8>,
    #[serde(with = "crate::protocol::serde_bytes")]
    pub public_key: Vec<u8>,
}

/// A record whose signature has been checked, with its decoded body.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedRecord {
    pub signed: SignedRecord,
    pub state: NodeState,
}

impl SignedRecord {
    /// Encodes and signs `state` with `key`, which must be the key of
    /// `state.peer_id`.
    pub fn sign(key: &Keypair, state: &NodeState) -> Result<VerifiedRecord, P2pError> {
        debug_assert_eq!(state.peer_id, key.public().to_peer_id().to_string());
        let body = encode_cbor(state)?;
        if body.len() > MAX_RECORD_BYTES {
            return Err(P2pError::Malformed(format!(
                "record body of {} bytes exceeds {MAX_RECORD_BYTES}",
                body.len()
            )));
        }
        let signature = key
            .sign(&body)
            .map_err(|e| P2pError::Malformed(format!("signing failed: {e}")))?;
        let signed = SignedRecord {
            body,
            signature,
            public_key: key.public().encode_protobuf(),
        };
        Ok(VerifiedRecord {
            signed,
            state: state.clone(),
        })
    }

    /// Checks size, signature and that the body's peer id is the signer's.
    pub fn verify(self) -> Result<VerifiedRecord, P2pError> {
        if self.body.len() > MAX_RECORD_BYTES {
            return Err(P2pError::Malformed("record body too large".into()));
        }
        let public = PublicKey::try_decode_protobuf(&self.public_key)
            .map_err(|e| P2pError::Malformed(format!("bad public key: {e}")))?;
        if !public.verify(&self.body, &self.signature) {
            return Err(P2pError::Malformed("bad record signature".into()));
        }
        let state: NodeState = decode_cbor(&self.body)?;
        let signer = PeerId::from_public_key(&public).to_string();
        if state.peer_id != signer {
            return Err(P2pError::Malformed(format!(
                "record for {} signed by {signer}",
                state.peer_id
            )));
        }
        if state.listen_addresses.len() > MAX_ADDRESSES {
            return Err(P2pError::Malformed("too many listen addresses".into()));
        }
        Ok(VerifiedRecord {
            signed: self,
            state,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record of a version before replica health (and unplanned
    /// restarts) decodes, with zeros for what it lacks; a newer record
    /// keeps them.
    #[test]
    fn records_without_replica_counts_decode() {
        let key = Keypair::generate_ed25519();
        let mut state = state_for(&key, 1, 1);
        let mut value = ciborium::Value::serialized(&state).unwrap();
        if let ciborium::Value::Map(fields) = &mut value {
            fields.retain(|(k, _)| {
                !matches!(k.as_text(), Some("replica_counts" | "unplanned_restarts"))
            });
        }
        let mut old = Vec::new();
        ciborium::ser::into_writer(&value, &mut old).unwrap();
        let decoded: NodeState = decode_cbor(&old).unwrap();
        assert_eq!(decoded, state);
        state.replica_counts.under_replicated_objects = 3;
        let decoded: NodeState = decode_cbor(&encode_cbor(&state).unwrap()).unwrap();
        assert_eq!(decoded.replica_counts.under_replicated_objects, 3);
    }

    pub fn state_for(key: &Keypair, incarnation: u64, heartbeat: u64) -> NodeState {
        NodeState {
            peer_id: key.public().to_peer_id().to_string(),
            name: "n".into(),
            incarnation,
            heartbeat,
            status: SelfStatus::Active,
            version: "0.1.0".into(),
            region: "r".into(),
            zone: "z".into(),
            capacity_bytes: 1,
            used_bytes: 0,
            object_count: 0,
            store_latency_us: 0,
            unplanned_restarts: 0,
            healthy: true,
            replica_counts: Default::default(),
            api_address: "127.0.0.1:1".into(),
            listen_addresses: vec![],
            location: None,
        }
    }

    #[test]
    fn location_is_carried_and_optional() {
        let key = Keypair::generate_ed25519();
        let mut state = state_for(&key, 1, 2);
        state.location = Some(plexi_util::types::GeoLocation {
            lat: 48.86,
            lon: 2.35,
        });
        let rec = SignedRecord::sign(&key, &state).unwrap();
        assert_eq!(rec.signed.clone().verify().unwrap().state, state);
        // A record of an older version has no location field.
        let mut older = ciborium::Value::serialized(&state_for(&key, 1, 2)).unwrap();
        if let ciborium::Value::Map(fields) = &mut older {
            fields.retain(|(k, _)| k.as_text() != Some("location"));
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(&older, &mut bytes).unwrap();
        let back: NodeState = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back.location, None);
    }

    #[test]
    fn sign_then_verify_roundtrips() {
        let key = Keypair::generate_ed25519();
        let rec = SignedRecord::sign(&key, &state_for(&key, 1, 2)).unwrap();
        let back = rec.signed.clone().verify().unwrap();
        assert_eq!(back.state, rec.state);
    }

    #[test]
    fn tampered_body_is_refused() {
        let key = Keypair::generate_ed25519();
        let mut rec = SignedRecord::sign(&key, &state_for(&key, 1, 2))
            .unwrap()
            .signed;
        let last = rec.body.len() - 1;
        rec.body[last] ^= 1;
        assert!(rec.verify().is_err());
    }

    #[test]
    fn record_for_another_peer_is_refused() {
        let key = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let mut state = state_for(&other, 1, 1);
        // Signed by `key` but claims to be `other`.
        state.peer_id = other.public().to_peer_id().to_string();
        let body = encode_cbor(&state).unwrap();
        let forged = SignedRecord {
            signature: key.sign(&body).unwrap(),
            body,
            public_key: key.public().encode_protobuf(),
        };
        assert!(forged.verify().is_err());
    }
}
