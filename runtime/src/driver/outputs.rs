//! Output commit on the host side: packets the guest sent, tagged with the
//! epoch they were made in, held until the protocol releases that epoch.

use machine::devices::Packet;
use protocol::Epoch;
use std::collections::VecDeque;

/// Packets held at most; beyond it the oldest unreleased epoch cannot grow
/// and new output is dropped (and counted), as a full NIC would.
pub const HELD_PACKETS_MAX: usize = 64 * 1024;

/// The held outputs of one primary term.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    held: VecDeque<(Epoch, Packet)>,
    /// Outputs of epochs up to this one go out at once.
    released: Option<Epoch>,
    pub(crate) dropped: u64,
}

impl Outputs {
    /// The guest made `packet` during `epoch`: it goes out now if that
    /// epoch is released, else it waits.
    pub(crate) fn push(&mut self, epoch: Epoch, packet: Packet, out: &mut impl FnMut(Packet)) {
        if self.released.is_some_and(|r| r >= epoch) {
            out(packet);
        } else if self.held.len() < HELD_PACKETS_MAX {
            if let Some((last, _)) = self.held.back() {
                assert!(*last <= epoch, "epochs only grow within a term");
            }
            self.held.push_back((epoch, packet));
        } else {
            self.dropped += 1;
        }
    }

    /// Epochs up to `upto` are released: send what they hold.
    pub(crate) fn release(&mut self, upto: Epoch, out: &mut impl FnMut(Packet)) {
        self.released = Some(self.released.map_or(upto, |r| r.max(upto)));
        while self.held.front().is_some_and(|(e, _)| *e <= upto) {
            let (_, packet) = self.held.pop_front().expect("checked");
            out(packet);
        }
    }

    /// The term ended (step down, crash, restore): held output is gone and
    /// nothing is released in the next term until the protocol says so.
    pub(crate) fn discard(&mut self) -> usize {
        let discarded = self.held.len();
        self.held.clear();
        self.released = None;
        discarded
    }

    pub(crate) fn held(&self) -> usize {
        self.held.len()
    }

    /// Whether output made in `epoch` waits for its release.
    pub(crate) fn holds(&self, epoch: Epoch) -> bool {
        self.held.back().is_some_and(|(e, _)| *e == epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_waits_for_its_epoch() {
        let mut outputs = Outputs::default();
        let mut sent = Vec::new();
        outputs.push(Epoch(1), vec![1], &mut |p| sent.push(p));
        outputs.push(Epoch(2), vec![2], &mut |p| sent.push(p));
        assert!(sent.is_empty());
        outputs.release(Epoch(1), &mut |p| sent.push(p));
        assert_eq!(sent, vec![vec![1]]);
        outputs.push(Epoch(1), vec![3], &mut |p| sent.push(p));
        assert_eq!(
            sent,
            vec![vec![1], vec![3]],
            "a released epoch's output goes at once"
        );
        assert_eq!(outputs.discard(), 1);
        outputs.push(Epoch(2), vec![4], &mut |p| sent.push(p));
        assert_eq!(sent.len(), 2, "a new term releases nothing by itself");
    }
}
