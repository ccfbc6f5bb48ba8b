//! Round trips of every application message between nodes (store, leases,
//! update state) through the CBOR codec peers use: any value encodes,
//! decodes back, and re-encodes to the same bytes. Peer-layer messages
//! (requests, records, gossip) have theirs in `p2p/`; the update operation
//! record in `src/updates/ops.rs`.

use plexi::storage::wire::{CensusEntry, JobPartStatus, StoreCall, StoreReply};
use plexi::updates::leases::{LeaseCall, LeaseReply};
use plexi::updates::state::{MaintenanceState, SyncCall, SyncReply};
use plexi_p2p::codec::{decode_cbor, encode_cbor};
use plexi_store::objects::{AccessStats, ObjectMeta};
use plexi_util::hlc::Version;
use plexi_util::types::{Consistency, JobKind, JobStatus};
use proptest::prelude::*;
use serde::{de::DeserializeOwned, Serialize};

/// encode → decode → encode gives the bytes of the first encoding.
fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<(), TestCaseError> {
    let first = encode_cbor(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let back: T = decode_cbor(&first).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let second = encode_cbor(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(first, second);
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, including empty and multi-byte.
    ".{0,24}"
}

fn version() -> impl Strategy<Value = Version> {
    (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(physical_ms, logical, node)| Version {
        physical_ms,
        logical,
        node,
    })
}

fn meta() -> impl Strategy<Value = ObjectMeta> {
    (
        (text(), text(), any::<u64>(), any::<[u8; 32]>(), version()),
        (
            any::<u8>(),
            prop::sample::select(Consistency::ALL),
            any::<u64>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (data_id, data_type, size_bytes, checksum, version),
                (replication_factor, consistency_level, created_at_ms, tombstone),
            )| ObjectMeta {
                data_id,
                data_type,
                size_bytes,
                checksum,
                version,
                replication_factor,
                consistency_level,
                created_at_ms,
                tombstone,
            },
        )
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

fn store_call() -> impl Strategy<Value = StoreCall> {
    prop_oneof![
        (meta(), bytes()).prop_map(|(meta, data)| StoreCall::Put { meta, data }),
        (any::<u64>(), any::<u64>(), bytes()).prop_map(|(upload, offset, data)| {
            StoreCall::PutChunk {
                upload,
                offset,
                data,
            }
        }),
        (any::<u64>(), meta()).prop_map(|(upload, meta)| StoreCall::PutCommit { upload, meta }),
        (text(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(data_id, offset, len, versioned)| StoreCall::Read {
                data_id,
                offset,
                len,
                newest: versioned.then(Version::default),
            }
        ),
        prop::collection::vec(text(), 0..4).prop_map(|data_ids| StoreCall::Metas { data_ids }),
        Just(StoreCall::Digests),
        any::<u16>().prop_map(|partition| StoreCall::Entries { partition }),
        prop::collection::vec(any::<u16>(), 0..17)
            .prop_map(|partitions| StoreCall::EntriesOf { partitions }),
        Just(StoreCall::Census),
        Just(StoreCall::FactorDigests),
        (text(), prop::sample::select(JobKind::ALL))
            .prop_map(|(job_id, kind)| StoreCall::StartJob { job_id, kind }),
        text().prop_map(|job_id| StoreCall::JobStatus { job_id }),
    ]
}

fn job_part() -> impl Strategy<Value = JobPartStatus> {
    (
        prop::sample::select(JobKind::ALL),
        prop::sample::select(JobStatus::ALL),
        0.0f64..=1.0,
        any::<u64>(),
        prop::option::of(any::<u64>()),
        any::<[u64; 7]>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(kind, status, progress, started_ms, finished_ms, n, error)| JobPartStatus {
                kind,
                status,
                progress,
                started_ms,
                finished_ms,
                moved_objects: n[0],
                moved_bytes: n[1],
                removed: n[2],
                repaired: n[3],
                error,
                examined: n[4],
                total: n[5],
                reencrypted: n[6],
            },
        )
}

fn store_reply() -> impl Strategy<Value = StoreReply> {
    let access =
        (any::<u64>(), any::<u64>()).prop_map(|(last_accessed_ms, access_count)| AccessStats {
            last_accessed_ms,
            access_count,
        });
    let census = (text(), version(), any::<u8>(), any::<u64>(), any::<bool>()).prop_map(
        |(data_id, version, replication_factor, size_bytes, tombstone)| CensusEntry {
            data_id,
            version,
            replication_factor,
            size_bytes,
            tombstone,
        },
    );
    prop_oneof![
        any::<bool>().prop_map(|stored| StoreReply::Applied { stored }),
        Just(StoreReply::ChunkAccepted),
        (prop::option::of(meta()), bytes())
            .prop_map(|(meta, data)| StoreReply::Read { meta, data }),
        prop::collection::vec(prop::option::of((meta(), access)), 0..3).prop_map(StoreReply::Metas),
        prop::collection::vec(any::<[u8; 32]>(), 0..3).prop_map(StoreReply::Digests),
        prop::collection::vec((text(), version()), 0..3).prop_map(StoreReply::Entries),
        prop::collection::vec(prop::collection::vec((text(), version()), 0..3), 0..4)
            .prop_map(StoreReply::EntriesOf),
        (prop::collection::vec(census, 0..3), any::<bool>())
            .prop_map(|(entries, truncated)| StoreReply::Census { entries, truncated }),
        prop::collection::vec(
            (any::<u16>(), any::<u8>(), any::<[u8; 32]>()).prop_map(|(partition, rf, digest)| {
                plexi_store::objects::FactorDigest {
                    partition,
                    rf,
                    digest,
                }
            }),
            0..3
        )
        .prop_map(StoreReply::FactorDigests),
        Just(StoreReply::JobStarted),
        prop::option::of(job_part()).prop_map(StoreReply::Job),
    ]
}

fn lease_call() -> impl Strategy<Value = LeaseCall> {
    prop_oneof![
        (any::<u32>(), text(), any::<u64>(), any::<u64>(), text()).prop_map(
            |(slot, holder, epoch, ttl_ms, operation_id)| LeaseCall::Acquire {
                slot,
                holder,
                epoch,
                ttl_ms,
                operation_id,
            }
        ),
        (any::<u32>(), text(), any::<u64>()).prop_map(|(slot, holder, epoch)| {
            LeaseCall::Release {
                slot,
                holder,
                epoch,
            }
        }),
    ]
}

fn lease_reply() -> impl Strategy<Value = LeaseReply> {
    prop_oneof![
        Just(LeaseReply::Granted),
        (text(), any::<u64>(), any::<u64>()).prop_map(|(holder, epoch, remaining_ms)| {
            LeaseReply::Denied {
                holder,
                epoch,
                remaining_ms,
            }
        }),
        any::<bool>().prop_map(LeaseReply::Released),
    ]
}

fn maintenance() -> impl Strategy<Value = MaintenanceState> {
    (
        (any::<u64>(), text()),
        any::<bool>(),
        text(),
        text(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(stamp, enabled, reason, set_by, started_at_ms, expires_at_ms, operation_id)| {
                MaintenanceState {
                    stamp,
                    enabled,
                    reason,
                    set_by,
                    started_at_ms,
                    expires_at_ms,
                    operation_id,
                }
            },
        )
}

proptest! {
    #[test]
    fn store_calls_round_trip(call in store_call()) {
        round_trip(&call)?;
    }

    #[test]
    fn store_replies_round_trip(reply in store_reply()) {
        round_trip(&reply)?;
    }

    #[test]
    fn lease_messages_round_trip(call in lease_call(), reply in lease_reply()) {
        round_trip(&call)?;
        round_trip(&reply)?;
    }

    #[test]
    fn update_state_sync_round_trips(
        m in maintenance(),
        ids in prop::collection::btree_map(text(), any::<[u8; 32]>(), 0..4),
        want in prop::collection::vec(text(), 0..4),
    ) {
        round_trip(&SyncCall::Digests { digests: ids, maintenance: m.clone() })?;
        round_trip(&SyncCall::Push { ops: Vec::new(), maintenance: m.clone() })?;
        round_trip(&SyncReply { ops: Vec::new(), want, maintenance: m })?;
    }

    /// Garbage from a peer is an error, never a panic.
    #[test]
    fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_cbor::<StoreCall>(&body);
        let _ = decode_cbor::<StoreReply>(&body);
        let _ = decode_cbor::<LeaseCall>(&body);
        let _ = decode_cbor::<LeaseReply>(&body);
        let _ = decode_cbor::<SyncCall>(&body);
        let _ = decode_cbor::<SyncReply>(&body);
    }
}
