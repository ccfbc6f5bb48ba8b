//! The test-only fault file, as the harness writes it: `DATA_DIR/test-faults.json`,
//! read by a debug build of the node every 250 ms (see docs/RELIABILITY.md
//! for the contract). [`Faults`] has the contract's field names; every
//! field is optional and a missing one is off. [`write`] replaces the file
//! atomically (`test-faults.json.tmp`, fsync, rename), so the node never
//! reads half a file. This crate does not depend on the node's own type.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name in a node's data dir.
pub const FAULT_FILE: &str = "test-faults.json";
/// The name it is written under before the rename.
pub const FAULT_FILE_TMP: &str = "test-faults.json.tmp";
/// The contract's bound on `clock_offset_ms`.
pub const MAX_CLOCK_OFFSET_MS: i64 = 600_000;

/// One node's faults. `Default` is "no fault" (the file `{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_write_error_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_torn_write: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_delay_ms: Option<[u64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_loss_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_duplicate_percent: Option<u8>,
}

/// What can be wrong with a `Faults` before it is written.
#[derive(Debug, thiserror::Error)]
pub enum FaultsError {
    #[error("{field} = {value} is out of its range {range}")]
    Range {
        field: &'static str,
        value: i64,
        range: &'static str,
    },
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn percent(field: &'static str, v: Option<u8>) -> Result<(), FaultsError> {
    match v {
        Some(p) if p > 100 => Err(FaultsError::Range {
            field,
            value: p as i64,
            range: "0..=100",
        }),
        _ => Ok(()),
    }
}

impl Faults {
    /// Checks the contract's ranges (the node would refuse the file).
    pub fn validate(&self) -> Result<(), FaultsError> {
        if let Some(o) = self.clock_offset_ms {
            if o.abs() > MAX_CLOCK_OFFSET_MS {
                return Err(FaultsError::Range {
                    field: "clock_offset_ms",
                    value: o,
                    range: "-600000..=600000",
                });
            }
        }
        if let Some([lo, hi]) = self.net_delay_ms {
            if lo > hi {
                return Err(FaultsError::Range {
                    field: "net_delay_ms",
                    value: lo as i64,
                    range: "min <= max",
                });
            }
        }
        percent("store_write_error_percent", self.store_write_error_percent)?;
        percent("net_loss_percent", self.net_loss_percent)?;
        percent("net_duplicate_percent", self.net_duplicate_percent)
    }

    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }
}

/// The fault file of the node whose data dir is `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FAULT_FILE)
}

/// Writes `faults` to `data_dir/test-faults.json` atomically: the tmp
/// file is written and fsynced, then renamed over the old one. No faults
/// at all removes the file instead (the node heals the same way), which
/// needs no space: a node's own data may have filled its disk (a restore
/// after a rollback, chaos seed 3), and the heal must still get through.
pub fn write(data_dir: &Path, faults: &Faults) -> Result<(), FaultsError> {
    faults.validate()?;
    let tmp = data_dir.join(FAULT_FILE_TMP);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FaultsError::Io { path, source }
    };
    if faults.is_empty() {
        let _ = std::fs::remove_file(&tmp);
        let dst = path(data_dir);
        return match std::fs::remove_file(&dst) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dst)(e)),
            _ => Ok(()),
        };
    }
    // Serializing a struct of options and integers cannot fail.
    let text = serde_json::to_string(faults).unwrap_or_else(|_| "{}".into());
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    let dst = path(data_dir);
    std::fs::rename(&tmp, &dst).map_err(io(&dst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("chaos-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_file_has_the_contract_field_names_and_no_tmp_is_left() {
        let d = dir("names");
        let f = Faults {
            clock_offset_ms: Some(-20_000),
            store_write_error_percent: Some(30),
            store_torn_write: Some(false),
            net_delay_ms: Some([10, 200]),
            net_loss_percent: Some(5),
            net_duplicate_percent: Some(2),
        };
        write(&d, &f).unwrap();
        let text = std::fs::read_to_string(d.join("test-faults.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["clock_offset_ms"], -20_000);
        assert_eq!(v["store_write_error_percent"], 30);
        assert_eq!(v["store_torn_write"], false);
        assert_eq!(v["net_delay_ms"], serde_json::json!([10, 200]));
        assert_eq!(v["net_loss_percent"], 5);
        assert_eq!(v["net_duplicate_percent"], 2);
        assert_eq!(v.as_object().unwrap().len(), 6);
        assert!(!d.join(FAULT_FILE_TMP).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn off_fields_are_absent_and_a_heal_writes_an_empty_object() {
        let d = dir("empty");
        write(
            &d,
            &Faults {
                clock_offset_ms: Some(5),
                ..Faults::default()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(path(&d)).unwrap(),
            "{\"clock_offset_ms\":5}"
        );
        write(&d, &Faults::default()).unwrap();
        assert!(!path(&d).exists(), "no faults: no file");
        write(&d, &Faults::default()).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_write_replaces_by_rename_so_an_open_reader_keeps_the_old_file() {
        let d = dir("rename");
        write(
            &d,
            &Faults {
                net_loss_percent: Some(1),
                ..Faults::default()
            },
        )
        .unwrap();
        let before = std::fs::File::open(path(&d)).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = before.metadata().unwrap().ino();
        write(
            &d,
            &Faults {
                net_loss_percent: Some(9),
                ..Faults::default()
            },
        )
        .unwrap();
        let after = std::fs::metadata(path(&d)).unwrap().ino();
        assert_ne!(ino, after, "the file is replaced, not rewritten in place");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn out_of_range_values_are_refused_before_anything_is_written() {
        let d = dir("range");
        let bad = [
            Faults {
                clock_offset_ms: Some(600_001),
                ..Faults::default()
            },
            Faults {
                store_write_error_percent: Some(101),
                ..Faults::default()
            },
            Faults {
                net_delay_ms: Some([200, 10]),
                ..Faults::default()
            },
        ];
        for f in bad {
            assert!(write(&d, &f).is_err(), "{f:?}");
        }
        assert!(!path(&d).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
