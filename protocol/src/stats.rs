//! Counters a node keeps about what it did and what it dropped.

use crate::wire::DecodeError;

/// Counters of one node. Dropped messages are counted by reason, never
/// asserted on: peer bytes are validated.
///
/// Counters are observations: no decision reads them, so two nodes that
/// differ only in what they counted behave alike. Their hash is therefore
/// the same (`Hash` ignores the counters), and the model checker, which
/// tells states apart by hash, does not explore each count separately.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    /// Authenticated frames taken before (or too old, or from an earlier
    /// incarnation of their sender): replays.
    pub dropped_replayed: u64,
    /// Messages carrying a value no honest node produces: a generation or
    /// epoch near the end of its counter, a copy round or chunk count
    /// beyond the configured bounds, a chunk larger than a chunk may be.
    pub dropped_out_of_range: u64,
    /// Messages that contradict themselves or what this node knows (a copy
    /// whose base is not of the copy's own generation, a grant for a
    /// generation older than ours).
    pub dropped_contradicting: u64,
    /// Messages from the peer that name a generation newer than ours: a
    /// claim, which only the witness can confirm. The witness is asked and
    /// its answer acted on; the message itself is dropped.
    pub dropped_unconfirmed: u64,
    /// Claims of a newer generation that the witness, asked, did not
    /// confirm (its grant was older than the claim).
    pub claims_refuted: u64,
    /// Assemblies of a delta or copy round started over because a chunk
    /// contradicted them (a forged or stale chunk spoiled them).
    pub assemblies_replaced: u64,
    /// Deltas or copy rounds whose chunks, all there, did not have the
    /// digest the transfer announced: dropped unapplied, to be assembled
    /// again from the sender's retransmission.
    pub transfers_spoiled: u64,
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
    /// Epochs ended early because the guest went idle with output held.
    pub idle_epoch_ends: u64,
    /// Pre-copy rounds sent.
    pub copy_rounds: u64,
    /// Promotions of this node from backup to primary.
    pub promotions: u64,
    /// Times this node stepped down from primary.
    pub step_downs: u64,
}

impl Stats {
    /// Counts a frame that did not decode, by why.
    pub(crate) fn count_decode_error(&mut self, error: &DecodeError) {
        match error {
            DecodeError::Unauthenticated | DecodeError::BadTag | DecodeError::UnknownSender(_) => {
                self.dropped_unauthenticated += 1
            }
            DecodeError::Replayed { .. } => self.dropped_replayed += 1,
            _ => self.dropped_malformed += 1,
        }
    }

    /// Frames and messages dropped, by reason (the names of the fields).
    pub fn dropped_by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("malformed", self.dropped_malformed),
            ("unauthenticated", self.dropped_unauthenticated),
            ("misaddressed", self.dropped_misaddressed),
            ("stale", self.dropped_stale),
            ("unexpected", self.dropped_unexpected),
            ("duplicate", self.dropped_duplicate),
            ("replayed", self.dropped_replayed),
            ("out_of_range", self.dropped_out_of_range),
            ("contradicting", self.dropped_contradicting),
            ("unconfirmed", self.dropped_unconfirmed),
        ]
    }

    /// Frames and messages dropped, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_by_reason().iter().map(|(_, n)| n).sum()
    }
}

impl std::hash::Hash for Stats {
    /// Nothing: see the type's documentation. (Equal stats hash alike, as
    /// `Hash` requires.)
    fn hash<H: std::hash::Hasher>(&self, _state: &mut H) {}
}
