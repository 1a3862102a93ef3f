//! Checkpoint streams for a joining backup: copy rounds must apply one on
//! top of the other, but the primary keeps closing epochs (and so taking
//! deltas) between rounds. The deltas taken between two rounds are merged
//! into the next round.

use machine::{Checkpoint, FullStream, Kind};
use protocol::{BlockIndex, Time};
use std::collections::BTreeMap;

/// `newer` applied on top of `older`, as one checkpoint: `newer` must be a
/// delta whose base is `older`. The result has `older`'s kind and base and
/// `newer`'s sequence; pages and blocks written in both take `newer`'s bytes.
pub(crate) fn merge(older: Checkpoint, newer: Checkpoint) -> Checkpoint {
    assert_eq!(newer.kind, Kind::Delta, "only a delta goes on top");
    assert_eq!(newer.base_sequence, older.sequence, "deltas chain");
    let mut pages: BTreeMap<_, _> = older.pages.into_iter().collect();
    pages.extend(newer.pages);
    let mut blocks: BTreeMap<_, _> = older.blocks.into_iter().collect();
    blocks.extend(newer.blocks);
    Checkpoint {
        kind: older.kind,
        sequence: newer.sequence,
        base_sequence: older.base_sequence,
        vcpus: newer.vcpus,
        memory_bytes: newer.memory_bytes,
        pages: pages.into_iter().collect(),
        vcpu_states: newer.vcpu_states,
        devices: newer.devices,
        engine: newer.engine,
        platform: newer.platform,
        blocks: blocks.into_iter().collect(),
    }
}

/// Round 0 of a copy session, read a part at a time while the guest runs.
#[derive(Debug)]
pub(crate) struct FirstRound {
    /// What is read so far.
    pub(crate) stream: FullStream,
    /// The next part is read no earlier than this.
    pub(crate) next_part: Time,
    /// The blocks written before the round began (since the last capture).
    pub(crate) written: Vec<BlockIndex>,
}

/// What a copy session has taken and not yet sent.
#[derive(Debug, Default)]
pub(crate) struct CopyStream {
    /// Round 0, while it is being read.
    pub(crate) first: Option<FirstRound>,
    /// Every delta captured since the last round went out (or since round
    /// 0 began to be read).
    pending: Option<Checkpoint>,
}

impl CopyStream {
    /// A session whose round 0 is read as `first`.
    pub(crate) fn reading(first: FirstRound) -> CopyStream {
        CopyStream {
            first: Some(first),
            pending: None,
        }
    }

    /// A capture was taken (an epoch's delta or a round's).
    pub(crate) fn absorb(&mut self, checkpoint: Checkpoint) {
        self.pending = Some(match self.pending.take() {
            None => checkpoint,
            Some(older) if checkpoint.kind == Kind::Full => {
                drop(older);
                checkpoint
            }
            Some(older) => merge(older, checkpoint),
        });
    }

    /// The next round: everything absorbed since the previous one.
    pub(crate) fn take_round(&mut self) -> Option<Checkpoint> {
        self.pending.take()
    }
}
