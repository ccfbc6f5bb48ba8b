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
/// Longest object id the API accepts, in characters (as JSON Schema's
/// `maxLength` counts them).
pub const MAX_DATA_ID_CHARS: usize = 512;
/// The most bytes such an id takes in UTF-8; store keys are 2 + this.
pub const MAX_DATA_ID_BYTES: usize = 4 * MAX_DATA_ID_CHARS;
/// Longest object content type the API accepts (printable ASCII, so
/// characters and bytes are the same).
pub const MAX_DATA_TYPE_CHARS: usize = 128;
/// Longest node name, region or zone (characters of `[A-Za-z0-9._-]`).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest maintenance mode an operator may ask for (7 days): the API's
/// rule and the update service's check.
pub const MAX_MAINTENANCE_SECONDS: u64 = 7 * 86_400;
/// Most objects one listing page (and one replica's `List` answer) holds.
pub const MAX_LIST_OBJECTS: u32 = 1000;
