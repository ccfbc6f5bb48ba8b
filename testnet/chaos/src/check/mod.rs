//! The checkers: pure functions from a history to a verdict, no network,
//! no clock. `set` (set-full: lost, stale, never-written values per
//! consistency level) and `linear` (linearizability of strong registers,
//! per key, with a bounded search), `updates` (out-of-service bound and
//! lease holders of an update, from samples), `minority` (no strong write
//! acknowledged through the minority side of a partition). [`pair`] turns events into operations.

pub mod linear;
pub mod minority;
pub mod set;
pub mod updates;

use std::collections::HashMap;

use crate::history::{Event, EventType};

/// One operation: its invoke and its completion (`None` when the history
/// ends before it completes: treated as `info`).
#[derive(Clone, Debug, PartialEq)]
pub struct Paired<'a> {
    pub invoke: &'a Event,
    pub done: Option<&'a Event>,
}

impl Paired<'_> {
    /// The completion's type; `Info` when there is none.
    pub fn outcome(&self) -> EventType {
        self.done.map(|d| d.kind).unwrap_or(EventType::Info)
    }
}

/// Pairs each invoke with the next completion of the same process (a
/// process runs one operation at a time). Completions without an invoke
/// are ignored; nemesis events are skipped. In invoke order.
pub fn pair(events: &[Event]) -> Vec<Paired<'_>> {
    let mut open: HashMap<u64, usize> = HashMap::new();
    let mut out: Vec<Paired> = Vec::new();
    for e in events {
        if !e.f.is_client() {
            continue;
        }
        match e.kind {
            EventType::Invoke => {
                open.insert(e.process, out.len());
                out.push(Paired {
                    invoke: e,
                    done: None,
                });
            }
            _ => {
                if let Some(i) = open.remove(&e.process) {
                    out[i].done = Some(e);
                }
            }
        }
    }
    out
}
