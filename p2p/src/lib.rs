//! plexi-p2p: how nodes find and talk to each other.
//!
//! Owns the libp2p swarm (TCP + Noise + Yamux; gossipsub for heartbeats,
//! identify, ping, request-response with a capped CBOR codec), the signed node
//! records, and the pure membership/failure-detector state machine. Nothing
//! outside this crate sees a libp2p type except `PeerId` and `Keypair` at the
//! wiring point in the binary.

pub mod backoff;
pub mod codec;
pub mod identity;
pub mod membership;
pub mod protocol;
pub mod record;
pub mod swarm;

pub use libp2p::{identity::Keypair, multiaddr, Multiaddr, PeerId};
pub use membership::{MemberStatus, MemberView, Timings};
pub use protocol::CallError;
pub use record::NodeState;
pub use swarm::{spawn, AppHandler, LocalInfo, P2pConfig, P2pEvent, P2pHandle};

#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    #[error("malformed peer data: {0}")]
    Malformed(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("peer answered with an error: {0}")]
    Remote(#[from] protocol::CallError),
    #[error("peer answered with an unexpected response")]
    UnexpectedResponse,
    #[error("request timed out")]
    Timeout,
    #[error("too many requests in flight")]
    Busy,
    #[error("the p2p task has stopped")]
    Stopped,
    #[error("identity file {path}: {message}")]
    Identity { path: String, message: String },
}
