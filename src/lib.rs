//! The `plexi` library: everything the binary (`src/main.rs`) runs, as a
//! library so that fuzz targets and tests reach the decoders and state
//! machines directly. See ARCHITECTURE.md for the map.
//!
//! - [`node`]: the worker's wiring; [`supervisor`]: what runs it;
//!   [`switch`]: their `releases/` protocol.
//! - [`storage`], [`updates`], [`audit`]: the services; [`alerts`]: the
//!   cluster's alerts, derived from what they replicate.
//! - [`cli`]: the client commands; [`config`], [`keys`], [`files`]: the
//!   node's settings, secret keys and small durable files.

pub mod alerts;
pub mod audit;
pub mod cli;
pub mod config;
pub mod files;
pub mod keys;
pub mod node;
pub mod storage;
pub mod supervisor;
pub mod switch;
pub mod updates;
