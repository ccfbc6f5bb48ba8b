//! The `store` service between nodes: what a coordinator asks a replica.
//! Bodies travel as CBOR inside `Request::App`; object bytes move in bounded
//! chunks so no frame nears the codec's caps.

use plexi_p2p::protocol::serde_bytes;
use plexi_store::objects::{AccessStats, FactorDigest, ObjectMeta};
use plexi_util::hlc::Version;
use plexi_util::types::{JobKind, JobStatus};
use serde::{Deserialize, Serialize};

pub const STORE_SERVICE: &str = "store";
/// Objects up to this size go in one `Put`; larger ones in chunks of it.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Largest slice one `Read` returns.
pub const READ_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Most ids in one `Metas` call.
pub const MAX_BATCH: usize = 1024;

/// Most puts in one `PutMany`.
pub const MAX_BATCH_PUTS: usize = 64;
/// A `PutMany` stops taking puts once its bytes reach this (so its frame
/// stays far inside the codec's cap: one more object is at most
/// `batch::MAX_BATCHED_OBJECT_BYTES`).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// One object of a `PutMany`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PutItem {
    pub meta: ObjectMeta,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// [`StoreCall::Put`] from borrowed parts: encodes to the same bytes
/// (a test pins it), so a coordinator sends an object to its replicas
/// without first copying it into an owned call per replica.
#[derive(Serialize)]
pub enum PutRef<'a> {
    Put {
        meta: &'a ObjectMeta,
        #[serde(with = "serde_bytes")]
        data: &'a [u8],
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreCall {
    /// Apply (last writer wins) and flush before answering.
    Put {
        meta: ObjectMeta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Several small objects (at most [`MAX_BATCH_PUTS`]), each applied as
    /// by `Put`, then one flush; answered with `AppliedMany`, in order.
    /// Older peers do not know it (the coordinator then sends `Put`s).
    PutMany { puts: Vec<PutItem> },
    /// One chunk of a large object's upload.
    PutChunk {
        upload: u64,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Ends an upload: the assembled bytes are applied like `Put`.
    PutCommit { upload: u64, meta: ObjectMeta },
    /// Metadata and a slice of the bytes (offset 0 counts as an access).
    Read {
        data_id: String,
        offset: u64,
        len: u64,
        /// Set by a strong read: the version the coordinator's majority
        /// survey found newest. A replica still catching up serves a copy
        /// at least that new (the quorum vouches for it); without it, such
        /// a replica sends the reader elsewhere. Absent from older peers.
        #[serde(default)]
        newest: Option<Version>,
    },
    /// Metadata (and local access stats) of several objects.
    Metas { data_ids: Vec<String> },
    /// The 1024 partition digests.
    Digests,
    /// `(data_id, version)` of one partition.
    Entries { partition: u16 },
    /// Every entry this replica holds (bounded by [`MAX_CENSUS`]).
    Census,
    /// Up to `limit` (at most [`MAX_LIST`]) local entries, tombstones
    /// included, whose id starts with `prefix` and sorts after `after`, in
    /// byte order of the id (the object listing).
    List {
        prefix: String,
        after: Option<String>,
        limit: u32,
    },
    /// Starts this node's part of a cluster-wide job.
    StartJob { job_id: String, kind: JobKind },
    /// This node's part of a job, if it has one.
    JobStatus { job_id: String },
    /// `Entries` of up to [`MAX_ENTRIES_PARTITIONS`] partitions at once
    /// (anti-entropy: one round trip where it took one per partition).
    EntriesOf { partitions: Vec<u16> },
    /// The digest of each (partition, replication factor) holding an
    /// entry: anti-entropy compares only the factors both sides own.
    FactorDigests,
}

/// Most partitions one `EntriesOf` asks for: 16 partitions of a node
/// holding a million objects are about 16,000 entries, well inside the
/// response frame.
pub const MAX_ENTRIES_PARTITIONS: usize = 16;

/// Most entries one `List` answer carries: the API's page bound (their
/// metadata fits the 8 MiB response frame many times over: ids are at most
/// 512 bytes).
pub use plexi_util::limits::MAX_LIST_OBJECTS as MAX_LIST;

/// Most entries one census answer carries.
pub const MAX_CENSUS: usize = 100_000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CensusEntry {
    pub data_id: String,
    pub version: Version,
    pub replication_factor: u8,
    pub size_bytes: u64,
    pub tombstone: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobPartStatus {
    pub kind: JobKind,
    pub status: JobStatus,
    pub progress: f64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub moved_objects: u64,
    pub moved_bytes: u64,
    pub removed: u64,
    pub repaired: u64,
    pub error: Option<String>,
    /// Local entries examined so far, of `total` (re-encryption counts).
    #[serde(default)]
    pub examined: u64,
    #[serde(default)]
    pub total: u64,
    /// Values rewritten under the current data key.
    #[serde(default)]
    pub reencrypted: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StoreReply {
    Applied {
        stored: bool,
    },
    ChunkAccepted,
    /// Each put of a `PutMany`, in its order: `Ok(stored)` as `Applied`.
    AppliedMany(Vec<Result<bool, String>>),
    Read {
        meta: Option<ObjectMeta>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Metas(Vec<Option<(ObjectMeta, AccessStats)>>),
    Digests(Vec<[u8; 32]>),
    Entries(Vec<(String, Version)>),
    Census {
        entries: Vec<CensusEntry>,
        truncated: bool,
    },
    JobStarted,
    Job(Option<JobPartStatus>),
    /// The entries of a `List`, and whether more follow the last one.
    List {
        entries: Vec<ObjectMeta>,
        more: bool,
    },
    /// The entries of each partition an `EntriesOf` named, in its order.
    EntriesOf(Vec<Vec<(String, Version)>>),
    /// A `FactorDigests` answer, in partition order.
    FactorDigests(Vec<FactorDigest>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexi_util::types::Consistency;

    #[test]
    fn a_borrowed_put_encodes_as_the_owned_one() {
        let data = vec![7u8; 3000];
        let meta = ObjectMeta {
            data_id: "k".into(),
            data_type: "bin".into(),
            size_bytes: data.len() as u64,
            checksum: *blake3::hash(&data).as_bytes(),
            version: Version {
                physical_ms: 5,
                logical: 1,
                node: 9,
            },
            replication_factor: 3,
            consistency_level: Consistency::Eventual,
            created_at_ms: 5,
            tombstone: false,
        };
        let borrowed = plexi_p2p::codec::encode_cbor(&PutRef::Put {
            meta: &meta,
            data: &data,
        })
        .unwrap();
        let owned = plexi_p2p::codec::encode_cbor(&StoreCall::Put {
            meta: meta.clone(),
            data: data.clone(),
        })
        .unwrap();
        assert_eq!(borrowed, owned);
        let back: StoreCall = plexi_p2p::codec::decode_cbor(&borrowed).unwrap();
        assert!(matches!(back, StoreCall::Put { meta: m, data: d } if m == meta && d == data));
    }
}
