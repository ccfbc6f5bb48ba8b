//! The test-only fault file, `DATA_DIR/test-faults.json`: its shape
//! ([`FaultFile`]), its validation into the faults in force ([`Faults`]),
//! the process-wide current value, and the pure decisions the layers make
//! from it (does this write fail, is this message lost, delayed,
//! duplicated), each taking its randomness as an argument.
//!
//! Debug builds only (`cfg(debug_assertions)`: every test and chaos build).
//! In a release build [`current`] is "no fault" without touching the state,
//! [`apply`] changes nothing, and the node refuses to start while the file
//! exists ([`release_refusal`]). Nothing here does I/O: the node reads the
//! file and calls [`parse`] and [`apply`]; the store, the network and the
//! clock read [`current`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

use serde::{Deserialize, Serialize};

/// The file's name in the data dir.
pub const FILE_NAME: &str = "test-faults.json";
/// How often the node looks at the file.
pub const POLL_INTERVAL_MS: u64 = 250;
/// Largest clock offset accepted, either way (10 minutes).
pub const MAX_CLOCK_OFFSET_MS: i64 = 600_000;
/// Largest percentage (every write, every message).
pub const MAX_PERCENT: u8 = 100;
/// Largest network delay accepted: a delayed message must still fit well
/// within any request timeout a test would configure.
pub const MAX_NET_DELAY_MS: u64 = 30_000;
/// Largest fault file read; a bigger one is malformed.
pub const MAX_FILE_BYTES: u64 = 4096;

/// The file as written by the harness. Every field is optional (missing
/// means off); an unknown field is an error, so a typo is reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultFile {
    pub clock_offset_ms: Option<i64>,
    pub store_write_error_percent: Option<u8>,
    pub store_torn_write: Option<bool>,
    pub net_delay_ms: Option<[u64; 2]>,
    pub net_loss_percent: Option<u8>,
    pub net_duplicate_percent: Option<u8>,
}

/// The faults in force, validated. `Faults::NONE` is a sound node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to the wall clock ([`crate::clock::wall_ms`]).
    pub clock_offset_ms: i64,
    /// Each object write fails with an I/O error at this probability.
    pub store_write_error_percent: u8,
    /// The next object write is torn and the process aborts.
    pub store_torn_write: bool,
    /// Uniform delay `(min, max)` of each outgoing request and response.
    pub net_delay_ms: Option<(u64, u64)>,
    /// Outgoing requests (or their responses) and gossip publishes lost.
    pub net_loss_percent: u8,
    /// Outgoing requests sent twice.
    pub net_duplicate_percent: u8,
}

impl Faults {
    pub const NONE: Faults = Faults {
        clock_offset_ms: 0,
        store_write_error_percent: 0,
        store_torn_write: false,
        net_delay_ms: None,
        net_loss_percent: 0,
        net_duplicate_percent: 0,
    };

    /// True when some network fault is on (the fast path skips the rest).
    pub fn net_active(&self) -> bool {
        self.net_delay_ms.is_some() || self.net_loss_percent > 0 || self.net_duplicate_percent > 0
    }
}

/// Why a fault file was not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FaultError {
    #[error("{FILE_NAME} is not valid: {0}")]
    Malformed(String),
    #[error("{FILE_NAME}: {field} = {value} is out of range ({range})")]
    OutOfRange {
        field: &'static str,
        value: String,
        range: String,
    },
}

fn percent(field: &'static str, v: Option<u8>) -> Result<u8, FaultError> {
    let v = v.unwrap_or(0);
    if v > MAX_PERCENT {
        return Err(FaultError::OutOfRange {
            field,
            value: v.to_string(),
            range: format!("0..={MAX_PERCENT}"),
        });
    }
    Ok(v)
}

impl FaultFile {
    /// The faults this file asks for, or why it is refused.
    pub fn validate(&self) -> Result<Faults, FaultError> {
        let clock_offset_ms = self.clock_offset_ms.unwrap_or(0);
        if clock_offset_ms.unsigned_abs() > MAX_CLOCK_OFFSET_MS as u64 {
            return Err(FaultError::OutOfRange {
                field: "clock_offset_ms",
                value: clock_offset_ms.to_string(),
                range: format!("-{MAX_CLOCK_OFFSET_MS}..={MAX_CLOCK_OFFSET_MS}"),
            });
        }
        let net_delay_ms = match self.net_delay_ms {
            None => None,
            Some([min, max]) if min <= max && max <= MAX_NET_DELAY_MS => Some((min, max)),
            Some([min, max]) => {
                return Err(FaultError::OutOfRange {
                    field: "net_delay_ms",
                    value: format!("[{min}, {max}]"),
                    range: format!("[min, max] with min <= max <= {MAX_NET_DELAY_MS}"),
                })
            }
        };
        Ok(Faults {
            clock_offset_ms,
            store_write_error_percent: percent(
                "store_write_error_percent",
                self.store_write_error_percent,
            )?,
            store_torn_write: self.store_torn_write.unwrap_or(false),
            net_delay_ms,
            net_loss_percent: percent("net_loss_percent", self.net_loss_percent)?,
            net_duplicate_percent: percent("net_duplicate_percent", self.net_duplicate_percent)?,
        })
    }
}

/// Parses and validates the file's text.
pub fn parse(text: &str) -> Result<Faults, FaultError> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(FaultError::Malformed(format!(
            "{} bytes, more than {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    let file: FaultFile =
        serde_json::from_str(text).map_err(|e| FaultError::Malformed(e.to_string()))?;
    file.validate()
}

/// The exit-2 message of a release build started with the file present,
/// `None` when it may start (a debug build, or no file).
pub fn release_refusal(file_exists: bool, path: &str) -> Option<String> {
    refusal(!cfg!(debug_assertions), file_exists, path)
}

fn refusal(release_build: bool, file_exists: bool, path: &str) -> Option<String> {
    (release_build && file_exists).then(|| {
        format!(
            "{path} exists: the test-only fault file is for debug/test builds only, and a \
             release build refuses to start with it; remove it"
        )
    })
}

static CURRENT: RwLock<Faults> = RwLock::new(Faults::NONE);
/// Whether the torn write is still to come (cleared when it fires).
static TORN_ARMED: AtomicBool = AtomicBool::new(false);
/// Run after the torn write is flushed, before the abort (the node
/// remembers that this file's torn write was spent).
static TORN_HOOK: OnceLock<Box<dyn Fn() + Send + Sync>> = OnceLock::new();

/// The faults in force. Always [`Faults::NONE`] in a release build.
pub fn current() -> Faults {
    if !cfg!(debug_assertions) {
        return Faults::NONE;
    }
    *CURRENT.read().unwrap_or_else(|p| p.into_inner())
}

/// Puts `faults` in force; returns what was in force before. A no-op in a
/// release build.
pub fn apply(faults: Faults) -> Faults {
    if !cfg!(debug_assertions) {
        return Faults::NONE;
    }
    let mut cur = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    let before = *cur;
    *cur = faults;
    TORN_ARMED.store(faults.store_torn_write, Ordering::SeqCst);
    before
}

/// Whether the next object write is to be torn (it stays armed until
/// [`take_torn_write`]).
pub fn torn_write_armed() -> bool {
    cfg!(debug_assertions) && TORN_ARMED.load(Ordering::SeqCst)
}

/// Claims the torn write: true for exactly one caller per arming.
pub fn take_torn_write() -> bool {
    cfg!(debug_assertions) && TORN_ARMED.swap(false, Ordering::SeqCst)
}

/// Sets what runs once the torn write is durable, before the abort.
pub fn set_torn_write_hook(hook: Box<dyn Fn() + Send + Sync>) {
    let _ = TORN_HOOK.set(hook);
}

/// Called by the store once the torn payload is flushed.
pub fn torn_write_done() {
    if let Some(hook) = TORN_HOOK.get() {
        hook();
    }
}

/// `real` moved by `offset_ms`, saturating at 0 and `u64::MAX`.
pub fn offset_clock(real: u64, offset_ms: i64) -> u64 {
    if offset_ms >= 0 {
        real.saturating_add(offset_ms as u64)
    } else {
        real.saturating_sub(offset_ms.unsigned_abs())
    }
}

/// Whether an event of probability `percent` happens for `roll`, a
/// uniform draw in `0..100`.
pub fn should_fail(percent: u8, roll: u8) -> bool {
    roll < percent
}

/// The delay for `roll` (any uniform u64) within `range`, inclusive.
pub fn delay_ms(range: Option<(u64, u64)>, roll: u64) -> u64 {
    match range {
        None => 0,
        Some((min, max)) if max <= min => min,
        Some((min, max)) => min + roll % (max - min).saturating_add(1),
    }
}

/// Which half of a lost call is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    None,
    /// Dropped before sending: the remote never sees it.
    Request,
    /// Dropped after the remote's handler ran.
    Response,
}

/// The draws one outgoing request's decision takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Rolls {
    /// Uniform in `0..100`.
    pub loss: u8,
    /// Request or response, when lost.
    pub response_half: bool,
    /// Uniform in `0..100`.
    pub duplicate: u8,
    /// Any uniform u64.
    pub delay: u64,
}

/// What happens to one outgoing request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub delay_ms: u64,
    pub loss: Loss,
    /// Sent twice (the second answer discarded). Never for a lost request.
    pub duplicate: bool,
}

impl Outgoing {
    pub const CLEAN: Outgoing = Outgoing {
        delay_ms: 0,
        loss: Loss::None,
        duplicate: false,
    };
}

/// The fate of one outgoing request under `f`.
pub fn outgoing(f: &Faults, r: Rolls) -> Outgoing {
    let loss = if !should_fail(f.net_loss_percent, r.loss) {
        Loss::None
    } else if r.response_half {
        Loss::Response
    } else {
        Loss::Request
    };
    Outgoing {
        delay_ms: delay_ms(f.net_delay_ms, r.delay),
        loss,
        duplicate: loss != Loss::Request && should_fail(f.net_duplicate_percent, r.duplicate),
    }
}

/// What happens to one response this node sends: `None` when it is lost,
/// else its delay.
pub fn response(f: &Faults, loss_roll: u8, delay_roll: u64) -> Option<u64> {
    (!should_fail(f.net_loss_percent, loss_roll)).then(|| delay_ms(f.net_delay_ms, delay_roll))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example_and_empty_files() {
        let f = parse(
            r#"{"clock_offset_ms": -20000, "store_write_error_percent": 30,
                "store_torn_write": false, "net_delay_ms": [10, 200],
                "net_loss_percent": 5, "net_duplicate_percent": 2}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            Faults {
                clock_offset_ms: -20_000,
                store_write_error_percent: 30,
                store_torn_write: false,
                net_delay_ms: Some((10, 200)),
                net_loss_percent: 5,
                net_duplicate_percent: 2,
            }
        );
        assert_eq!(parse("{}").unwrap(), Faults::NONE);
        assert!(!Faults::NONE.net_active());
        assert!(f.net_active());
    }

    #[test]
    fn refuses_typos_bad_types_and_out_of_range_values() {
        assert!(matches!(
            parse(r#"{"clock_ofset_ms": 5}"#),
            Err(FaultError::Malformed(m)) if m.contains("clock_ofset_ms")
        ));
        assert!(matches!(parse("not json"), Err(FaultError::Malformed(_))));
        assert!(matches!(
            parse(r#"{"net_loss_percent": -1}"#),
            Err(FaultError::Malformed(_))
        ));
        assert!(matches!(
            parse(r#"{"net_loss_percent": 101}"#),
            Err(FaultError::OutOfRange {
                field: "net_loss_percent",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"store_write_error_percent": 255}"#),
            Err(FaultError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(r#"{"clock_offset_ms": 600001}"#),
            Err(FaultError::OutOfRange {
                field: "clock_offset_ms",
                ..
            })
        ));
        assert!(parse(r#"{"clock_offset_ms": -600000}"#).is_ok());
        assert!(matches!(
            parse(r#"{"net_delay_ms": [200, 10]}"#),
            Err(FaultError::OutOfRange {
                field: "net_delay_ms",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"net_delay_ms": [0, 30001]}"#),
            Err(FaultError::OutOfRange { .. })
        ));
        assert!(matches!(
            parse(r#"{"net_delay_ms": [1]}"#),
            Err(FaultError::Malformed(_))
        ));
        let huge = format!("{{\"clock_offset_ms\": 0{}}}", " ".repeat(5000));
        assert!(matches!(parse(&huge), Err(FaultError::Malformed(_))));
    }

    #[test]
    fn a_release_refusal_names_the_file_only_in_release_builds() {
        assert_eq!(release_refusal(false, "/d/test-faults.json"), None);
        let refused = release_refusal(true, "/d/test-faults.json");
        assert_eq!(refused.is_some(), !cfg!(debug_assertions));
        assert_eq!(refusal(true, false, "/d/test-faults.json"), None);
        assert_eq!(refusal(false, true, "/d/test-faults.json"), None);
        let message = refusal(true, true, "/d/test-faults.json").unwrap();
        assert!(message.contains("/d/test-faults.json"), "{message}");
        assert!(message.contains("debug/test builds only"), "{message}");
    }

    #[test]
    fn percentages_fail_exactly_that_share_of_rolls() {
        for p in [0u8, 1, 30, 99, 100] {
            let fails = (0..100u8).filter(|r| should_fail(p, *r)).count();
            assert_eq!(fails, p as usize);
        }
    }

    #[test]
    fn delays_stay_in_their_range_and_cover_it() {
        assert_eq!(delay_ms(None, 12345), 0);
        assert_eq!(delay_ms(Some((7, 7)), 12345), 7);
        let seen: std::collections::BTreeSet<u64> =
            (0..1000u64).map(|r| delay_ms(Some((10, 20)), r)).collect();
        assert_eq!(seen, (10..=20).collect());
        assert_eq!(delay_ms(Some((0, u64::MAX)), 5), 5);
    }

    #[test]
    fn the_clock_offset_saturates() {
        assert_eq!(offset_clock(1_000, -20_000), 0);
        assert_eq!(offset_clock(50_000, -20_000), 30_000);
        assert_eq!(offset_clock(50_000, 20_000), 70_000);
        assert_eq!(offset_clock(u64::MAX - 1, 5), u64::MAX);
    }

    #[test]
    fn outgoing_requests_are_lost_either_half_and_never_duplicated_when_dropped() {
        let f = Faults {
            net_loss_percent: 50,
            net_duplicate_percent: 100,
            net_delay_ms: Some((5, 5)),
            ..Faults::NONE
        };
        let r = |loss, response_half| Rolls {
            loss,
            response_half,
            duplicate: 0,
            delay: 0,
        };
        assert_eq!(outgoing(&f, r(49, false)).loss, Loss::Request);
        assert!(!outgoing(&f, r(49, false)).duplicate);
        assert_eq!(outgoing(&f, r(49, true)).loss, Loss::Response);
        assert!(outgoing(&f, r(49, true)).duplicate);
        let kept = outgoing(&f, r(50, false));
        assert_eq!(
            (kept.loss, kept.duplicate, kept.delay_ms),
            (Loss::None, true, 5)
        );
        assert_eq!(outgoing(&Faults::NONE, r(0, true)), Outgoing::CLEAN);
        assert_eq!(response(&f, 49, 0), None);
        assert_eq!(response(&f, 50, 0), Some(5));
        assert_eq!(response(&Faults::NONE, 0, 9), Some(0));
    }

    // The one test touching the process-wide state (tests run in threads).
    #[test]
    fn applied_faults_are_current_and_the_torn_write_fires_once() {
        let f = Faults {
            store_torn_write: true,
            clock_offset_ms: 1,
            ..Faults::NONE
        };
        assert_eq!(apply(f), Faults::NONE);
        assert_eq!(current(), f);
        assert!(torn_write_armed());
        assert!(take_torn_write());
        assert!(!take_torn_write());
        assert!(!torn_write_armed());
        assert_eq!(apply(Faults::NONE), f);
        assert_eq!(current(), Faults::NONE);
    }
}
