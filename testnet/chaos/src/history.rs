//! The history: one JSON object per line, one event each (invoke, ok, fail,
//! info), in the order the harness observed them. `index` is that order;
//! the checkers use it as real time. A [`Recorder`] appends events (shared
//! by every client task and the nemesis), [`read`] loads a file back.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use crate::check::updates::UpdateSample;

/// What an event says about its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// The operation starts.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// Outcome unknown (timeout, connection reset, partial write).
    Info,
}

/// The operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpFn {
    /// Set workload: add one unique value.
    Add,
    /// Set workload: read every value of the set.
    ReadAll,
    /// Register workload: write a value to a key.
    Write,
    /// Register workload: read a key.
    Read,
    /// A fault injected or healed.
    Nemesis,
    /// The update workload's steps: publish, plan, execute, final status.
    Update,
    /// One node's own update progress, as it answered (see
    /// `check::updates`).
    UpdateSample,
}

impl OpFn {
    /// A client operation (paired and counted), not a harness action.
    pub fn is_client(self) -> bool {
        matches!(self, OpFn::Add | OpFn::ReadAll | OpFn::Write | OpFn::Read)
    }
}

/// The consistency level an operation asked for (the node's `consistency`
/// query parameter, same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Strong,
    Eventual,
    Weak,
}

impl Consistency {
    pub const ALL: [Consistency; 3] = [
        Consistency::Strong,
        Consistency::Eventual,
        Consistency::Weak,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strong => "strong",
            Consistency::Eventual => "eventual",
            Consistency::Weak => "weak",
        }
    }
}

/// The value an event carries: one number (add, write, read of a register;
/// `None` for a read of an absent key), a list (read_all), or a nemesis
/// description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Int(u64),
    List(Vec<u64>),
    Text(String),
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub index: u64,
    /// Milliseconds since the run started.
    pub time_ms: u64,
    /// The client task (or `nemesis`'s number, [`NEMESIS_PROCESS`]).
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: OpFn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// The node the operation went through (or the nemesis hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<UpdateSample>,
    /// A nemesis event's parameters (the fault's sides, offsets, rates,
    /// and how it was applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
}

/// The process number of nemesis events.
pub const NEMESIS_PROCESS: u64 = u64::MAX;
/// The process number of the update workload's events.
pub const UPDATE_PROCESS: u64 = u64::MAX - 1;

/// An event before the recorder numbers and stamps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub process: u64,
    pub kind: EventType,
    pub f: OpFn,
    pub key: Option<String>,
    pub value: Option<Value>,
    pub consistency: Option<Consistency>,
    pub node: Option<String>,
    pub error: Option<String>,
    pub sample: Option<UpdateSample>,
    pub params: Option<serde_json::Value>,
}

impl Op {
    pub fn new(process: u64, kind: EventType, f: OpFn) -> Op {
        Op {
            process,
            kind,
            f,
            key: None,
            value: None,
            consistency: None,
            node: None,
            error: None,
            sample: None,
            params: None,
        }
    }
}

struct Inner {
    events: Vec<Event>,
    out: Option<std::io::BufWriter<std::fs::File>>,
}

/// Appends events in observation order; cheap to clone (shared).
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Recorder {
    /// A recorder that also writes every event to `path` as it happens.
    pub fn to_file(path: &Path) -> std::io::Result<Recorder> {
        let file = std::fs::File::create(path)?;
        Ok(Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                out: Some(std::io::BufWriter::new(file)),
            })),
        })
    }

    /// A recorder in memory only.
    pub fn in_memory() -> Recorder {
        Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner {
                events: Vec::new(),
                out: None,
            })),
        }
    }

    /// Numbers, stamps and appends `op`; returns the event.
    pub fn record(&self, op: Op) -> Event {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            index: inner.events.len() as u64,
            time_ms: self.start.elapsed().as_millis() as u64,
            process: op.process,
            kind: op.kind,
            f: op.f,
            key: op.key,
            value: op.value,
            consistency: op.consistency,
            node: op.node,
            error: op.error,
            sample: op.sample,
            params: op.params,
        };
        if let Some(out) = inner.out.as_mut() {
            if let Ok(line) = serde_json::to_string(&event) {
                // A failed write of the file is reported at `flush`. Each
                // event goes out at once: a run that hangs or is killed
                // leaves its history complete up to that point.
                let _ = writeln!(out, "{line}").and_then(|_| out.flush());
            }
        }
        inner.events.push(event.clone());
        event
    }

    /// Milliseconds since the run started (the clock of `time_ms`).
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.events.clone()
    }

    pub fn flush(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.out.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

/// Errors reading a history file.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {source}")]
    Parse {
        line: usize,
        source: serde_json::Error,
    },
}

/// Loads a history written by a [`Recorder`].
pub fn read(path: &Path) -> Result<Vec<Event>, ReadError> {
    let file = std::fs::File::open(path)?;
    let mut events = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|source| ReadError::Parse {
            line: i + 1,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_history_reads_back_identically() {
        let dir = std::env::temp_dir().join(format!("chaos-hist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("history.jsonl");
        let rec = Recorder::to_file(&path).unwrap();
        let mut add = Op::new(1, EventType::Invoke, OpFn::Add);
        add.value = Some(Value::Int(7));
        add.consistency = Some(Consistency::Eventual);
        add.node = Some("n1".into());
        rec.record(add);
        let mut read_all = Op::new(2, EventType::Ok, OpFn::ReadAll);
        read_all.value = Some(Value::List(vec![1, 2]));
        rec.record(read_all);
        let mut nem = Op::new(NEMESIS_PROCESS, EventType::Info, OpFn::Nemesis);
        nem.value = Some(Value::Text("kill".into()));
        nem.error = Some("x".into());
        nem.params = Some(serde_json::json!({"sides": [["c1"], ["c2", "c3"]]}));
        rec.record(nem);
        rec.flush().unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back, rec.events());
        assert_eq!(back[0].index, 0);
        assert_eq!(back[2].index, 2);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().next().unwrap().contains("\"type\":\"invoke\""));
        assert!(text.contains("\"consistency\":\"eventual\""));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("chaos-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        std::fs::write(&path, "{\"index\":0}\n").unwrap();
        match read(&path) {
            Err(ReadError::Parse { line: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
