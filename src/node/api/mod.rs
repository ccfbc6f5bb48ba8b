//! The REST API's traits (`plexi_api::{Cluster, Storage, Updates}`)
//! implemented over the node's services. This is the one place where a
//! service's own error enum becomes an HTTP status and error code: the
//! services never see HTTP.

mod cluster;
mod storage;
mod updates;

pub use cluster::NodeApi;
pub use storage::StorageApi;
pub use updates::UpdatesApi;
