//! Counters a node keeps about what it did and what it dropped.

/// Counters of one node. Dropped messages are counted by reason, never
/// asserted on: peer bytes are validated.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Frames that did not decode (truncated, bad checksum, malformed...).
    pub dropped_malformed: u64,
    /// Frames whose authentication failed or was missing.
    pub dropped_unauthenticated: u64,
    /// Frames addressed to another node or from an unknown sender.
    pub dropped_misaddressed: u64,
    /// Messages from an older generation.
    pub dropped_stale: u64,
    /// Messages that make no sense in this node's role or state.
    pub dropped_unexpected: u64,
    /// Duplicates of a message already acted on (a second `Join` in the
    /// epoch its copy began).
    pub dropped_duplicate: u64,
    /// Epochs the primary closed.
    pub epochs: u64,
    /// Deltas shipped to a backup (first sends).
    pub deltas_shipped: u64,
    /// Bytes of deltas shipped (first sends).
    pub delta_bytes_shipped: u64,
    /// Deltas sent again after `retransmit_after_ns`.
    pub retransmits: u64,
    /// Deltas a backup applied.
    pub deltas_applied: u64,
    /// Times the primary held the guest because too many deltas were in flight.
    pub backpressure_holds: u64,
    /// Pre-copy rounds sent.
    pub copy_rounds: u64,
    /// Promotions of this node from backup to primary.
    pub promotions: u64,
    /// Times this node stepped down from primary.
    pub step_downs: u64,
}
