//! plexi-util: what every layer needs, and nothing that does I/O beyond
//! reading the wall clock.
//!
//! - [`at_rest`]: what the store writes on disk that the switch reads
//!   without opening it (the values directory, the sealed-value prefix).
//! - [`clock`]: the wall clock in milliseconds and its RFC 3339 text.
//! - [`faults`]: the test-only fault file (`DATA_DIR/test-faults.json`):
//!   its validation, the faults in force, the pure decisions; debug builds
//!   only.
//! - [`hlc`]: the hybrid logical clock and object versions (pure).
//! - [`limits`]: the bounds that cross layers.
//! - [`sealed_stream`]: the sealed backup format (XChaCha20-Poly1305
//!   STREAM in 64 KiB chunks).
//! - [`secret`]: 32-byte secret keys (cluster key, data key) and their
//!   fingerprints.
//! - [`types`]: the shared vocabulary (consistency level, storage strategy,
//!   member status, update strategy, type, phase and statuses, node id):
//!   one type per concept, used alike by config, state machines, wire and
//!   API, serialized in `snake_case`.
//! - [`units`]: byte units.
//! - [`version`]: the version compiled in (`PLEXI_BUILD_VERSION`) and the
//!   test-only build fault.
//!
//! It is its own crate (under `src/util/`, like Garage's `src/util`) because
//! the library crates (`p2p`, `store`, `api`) need it as much as the binary.

pub mod at_rest;
pub mod clock;
pub mod faults;
pub mod hlc;
pub mod limits;
pub mod sealed_stream;
pub mod secret;
pub mod types;
pub mod units;
pub mod version;
