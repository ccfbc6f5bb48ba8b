//! plexi-chaos: a fault-injection harness in the Jepsen mould. It owns the
//! history format (`history`), the pure checkers over a history (`check`),
//! and the runner pieces (`cluster`: real `plexi node` processes; `net`:
//! network namespaces; `disk`: tmpfs data dirs and ballast; `faults`: the
//! test-only fault file; `partition` and `nemesis`: the seeded fault
//! schedule; `apply`: injecting and healing; `teardown`: cleanup on a
//! signal; `workload`: the client tasks; `update`: a self-update of the
//! cluster run under the faults; `summary`).

pub mod apply;
pub mod check;
pub mod cluster;
pub mod disk;
pub mod faults;
pub mod history;
pub mod nemesis;
pub mod net;
pub mod partition;
pub mod runner;
pub mod summary;
pub mod teardown;
pub mod update;
pub mod workload;
