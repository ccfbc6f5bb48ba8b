//! Messages between nodes: the gossip payload and the request-response pairs.
//!
//! Membership messages (`Exchange`, `Push`) are interpreted by p2p itself;
//! `App` requests carry an opaque body for a named service that the node
//! registers (`health`, `store`, `audit`, `lease`, `updates`: the table is
//! in ARCHITECTURE.md), so p2p stays ignorant of what they mean. A service
//! answers with a body or a typed [`CallError`].

use serde::{Deserialize, Serialize};

use crate::record::SignedRecord;

/// Upper bound on the records in one exchange (and on the membership table).
pub use plexi_util::limits::MAX_MEMBERS;
/// Upper bound on a service name.
pub const MAX_SERVICE_NAME: usize = 64;

/// A record with how long ago the sender last saw it advance, so a receiver
/// that has never heard of the node does not take an old record for a fresh
/// one (and resurrect a dead node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgedRecord {
    pub record: SignedRecord,
    pub age_ms: u64,
}

/// What a node publishes on the membership topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GossipMessage {
    /// The sender's own record, fresh off its heartbeat.
    Heartbeat(SignedRecord),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Push-pull anti-entropy: here is my table, send me yours.
    Exchange { records: Vec<AgedRecord> },
    /// A record the receiver should merge at once (used when leaving).
    Push { record: SignedRecord },
    /// An application call for a named service.
    App {
        service: String,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
}

/// Why a peer call (`Request::App`) did not answer with a body: what the
/// called node says, typed, so the caller can tell a refusal from a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CallError {
    /// The called node serves no service of that name.
    #[error("unknown service {service:?}")]
    UnknownService { service: String },
    /// The service exists but is not ready yet (the node is starting).
    #[error("service {service} is starting")]
    Starting { service: String },
    /// The body did not decode as that service's request.
    #[error("malformed request: {reason}")]
    Malformed { reason: String },
    /// The called node will not serve this caller or this request.
    #[error("refused: {reason}")]
    Refused { reason: String },
    /// The service tried and failed (its store, its peers).
    #[error("failed: {reason}")]
    Failed { reason: String },
}

impl CallError {
    pub fn malformed(reason: impl std::fmt::Display) -> Self {
        CallError::Malformed {
            reason: reason.to_string(),
        }
    }

    pub fn failed(reason: impl std::fmt::Display) -> Self {
        CallError::Failed {
            reason: reason.to_string(),
        }
    }

    pub fn refused(reason: impl std::fmt::Display) -> Self {
        CallError::Refused {
            reason: reason.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Exchange {
        records: Vec<AgedRecord>,
    },
    Ack,
    App {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// The request was understood but refused or failed.
    Error {
        error: CallError,
    },
}

pub mod serde_bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}
