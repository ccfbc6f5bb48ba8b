//! Fuzz target: a gossipsub message body and the signed records inside it
//! (decode, signature check, state decode, merge into a membership table).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexi_p2p::codec::decode_cbor;
use plexi_p2p::membership::{Membership, Timings};
use plexi_p2p::protocol::{AgedRecord, GossipMessage};
use plexi_p2p::record::SignedRecord;

fuzz_target!(|data: &[u8]| {
    let mut table = Membership::new("local", Timings::default());
    if let Ok(GossipMessage::Heartbeat(record)) = decode_cbor::<GossipMessage>(data) {
        if let Ok(verified) = record.verify() {
            table.merge(verified, 0, 1_000);
        }
    }
    if let Ok(record) = decode_cbor::<SignedRecord>(data) {
        let _ = record.verify();
    }
    if let Ok(batch) = decode_cbor::<Vec<AgedRecord>>(data) {
        for aged in batch {
            if let Ok(verified) = aged.record.verify() {
                table.merge(verified, aged.age_ms, 1_000);
            }
        }
    }
    let _ = table.members(2_000);
});
