//! Byte units, so sizes read the same everywhere (config keys carry their
//! unit in their name: `max_object_mib`, `capacity_gb`).

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
/// Bytes per GiB as a float: capacities are shown in (fractional) GiB.
pub const GIB: f64 = (1024 * MIB) as f64;
