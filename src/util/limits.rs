//! Bounds that more than one layer relies on, defined once. A layer's own
//! bounds (queues, batch sizes) stay beside the code they bound; these are
//! the ones where one layer's bound must fit another's (a storage chunk in a
//! p2p frame, a data id the API accepts in a store key).

/// Largest request frame a node reads from a peer (checked before decoding).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Largest response frame a node reads from a peer.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Members in one table (and records in one exchange).
pub const MAX_MEMBERS: usize = 1024;
/// Longest object id the API accepts (bytes); store keys are 2 + this.
pub const MAX_DATA_ID_BYTES: usize = 512;
/// Longest object content type the API accepts (bytes).
pub const MAX_DATA_TYPE_BYTES: usize = 128;
/// Longest node name, region or zone (characters of `[A-Za-z0-9._-]`).
pub const MAX_NAME_CHARS: usize = 64;
