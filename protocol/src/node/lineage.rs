//! Which checkpoints belong to the history a primary runs on, and which disk
//! blocks it wrote since each: what lets a returning backup resync only the
//! blocks that changed since the split instead of the whole disk.

use crate::types::{BlockIndex, CheckpointId, Epoch, Generation};
use std::collections::{BTreeMap, BTreeSet};

/// Segments of the lineage remembered at most.
const SEGMENTS_MAX: usize = 16;

/// The lineage: consecutive runs of epochs, each captured under one
/// generation. A generation is granted once, to one holder, who captures
/// each epoch number once; so `(generation, epoch)` names one checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Lineage {
    /// (generation, first epoch captured under it), ascending.
    segments: Vec<(Generation, Epoch)>,
    /// The newest epoch of the lineage.
    last: Epoch,
}

impl Lineage {
    /// A lineage that begins at `start`.
    pub(crate) fn starting_at(start: CheckpointId) -> Lineage {
        Lineage {
            segments: vec![(start.generation, start.epoch)],
            last: start.epoch,
        }
    }

    /// Epoch `epoch` was captured under `generation` and follows `last`.
    pub(crate) fn extend(&mut self, generation: Generation, epoch: Epoch) {
        assert!(epoch > self.last, "epochs of a lineage are consecutive");
        let (newest, _) = *self.segments.last().expect("a lineage has a segment");
        if generation != newest {
            assert!(generation > newest, "generations only grow along a lineage");
            self.segments.push((generation, epoch));
            if self.segments.len() > SEGMENTS_MAX {
                self.segments.remove(0);
            }
        }
        self.last = epoch;
    }

    /// The newest checkpoint.
    pub(crate) fn head(&self) -> CheckpointId {
        let (generation, _) = *self.segments.last().expect("a lineage has a segment");
        CheckpointId {
            generation,
            epoch: self.last,
        }
    }

    /// Whether `checkpoint` is one of this lineage's (as far as remembered).
    pub(crate) fn contains(&self, checkpoint: CheckpointId) -> bool {
        let index = self
            .segments
            .iter()
            .position(|(g, _)| *g == checkpoint.generation);
        let Some(index) = index else { return false };
        let first = self.segments[index].1;
        let end = match self.segments.get(index + 1) {
            Some((_, next_first)) => *next_first,
            None => self.last.next(),
        };
        first <= checkpoint.epoch && checkpoint.epoch < end
    }
}

/// Disk blocks written, by epoch, bounded by a total block count.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DiskHistory {
    by_epoch: BTreeMap<Epoch, Vec<BlockIndex>>,
    /// Every epoch from this one on is in `by_epoch` (or wrote nothing).
    complete_from: Epoch,
    blocks: u64,
    blocks_max: u64,
}

impl DiskHistory {
    pub(crate) fn new(complete_from: Epoch, blocks_max: u64) -> DiskHistory {
        DiskHistory {
            by_epoch: BTreeMap::new(),
            complete_from,
            blocks: 0,
            blocks_max,
        }
    }

    /// Records the blocks `epoch` wrote, forgetting the oldest epochs to stay
    /// within bounds.
    pub(crate) fn record(&mut self, epoch: Epoch, blocks: &[BlockIndex]) {
        if blocks.is_empty() {
            return;
        }
        let entry = self.by_epoch.entry(epoch).or_default();
        entry.extend_from_slice(blocks);
        self.blocks += blocks.len() as u64;
        while self.blocks > self.blocks_max {
            let (oldest, dropped) = self
                .by_epoch
                .pop_first()
                .expect("blocks > 0 means an entry");
            self.blocks -= dropped.len() as u64;
            self.complete_from = self.complete_from.max(oldest.next());
        }
    }

    /// The blocks written after `epoch`, or `None` if that is no longer known.
    pub(crate) fn written_after(&self, epoch: Epoch) -> Option<Vec<BlockIndex>> {
        if epoch.next() < self.complete_from {
            return None;
        }
        let set: BTreeSet<BlockIndex> = self
            .by_epoch
            .range(epoch.next()..)
            .flat_map(|(_, blocks)| blocks.iter().copied())
            .collect();
        Some(set.into_iter().collect())
    }

    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(g: u64, e: u64) -> CheckpointId {
        CheckpointId {
            generation: Generation(g),
            epoch: Epoch(e),
        }
    }

    #[test]
    fn lineage_knows_its_segments() {
        let mut lineage = Lineage::starting_at(cp(1, 0));
        for e in 1..=5 {
            lineage.extend(Generation(1), Epoch(e));
        }
        for e in 6..=8 {
            lineage.extend(Generation(3), Epoch(e));
        }
        assert!(lineage.contains(cp(1, 5)));
        assert!(
            !lineage.contains(cp(1, 6)),
            "epoch 6 of g1 is another lineage's"
        );
        assert!(lineage.contains(cp(3, 6)));
        assert!(!lineage.contains(cp(3, 9)), "not yet captured");
        assert!(!lineage.contains(cp(2, 4)), "g2 never ran on this lineage");
        assert_eq!(lineage.head(), cp(3, 8));
    }

    #[test]
    fn disk_history_forgets_oldest_and_says_so() {
        let mut history = DiskHistory::new(Epoch(0), 4);
        history.record(Epoch(1), &[BlockIndex(7), BlockIndex(9)]);
        history.record(Epoch(2), &[BlockIndex(7)]);
        assert_eq!(
            history.written_after(Epoch(0)),
            Some(vec![BlockIndex(7), BlockIndex(9)])
        );
        assert_eq!(history.written_after(Epoch(1)), Some(vec![BlockIndex(7)]));
        history.record(Epoch(3), &[BlockIndex(1), BlockIndex(2)]);
        assert_eq!(history.blocks(), 3);
        assert_eq!(
            history.written_after(Epoch(0)),
            None,
            "epoch 1 was forgotten"
        );
        assert_eq!(
            history.written_after(Epoch(1)),
            Some(vec![BlockIndex(1), BlockIndex(2), BlockIndex(7)])
        );
    }
}
