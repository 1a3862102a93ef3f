//! The keys of a daemon's links and the session its frames are stamped
//! with.

use protocol::{Codec, NodeId};
use std::collections::BTreeMap;

/// The key of each of a daemon's links, by the node at its other end: a VM
/// host has one for its peer and one for the witness, the witness one per
/// VM host.
pub type LinkKeys = BTreeMap<NodeId, Vec<u8>>;

/// The codec of a daemon starting now. Its session is the wall clock in
/// nanoseconds: it grows from one start of the daemon to the next (as long
/// as the clock does not step back across a restart), so frames recorded
/// from an earlier run are refused as replays.
pub fn codec(keys: &LinkKeys) -> Codec {
    let session = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Codec::per_pair(keys.clone()).with_session(session)
}
