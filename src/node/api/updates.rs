//! The API's view of updates: the `plexi_api::Updates` trait over the
//! update service.

pub use crate::updates::UpdatesApi;
