//! CBOR on the wire: bounded frames for request-response, bounded decoding for
//! everything that arrives from a peer.
//!
//! Every frame is a 4-byte big-endian length and a CBOR body. The length is
//! checked against the cap *before* anything is allocated or decoded; bodies
//! decode from a byte slice into typed structs with a low recursion limit, so a
//! hostile peer cannot make us allocate what its input claims.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

use crate::protocol::{Request, Response};
use crate::P2pError;

/// Nesting depth allowed when decoding peer input; our types need < 10.
pub const RECURSION_LIMIT: usize = 32;
/// Largest request frame accepted (sent or received).
pub use plexi_util::limits::MAX_REQUEST_BYTES;
/// Largest response frame accepted (sent or received).
pub use plexi_util::limits::MAX_RESPONSE_BYTES;

/// The request-response protocol name.
pub const RPC_PROTOCOL: StreamProtocol = StreamProtocol::new("/plexi/rpc/1");

pub fn encode_cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, P2pError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out)
        .map_err(|e| P2pError::Malformed(format!("cbor encode: {e}")))?;
    Ok(out)
}

pub fn decode_cbor<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, P2pError> {
    ciborium::de::from_reader_with_recursion_limit(bytes, RECURSION_LIMIT)
        .map_err(|e| P2pError::Malformed(format!("cbor decode: {e}")))
}

/// The request-response codec: length-prefixed CBOR frames with caps.
#[derive(Clone, Copy, Debug, Default)]
pub struct FramedCbor;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, cap: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds cap of {cap}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    cap: usize,
) -> io::Result<()> {
    if bytes.len() > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds cap of {cap}", bytes.len()),
        ));
    }
    io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

fn to_io(e: P2pError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

impl libp2p::request_response::Codec for FramedCbor {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, MAX_REQUEST_BYTES).await?;
        decode_cbor(&frame).map_err(to_io)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        let frame = read_frame(io, MAX_RESPONSE_BYTES).await?;
        decode_cbor(&frame).map_err(to_io)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = encode_cbor(&req).map_err(to_io)?;
        write_frame(io, &bytes, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = encode_cbor(&res).map_err(to_io)?;
        write_frame(io, &bytes, MAX_RESPONSE_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;

    #[test]
    fn oversized_frame_is_refused_before_reading_body() {
        futures::executor::block_on(async {
            // Claims 4 GiB, carries nothing: must fail on the length alone.
            let mut io = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
            let err = FramedCbor
                .read_request(&RPC_PROTOCOL, &mut io)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("exceeds cap"), "{err}");
        });
    }

    #[test]
    fn deep_nesting_is_refused() {
        // 1000 nested one-element arrays.
        let mut bytes = vec![0x81u8; 1000];
        bytes.push(0x00);
        let res: Result<Vec<serde::de::IgnoredAny>, _> = decode_cbor(&bytes);
        assert!(res.is_err());
    }

    fn sample_requests() -> Vec<Request> {
        let record = crate::record::SignedRecord {
            body: (0..200u8).collect(),
            signature: vec![7; 64],
            public_key: vec![9; 36],
        };
        vec![
            Request::App {
                service: "health".into(),
                body: vec![1, 2, 3],
            },
            Request::App {
                service: String::new(),
                body: Vec::new(),
            },
            Request::Push {
                record: record.clone(),
            },
            Request::Exchange {
                records: vec![
                    crate::protocol::AgedRecord {
                        record: record.clone(),
                        age_ms: u64::MAX,
                    },
                    crate::protocol::AgedRecord { record, age_ms: 0 },
                ],
            },
            Request::Exchange {
                records: Vec::new(),
            },
        ]
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // Pseudo-random bytes: none is a Request.
        let mut errors = 0;
        for seed in 0u8..=255 {
            let bytes: Vec<u8> = (0..64)
                .map(|i| seed.wrapping_mul(31).wrapping_add(i))
                .collect();
            match decode_cbor::<Request>(&bytes) {
                Err(P2pError::Malformed(_)) => errors += 1,
                other => panic!("garbage {bytes:02x?} decoded to {other:?}"),
            }
        }
        assert_eq!(errors, 256);
        // Hand-made invalid inputs, each wrong in one way.
        let invalid: &[(&str, &[u8])] = &[
            ("empty", &[]),
            ("a lone break", &[0xff]),
            ("reserved additional info", &[0x1c]),
            ("an integer", &[0x01]),
            ("an unknown variant", b"\xa1\x63Foo\xa0"),
            ("a unit form of a struct variant", b"\x63App"),
            (
                "service not a string",
                b"\xa1\x63App\xa2\x67service\x01\x64body\x40",
            ),
            ("body missing", b"\xa1\x63App\xa1\x67service\x60"),
            (
                "text that is not UTF-8",
                b"\xa1\x63App\xa2\x67service\x62\xff\xfe\x64body\x40",
            ),
            (
                "a byte string claiming 2^64-1 bytes",
                b"\xa1\x63App\xa2\x67service\x60\x64body\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
            ),
            (
                "an array claiming 2^64-1 records",
                b"\xa1\x68Exchange\xa1\x67records\x9b\xff\xff\xff\xff\xff\xff\xff\xff",
            ),
        ];
        // The valid form the invalid ones above are one change away from.
        assert_eq!(
            decode_cbor::<Request>(b"\xa1\x63App\xa2\x67service\x60\x64body\x40").unwrap(),
            Request::App {
                service: String::new(),
                body: Vec::new()
            }
        );
        for (what, bytes) in invalid {
            assert!(
                decode_cbor::<Request>(bytes).is_err(),
                "{what} ({bytes:02x?}) decoded"
            );
        }
        // Every truncation of a valid encoding is an error; the whole is not.
        for req in sample_requests() {
            let bytes = encode_cbor(&req).unwrap();
            for cut in 0..bytes.len() {
                assert!(
                    decode_cbor::<Request>(&bytes[..cut]).is_err(),
                    "{cut} of {} bytes of {req:?} decoded",
                    bytes.len()
                );
            }
            assert_eq!(decode_cbor::<Request>(&bytes).unwrap(), req);
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic the decoder, and whatever does decode
        /// is a real Request: it encodes and decodes back to itself.
        #[test]
        fn arbitrary_bytes_decode_to_err_or_a_real_request(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            if let Ok(req) = decode_cbor::<Request>(&bytes) {
                let again = encode_cbor(&req).unwrap();
                proptest::prop_assert_eq!(decode_cbor::<Request>(&again).unwrap(), req);
            }
        }
    }

    mod strategies {
        use crate::protocol::{AgedRecord, CallError, GossipMessage, Request, Response};
        use crate::record::{NodeState, SelfStatus, SignedRecord};
        use proptest::collection::vec;
        use proptest::prelude::*;

        pub fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
            vec(any::<u8>(), 0..max)
        }

        pub fn signed() -> impl Strategy<Value = SignedRecord> {
            (bytes(300), bytes(80), bytes(50)).prop_map(|(body, signature, public_key)| {
                SignedRecord {
                    body,
                    signature,
                    public_key,
                }
            })
        }

        pub fn aged() -> impl Strategy<Value = AgedRecord> {
            (signed(), any::<u64>()).prop_map(|(record, age_ms)| AgedRecord { record, age_ms })
        }

        pub fn call_error() -> impl Strategy<Value = CallError> {
            let s = || ".{0,40}";
            prop_oneof![
                s().prop_map(|service| CallError::UnknownService { service }),
                s().prop_map(|service| CallError::Starting { service }),
                s().prop_map(|reason| CallError::Malformed { reason }),
                s().prop_map(|reason| CallError::Refused { reason }),
                s().prop_map(|reason| CallError::Failed { reason }),
            ]
        }

        pub fn request() -> impl Strategy<Value = Request> {
            prop_oneof![
                vec(aged(), 0..4).prop_map(|records| Request::Exchange { records }),
                signed().prop_map(|record| Request::Push { record }),
                (".{0,64}", bytes(500)).prop_map(|(service, body)| Request::App { service, body }),
            ]
        }

        pub fn response() -> impl Strategy<Value = Response> {
            prop_oneof![
                vec(aged(), 0..4).prop_map(|records| Response::Exchange { records }),
                Just(Response::Ack),
                bytes(500).prop_map(|body| Response::App { body }),
                call_error().prop_map(|error| Response::Error { error }),
            ]
        }

        pub fn gossip() -> impl Strategy<Value = GossipMessage> {
            signed().prop_map(GossipMessage::Heartbeat)
        }

        pub fn state() -> impl Strategy<Value = NodeState> {
            (
                (
                    ".{0,60}",
                    ".{0,30}",
                    any::<u64>(),
                    any::<u64>(),
                    any::<bool>(),
                ),
                (".{0,12}", ".{0,12}", ".{0,12}"),
                (
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                ),
                (any::<bool>(), ".{0,30}", vec(".{0,40}", 0..16)),
            )
                .prop_map(
                    |(
                        (peer_id, name, incarnation, heartbeat, left),
                        (version, region, zone),
                        (capacity_bytes, used_bytes, object_count, store_latency_us, unplanned),
                        (healthy, api_address, listen_addresses),
                    )| NodeState {
                        peer_id,
                        name,
                        incarnation,
                        heartbeat,
                        status: if left {
                            SelfStatus::Left
                        } else {
                            SelfStatus::Active
                        },
                        version,
                        region,
                        zone,
                        capacity_bytes,
                        used_bytes,
                        object_count,
                        store_latency_us,
                        unplanned_restarts: unplanned,
                        healthy,
                        replica_counts: Default::default(),
                        api_address,
                        listen_addresses,
                        location: None,
                    },
                )
        }
    }

    proptest::proptest! {
        /// Every message type decodes back to what was encoded, and a
        /// request or response also through the framed codec.
        #[test]
        fn requests_roundtrip(req in strategies::request()) {
            let bytes = encode_cbor(&req).unwrap();
            proptest::prop_assert_eq!(decode_cbor::<Request>(&bytes).unwrap(), req.clone());
            let back = futures::executor::block_on(async {
                let mut buf = Cursor::new(Vec::new());
                FramedCbor.write_request(&RPC_PROTOCOL, &mut buf, req.clone()).await.unwrap();
                FramedCbor
                    .read_request(&RPC_PROTOCOL, &mut Cursor::new(buf.into_inner()))
                    .await
                    .unwrap()
            });
            proptest::prop_assert_eq!(back, req);
        }

        #[test]
        fn responses_roundtrip(res in strategies::response()) {
            let back = futures::executor::block_on(async {
                let mut buf = Cursor::new(Vec::new());
                FramedCbor.write_response(&RPC_PROTOCOL, &mut buf, res.clone()).await.unwrap();
                FramedCbor
                    .read_response(&RPC_PROTOCOL, &mut Cursor::new(buf.into_inner()))
                    .await
                    .unwrap()
            });
            proptest::prop_assert_eq!(back, res);
        }

        #[test]
        fn gossip_and_states_roundtrip(
            msg in strategies::gossip(),
            state in strategies::state(),
        ) {
            let bytes = encode_cbor(&msg).unwrap();
            proptest::prop_assert_eq!(decode_cbor::<crate::protocol::GossipMessage>(&bytes).unwrap(), msg);
            let bytes = encode_cbor(&state).unwrap();
            proptest::prop_assert_eq!(decode_cbor::<crate::record::NodeState>(&bytes).unwrap(), state);
        }

        /// A signed record verifies back to its state; any change to its
        /// body, signature or key is refused, never a panic.
        #[test]
        fn signed_records_roundtrip_and_tampering_is_refused(
            state in strategies::state(),
            flip in any_index(),
            which in 0usize..3,
        ) {
            let key = libp2p::identity::Keypair::generate_ed25519();
            let mut state = state;
            state.peer_id = key.public().to_peer_id().to_string();
            let rec = crate::record::SignedRecord::sign(&key, &state).unwrap();
            let bytes = encode_cbor(&rec.signed).unwrap();
            let wire: crate::record::SignedRecord = decode_cbor(&bytes).unwrap();
            proptest::prop_assert_eq!(wire.clone().verify().unwrap().state, state);
            let mut bad = wire;
            let field = match which {
                0 => &mut bad.body,
                1 => &mut bad.signature,
                _ => &mut bad.public_key,
            };
            let i = flip.index(field.len());
            field[i] ^= 0x01;
            proptest::prop_assert!(bad.verify().is_err());
        }
    }

    fn any_index() -> impl proptest::strategy::Strategy<Value = proptest::sample::Index> {
        proptest::prelude::any::<proptest::sample::Index>()
    }

    #[test]
    fn request_roundtrips_through_frames() {
        futures::executor::block_on(async {
            let mut buf = Cursor::new(Vec::new());
            let req = Request::App {
                service: "health".into(),
                body: vec![1, 2, 3],
            };
            FramedCbor
                .write_request(&RPC_PROTOCOL, &mut buf, req.clone())
                .await
                .unwrap();
            let mut rd = Cursor::new(buf.into_inner());
            let back = FramedCbor
                .read_request(&RPC_PROTOCOL, &mut rd)
                .await
                .unwrap();
            assert_eq!(back, req);
        });
    }
}
