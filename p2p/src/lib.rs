//! plexi-p2p: how nodes find and talk to each other.
//!
//! Owns the libp2p swarm (TCP + the cluster key's pnet + Noise + Yamux;
//! gossipsub for heartbeats, with peer scoring; identify, ping,
//! request-response with a capped CBOR codec; connection limits), the signed
//! node records, the pure membership/failure-detector state machine, and the
//! pure rules of who may call and how much (`guard`), and the test-only
//! network faults (`netfault`, debug builds). Nothing
//! outside this crate sees a libp2p type except `PeerId` and `Keypair` at the
//! wiring point in the binary.

pub mod backoff;
pub mod codec;
pub mod guard;
pub mod identity;
pub mod membership;
pub mod netfault;
pub mod protocol;
pub mod record;
pub mod scoring;
pub mod swarm;

pub use libp2p::{identity::Keypair, multiaddr, Multiaddr, PeerId};
pub use membership::{MemberStatus, MemberView, Timings};
pub use plexi_util::secret::SecretKey;
pub use protocol::CallError;
pub use record::{NodeState, ReplicaCounts};
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
