//! Microbenchmark of the wire codec (`plexi_p2p::codec`): CBOR encoding and
//! bounded decoding (`encode_cbor`, `decode_cbor`) of typical messages, and
//! one length-prefixed frame through `FramedCbor`:
//! - a heartbeat (`GossipMessage::Heartbeat` of a signed `NodeState`
//!   record) and the record body's decoding, as a receiver does;
//! - a membership exchange (`Request::Exchange`) of 10 and 100 records;
//! - a small store call: `Request::App` to the `store` service carrying a
//!   put of a 1 KiB object, a get (a `Read`), and the get's 1 KiB answer
//!   (`Response::App`). The store's own call type lives in the node, not in
//!   p2p, so the bodies are opaque bytes of those sizes, as p2p sees them.
//!
//! Run: `cargo bench -p plexi-p2p --bench codec -- --sample-count 20 --min-time 0.5`

use divan::{black_box, Bencher};
use futures::io::Cursor;
use libp2p::identity::Keypair;
use libp2p::request_response::Codec as _;
use plexi_p2p::codec::{decode_cbor, encode_cbor, FramedCbor, RPC_PROTOCOL};
use plexi_p2p::protocol::{AgedRecord, GossipMessage, Request, Response};
use plexi_p2p::record::{NodeState, ReplicaCounts, SelfStatus, SignedRecord};

/// A put's body: object metadata (~200 bytes) and 1 KiB of data.
const PUT_BODY_BYTES: usize = 200 + 1024;
/// A get's body: a data id, offset, length.
const GET_BODY_BYTES: usize = 64;
/// A get's answer: the metadata and the 1 KiB of data.
const GET_REPLY_BYTES: usize = 200 + 1024;

fn main() {
    divan::main();
}

fn state(key: &Keypair, i: u64) -> NodeState {
    NodeState {
        peer_id: key.public().to_peer_id().to_string(),
        name: format!("node-{i}"),
        incarnation: 3,
        heartbeat: 12_345 + i,
        status: SelfStatus::Active,
        version: "0.1.0".into(),
        region: "eu-west".into(),
        zone: "eu-west-1a".into(),
        capacity_bytes: 500_000_000_000,
        used_bytes: 123_456_789_012,
        object_count: 1_234_567,
        store_latency_us: 2_150,
        unplanned_restarts: 1,
        healthy: true,
        replica_counts: ReplicaCounts::default(),
        api_address: format!("10.0.0.{}:8080", i % 250),
        listen_addresses: vec![
            format!("/ip4/10.0.0.{}/tcp/9000", i % 250),
            format!("/ip6/fd00::{i:x}/tcp/9000"),
        ],
        location: Some(plexi_util::types::GeoLocation {
            lat: 48.86,
            lon: 2.35,
        }),
    }
}

fn record(i: u64) -> SignedRecord {
    let key = Keypair::generate_ed25519();
    SignedRecord::sign(&key, &state(&key, i))
        .expect("signs")
        .signed
}

fn exchange(n: u64) -> Request {
    Request::Exchange {
        records: (0..n)
            .map(|i| AgedRecord {
                record: record(i),
                age_ms: 1_000 * i,
            })
            .collect(),
    }
}

fn app(service: &str, len: usize) -> Request {
    Request::App {
        service: service.into(),
        body: (0..len).map(|i| i as u8).collect(),
    }
}

#[divan::bench_group]
mod heartbeat {
    use super::*;

    /// The gossip payload a node publishes at each heartbeat.
    #[divan::bench]
    fn encode(bencher: Bencher) {
        let msg = GossipMessage::Heartbeat(record(0));
        bencher.bench(|| encode_cbor(black_box(&msg)).expect("encodes"));
    }

    #[divan::bench]
    fn decode(bencher: Bencher) {
        let bytes = encode_cbor(&GossipMessage::Heartbeat(record(0))).expect("encodes");
        bencher.bench(|| decode_cbor::<GossipMessage>(black_box(&bytes)).expect("decodes"));
    }

    /// The signed record's body, decoded after the payload (signature
    /// checking not included).
    #[divan::bench]
    fn decode_record_body(bencher: Bencher) {
        let body = record(0).body;
        bencher.bench(|| decode_cbor::<NodeState>(black_box(&body)).expect("decodes"));
    }
}

#[divan::bench_group]
mod membership_exchange {
    use super::*;

    const RECORDS: &[u64] = &[10, 100];

    #[divan::bench(args = RECORDS)]
    fn encode(bencher: Bencher, n: u64) {
        let req = exchange(n);
        bencher.bench(|| encode_cbor(black_box(&req)).expect("encodes"));
    }

    #[divan::bench(args = RECORDS)]
    fn decode(bencher: Bencher, n: u64) {
        let bytes = encode_cbor(&exchange(n)).expect("encodes");
        bencher.bench(|| decode_cbor::<Request>(black_box(&bytes)).expect("decodes"));
    }
}

#[divan::bench_group]
mod store_call {
    use super::*;

    #[divan::bench]
    fn put_encode(bencher: Bencher) {
        let req = app("store", PUT_BODY_BYTES);
        bencher.bench(|| encode_cbor(black_box(&req)).expect("encodes"));
    }

    #[divan::bench]
    fn put_decode(bencher: Bencher) {
        let bytes = encode_cbor(&app("store", PUT_BODY_BYTES)).expect("encodes");
        bencher.bench(|| decode_cbor::<Request>(black_box(&bytes)).expect("decodes"));
    }

    #[divan::bench]
    fn get_encode(bencher: Bencher) {
        let req = app("store", GET_BODY_BYTES);
        bencher.bench(|| encode_cbor(black_box(&req)).expect("encodes"));
    }

    #[divan::bench]
    fn get_decode(bencher: Bencher) {
        let bytes = encode_cbor(&app("store", GET_BODY_BYTES)).expect("encodes");
        bencher.bench(|| decode_cbor::<Request>(black_box(&bytes)).expect("decodes"));
    }

    #[divan::bench]
    fn get_reply_encode(bencher: Bencher) {
        let res = Response::App {
            body: vec![7; GET_REPLY_BYTES],
        };
        bencher.bench(|| encode_cbor(black_box(&res)).expect("encodes"));
    }

    #[divan::bench]
    fn get_reply_decode(bencher: Bencher) {
        let bytes = encode_cbor(&Response::App {
            body: vec![7; GET_REPLY_BYTES],
        })
        .expect("encodes");
        bencher.bench(|| decode_cbor::<Response>(black_box(&bytes)).expect("decodes"));
    }

    /// The put request written as a frame (length prefix, capped) and read
    /// back through the request-response codec, in memory.
    #[divan::bench]
    fn put_frame_round_trip(bencher: Bencher) {
        let req = app("store", PUT_BODY_BYTES);
        bencher.with_inputs(|| req.clone()).bench_values(|req| {
            futures::executor::block_on(async {
                let mut codec = FramedCbor;
                let mut io = Cursor::new(Vec::with_capacity(2 * PUT_BODY_BYTES));
                codec
                    .write_request(&RPC_PROTOCOL, &mut io, req)
                    .await
                    .expect("writes");
                io.set_position(0);
                codec
                    .read_request(&RPC_PROTOCOL, &mut io)
                    .await
                    .expect("reads")
            })
        });
    }
}
