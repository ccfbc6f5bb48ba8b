//! Unit tests of the storage service on a real single-node swarm (loopback,
//! no peers): the node is its own only replica, served without the network.

use std::sync::Arc;
use std::time::Duration;

use plexi_p2p::{Keypair, LocalInfo, P2pConfig, PeerId, Timings};
use plexi_store::NodeStore;
use tokio::sync::watch;

use super::*;

/// Serves no application calls: a lone node never receives any.
struct NoCalls;

#[async_trait::async_trait]
impl plexi_p2p::AppHandler for NoCalls {
    async fn handle(
        &self,
        _: PeerId,
        service: String,
        _: Vec<u8>,
    ) -> Result<Vec<u8>, plexi_p2p::CallError> {
        Err(plexi_p2p::CallError::UnknownService { service })
    }
}

pub(super) struct Lone {
    pub storage: Arc<Storage>,
    pub registry: prometheus_client::registry::Registry,
    _dir: tempfile::TempDir,
    _info: watch::Sender<LocalInfo>,
}

/// A one-node cluster with `config`, once it sees itself as a member.
pub(super) async fn lone_node(config: DistributedStorage) -> Lone {
    let lone = lone_node_learning(config).await;
    // A lone node founds its cluster: its view is whole from the start.
    lone.storage.set_view_ready();
    lone
}

/// [`lone_node`] before it has learned its cluster (as right after a
/// restart, before membership brings the others back).
async fn lone_node_learning(config: DistributedStorage) -> Lone {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(NodeStore::open(&dir.path().join("store")).unwrap());
    let keypair = Keypair::generate_ed25519();
    let peer_id = keypair.public().to_peer_id();
    let (info_tx, info_rx) = watch::channel(LocalInfo {
        name: "lone".into(),
        version: "0.0.0".into(),
        region: "r".into(),
        zone: "z".into(),
        capacity_bytes: 1 << 30,
        used_bytes: 0,
        object_count: 0,
        store_latency_us: 0,
        unplanned_restarts: 0,
        healthy: true,
        replica_counts: Default::default(),
        api_address: "127.0.0.1:1".into(),
        location: None,
    });
    let mut registry = prometheus_client::registry::Registry::default();
    let (p2p, _task) = plexi_p2p::spawn(
        P2pConfig {
            keypair,
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
            incarnation: 1,
            timings: Timings::default(),
            heartbeat_interval: Duration::from_millis(200),
            exchange_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            cluster_key: plexi_p2p::SecretKey::from_bytes([7; 32]),
        },
        info_rx,
        Arc::new(NoCalls),
        &mut registry,
    )
    .await
    .unwrap();
    let metrics = StorageMetrics::register(&mut registry);
    let storage = Storage::new(config, peer_id, p2p, store, metrics);
    for _ in 0..200 {
        if !storage.members().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(storage.members().len(), 1, "the node never saw itself");
    Lone {
        storage,
        registry,
        _dir: dir,
        _info: info_tx,
    }
}

fn put_request(data_id: &str, bytes: &[u8], consistency: Consistency) -> PutRequest {
    PutRequest {
        data_id: data_id.into(),
        data_type: "test".into(),
        bytes: bytes.to_vec().into(),
        consistency: Some(consistency),
        replication_factor: Some(1),
        actor: "test".into(),
    }
}

/// Until the node has learned its cluster, a strong read or write waits
/// and then refuses: counted over a view of itself alone, a majority would
/// be one node (chaos seed 3 saw a restarted node answer "not found" for a
/// register that a majority held). Eventual reads go on meanwhile.
#[tokio::test(flavor = "current_thread")]
async fn strong_operations_wait_until_the_node_has_learned_its_cluster() {
    let lone = lone_node_learning(DistributedStorage::default()).await;
    let s = &lone.storage;
    s.put(put_request("k", b"v1", Consistency::Eventual))
        .await
        .expect("an eventual write needs no view");
    let started = std::time::Instant::now();
    let strong = s.get("k", Some(Consistency::Strong)).await;
    assert_eq!(strong.err(), Some(StorageError::LearningCluster));
    assert!(started.elapsed() >= STRONG_VIEW_WAIT, "it waited first");
    let write = s.put(put_request("k", b"v2", Consistency::Strong)).await;
    assert_eq!(write.err(), Some(StorageError::LearningCluster));
    assert_eq!(
        s.get("k", Some(Consistency::Eventual)).await.unwrap().bytes,
        b"v1".to_vec()
    );
    // Learned while a strong read waits: it goes ahead.
    let waiting = tokio::spawn({
        let s = s.clone();
        async move { s.get("k", Some(Consistency::Strong)).await }
    });
    tokio::task::yield_now().await;
    s.set_view_ready();
    assert_eq!(waiting.await.unwrap().unwrap().bytes, b"v1".to_vec());
}

/// Eventual reads start a background read repair on a sample of one in
/// [`READ_REPAIR_EVERY`] (counted in `plexi_storage_read_repair_surveys`),
/// not a survey per read.
#[tokio::test(flavor = "current_thread")]
async fn eventual_reads_survey_for_repair_only_on_a_sample() {
    let lone = lone_node(DistributedStorage::default()).await;
    let s = &lone.storage;
    s.put(put_request("hot", b"hot bytes", Consistency::Eventual))
        .await
        .unwrap();
    let reads = 10 * READ_REPAIR_EVERY;
    for _ in 0..reads {
        s.get("hot", Some(Consistency::Eventual)).await.unwrap();
        wait_idle(s).await;
    }
    assert_eq!(
        s.metrics.read_repair_surveys.get(),
        reads / READ_REPAIR_EVERY
    );
    assert_eq!(s.metrics.read_repair_skipped.get(), 0);
}

/// Past [`MAX_READ_REPAIRS`] read repairs in flight, further ones are
/// skipped and counted, not spawned.
#[tokio::test(flavor = "current_thread")]
async fn read_repairs_in_flight_are_bounded_and_skips_counted() {
    let lone = lone_node(DistributedStorage::default()).await;
    let s = &lone.storage;
    s.put(put_request("hot", b"hot bytes", Consistency::Strong))
        .await
        .unwrap();
    let (meta, data) = s.get_any("hot").await.expect("stored");
    // Let the repair this read started finish.
    wait_idle(s).await;

    // A burst of reads: nothing yields in between, so no repair can finish
    // and every one that was started is still alive afterwards.
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let burst = 10 * MAX_READ_REPAIRS;
    for _ in 0..burst {
        s.read_repair_in_background("hot".into(), meta.clone(), data.clone());
    }
    let started = tasks() - before;
    assert!(
        started <= MAX_READ_REPAIRS,
        "{started} read repairs in flight, bound {MAX_READ_REPAIRS}"
    );
    assert_eq!(
        s.metrics.read_repair_skipped.get(),
        (burst - started) as u64
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &lone.registry).unwrap();
    assert!(
        text.contains(&format!(
            "plexi_storage_read_repair_skipped_total {}",
            burst - started
        )),
        "{text}"
    );

    // Once they finished, repairs run again.
    wait_idle(s).await;
    let skipped = s.metrics.read_repair_skipped.get();
    s.read_repair_in_background("hot".into(), meta, data);
    assert_eq!(s.metrics.read_repair_skipped.get(), skipped);
}

/// Waits (bounded) until no read repair is in flight.
async fn wait_idle(s: &Arc<Storage>) {
    for _ in 0..500 {
        if s.read_repairs.available_permits() == MAX_READ_REPAIRS {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("read repairs never finished");
}

/// A replica applies a batch of puts each on its own (a bad one fails
/// alone), makes them durable with one flush, and answers in order; a
/// batch over its bound is refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_puts_is_applied_put_by_put_and_answered_in_order() {
    let lone = lone_node(DistributedStorage::default()).await;
    let s = &lone.storage;
    let item = |id: &str, body: &[u8], physical_ms: u64| wire::PutItem {
        meta: ObjectMeta {
            data_id: id.into(),
            data_type: "bin".into(),
            size_bytes: body.len() as u64,
            checksum: *blake3::hash(body).as_bytes(),
            version: plexi_util::hlc::Version {
                physical_ms,
                logical: 0,
                node: 1,
            },
            replication_factor: 1,
            consistency_level: Consistency::Eventual,
            created_at_ms: physical_ms,
            tombstone: false,
        },
        data: body.to_vec(),
    };
    let flushes = s.commit.flush_count();
    let puts = vec![
        item("a", b"one", 10),
        item("", b"bad", 10),
        item("b", b"two", 10),
    ];
    let reply = s
        .handle_call(&s.local_peer.clone(), StoreCall::PutMany { puts })
        .await
        .unwrap();
    let StoreReply::AppliedMany(outcomes) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(outcomes.len(), 3);
    assert_eq!(outcomes[0], Ok(true));
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert_eq!(outcomes[2], Ok(true));
    assert_eq!(
        s.commit.flush_count(),
        flushes + 1,
        "one flush for the batch"
    );
    // An older version than the stored one is not stored, and says so.
    let puts = vec![item("a", b"old", 5), item("b", b"three", 20)];
    let StoreReply::AppliedMany(outcomes) = s
        .handle_call(&s.local_peer.clone(), StoreCall::PutMany { puts })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(outcomes, vec![Ok(false), Ok(true)]);
    assert_eq!(s.get("a", None).await.unwrap().bytes, b"one");
    assert_eq!(s.get("b", None).await.unwrap().bytes, b"three");
    let too_many = (0..wire::MAX_BATCH_PUTS + 1)
        .map(|i| item(&format!("k{i}"), b"x", 30))
        .collect();
    assert!(s
        .handle_call(&s.local_peer.clone(), StoreCall::PutMany { puts: too_many })
        .await
        .is_err());
    assert!(
        s.engine.get("k0").unwrap().is_none(),
        "nothing of it applied"
    );
}

/// Removes every value file under `dir` (a store's `values/`).
fn remove_value_files(dir: &std::path::Path) -> usize {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            removed += remove_value_files(&path);
        } else if path
            .ancestors()
            .any(|a| a.file_name() == Some(plexi_store::objects::VALUES_DIR.as_ref()))
        {
            std::fs::remove_file(&path).unwrap();
            removed += 1;
        }
    }
    removed
}

/// A value read in `Read` slices is opened once: the later slices come
/// from the copy the first one opened (here they still arrive after its
/// value file is gone), and a newer write is read afresh.
#[tokio::test(flavor = "current_thread")]
async fn a_large_value_read_in_slices_is_opened_once() {
    let lone = lone_node(DistributedStorage::default()).await;
    let s = &lone.storage;
    let big: Vec<u8> = (0..2 * READ_CHUNK_BYTES as usize + 100)
        .map(|i| (i % 251) as u8)
        .collect();
    s.put(put_request("big", &big, Consistency::Eventual))
        .await
        .unwrap();
    let me = s.local_peer.clone();
    let read = |offset: usize| StoreCall::Read {
        data_id: "big".into(),
        offset: offset as u64,
        len: READ_CHUNK_BYTES,
        newest: None,
    };
    let slice = |reply: StoreReply| match reply {
        StoreReply::Read {
            meta: Some(m),
            data,
        } => (m.version, data),
        other => panic!("unexpected reply {other:?}"),
    };
    let (v1, first) = slice(s.handle_call(&me, read(0)).await.unwrap());
    let chunk = READ_CHUNK_BYTES as usize;
    assert_eq!(first, big[..chunk]);
    assert_eq!(s.open_values.bytes(), big.len());
    assert!(remove_value_files(lone._dir.path()) >= 1);
    let mut got = first;
    while got.len() < big.len() {
        let (v, more) = slice(s.handle_call(&me, read(got.len())).await.unwrap());
        assert_eq!(v, v1);
        assert!(!more.is_empty());
        got.extend_from_slice(&more);
    }
    assert_eq!(got, big);
    // A newer version: the kept copy is not served for it.
    let newer: Vec<u8> = big.iter().map(|b| b.wrapping_add(1)).collect();
    s.put(put_request("big", &newer, Consistency::Eventual))
        .await
        .unwrap();
    let (v2, second) = slice(s.handle_call(&me, read(chunk)).await.unwrap());
    assert!(v2 > v1);
    assert_eq!(second, newer[chunk..2 * chunk]);
}
