//! Fuzz target: a request-response stream from a peer, exactly as the codec
//! reads it (4-byte length, CBOR body) into a `Request` and a `Response`.
//! Must never panic, hang or allocate more than the frame caps.
#![no_main]

use futures::executor::block_on;
use futures::io::Cursor;
use libfuzzer_sys::fuzz_target;
use libp2p::request_response::Codec;
use plexi_p2p::codec::{decode_cbor, FramedCbor, RPC_PROTOCOL};
use plexi_p2p::protocol::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let mut codec = FramedCbor;
    let _ = block_on(codec.read_request(&RPC_PROTOCOL, &mut Cursor::new(data)));
    let _ = block_on(codec.read_response(&RPC_PROTOCOL, &mut Cursor::new(data)));
    // The bodies alone, without the length prefix.
    let _ = decode_cbor::<Request>(data);
    let _ = decode_cbor::<Response>(data);
});
