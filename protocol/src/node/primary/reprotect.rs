//! Re-protection: a joining host is brought in while the primary runs: a
//! copy session of pre-copy rounds, a final paused round that makes it a
//! backup of one checkpoint, the epoch stream, and the witness's
//! certification of the pair under a new generation.

use super::{Pairing, Phase};
use crate::action::{Action, Capture, DiskCopy};
use crate::node::assembly::Transfer;
use crate::node::{Node, Role};
use crate::types::{CheckpointId, Digest, Epoch, Generation, NodeId};
use crate::wire::Message;

/// A copy session in progress.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(in crate::node) struct Copy {
    pub(super) joiner: NodeId,
    pub(super) session: Epoch,
    pub(super) round: u32,
    pub(super) disk: DiskCopy,
    /// The round while it awaits the joiner's ack.
    pub(super) in_flight: Option<Transfer>,
    /// The checkpoint the final round establishes.
    pub(super) base: Option<CheckpointId>,
    pub(super) capturing: bool,
    /// The round in flight was small enough: the next one is the final.
    pub(super) next_is_final: bool,
    /// The final round is to be captured at the next epoch boundary (set
    /// only once the previous round is acknowledged).
    pub(super) final_due: bool,
}

impl Node {
    pub(in crate::node) fn on_copy_captured(&mut self, round: u32, capture: Capture) {
        let (generation, chunk_max) = (self.generation, self.config.chunk_bytes_max);
        let Role::Primary(p) = &mut self.role else {
            return;
        };
        let is_final = p.phase == Phase::CapturingFinal;
        // Every capture, a round's too, takes the blocks written since the
        // last one: the history must hold them, or a later joiner whose disk
        // is older than this copy would not be sent them.
        p.history.record(p.epoch, &capture.disk_blocks);
        let Pairing::Copying(copy) = &mut p.pairing else {
            // The joiner was lost meanwhile; the final capture still ends the epoch.
            if is_final {
                p.lineage.extend(generation, p.epoch);
                self.open_next_epoch();
            }
            return;
        };
        assert!(
            copy.capturing && copy.round == round,
            "CaptureCopy reported as asked"
        );
        copy.capturing = false;
        self.stats.copy_rounds += 1;
        let mut copy = copy.clone();
        if is_final {
            let base = CheckpointId {
                generation,
                epoch: p.epoch,
            };
            p.lineage.extend(generation, p.epoch);
            copy.base = Some(base);
        } else {
            copy.next_is_final = capture.pages <= self.config.precopy_pages_threshold
                || round + 1 >= self.config.precopy_rounds_max;
        }
        let transfer = Transfer::of(capture);
        for chunk in transfer.chunks(chunk_max) {
            let msg = Message::Copy {
                generation,
                session: copy.session,
                round,
                base: copy.base,
                chunk,
            };
            self.send(copy.joiner, msg);
        }
        copy.in_flight = Some(transfer);
        let now = self.now;
        let p = self.primary_mut();
        p.last_shipped = now;
        if is_final {
            p.pairing = Pairing::Catching(copy);
            self.open_next_epoch();
        } else {
            p.pairing = Pairing::Copying(copy);
        }
    }

    pub(super) fn on_copy_ack(&mut self, session: Epoch, round: u32, digest: Digest) {
        let p = self.primary_mut();
        let (Pairing::Copying(copy) | Pairing::Catching(copy)) = &mut p.pairing else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        let Some(sent) = copy.in_flight.as_ref().map(Transfer::digest) else {
            self.stats.dropped_unexpected += 1;
            return;
        };
        if copy.session != session || copy.round != round {
            self.stats.dropped_unexpected += 1;
            return;
        }
        if sent != digest {
            // The joiner applied a round of this name with other content
            // (a forged one): it holds nothing we sent. It is not our
            // backup; our retransmission tells it so and it joins again.
            tracing::info!(node = %self.config.me, %session, round, "copy ack names content we did not send");
            self.stats.dropped_contradicting += 1;
            return;
        }
        copy.in_flight = None;
        p.retransmits_unanswered = 0;
        if let Some(base) = copy.base {
            // The joiner holds the final round: it is a backup from `base` on.
            let joiner = copy.joiner;
            p.acked = p.acked.max(base.epoch);
            p.unacked = p.unacked.split_off(&base.epoch.next());
            p.pairing = Pairing::Certifying { joiner };
            // Deltas sent before the joiner held its base were dropped: send
            // them again now rather than after the retransmit timeout.
            self.retransmit();
            self.hold_output();
            self.maybe_request_certification();
        } else if copy.next_is_final {
            copy.round += 1;
            copy.final_due = true;
            self.end_epoch();
        } else {
            copy.round += 1;
            copy.capturing = true;
            let (round, disk) = (copy.round, copy.disk.clone());
            self.push(Action::CaptureCopy {
                round,
                disk,
                last: false,
            });
        }
    }

    /// Certify the joiner once every released output is in a checkpoint it holds.
    pub(super) fn maybe_request_certification(&mut self) {
        let want = self.generation.next();
        let p = self.primary_mut();
        let Pairing::Certifying { joiner } = p.pairing else {
            return;
        };
        if p.grant_wanted.is_none() && p.acked >= p.released {
            p.grant_wanted = Some((want, Some(joiner)));
            self.request_grant(want, Some(joiner));
        }
    }

    pub(super) fn on_join(&mut self, generation: Generation, disk: Option<CheckpointId>) {
        let p = self.primary_mut();
        // A Join older than the current pairing is a stale duplicate: it must
        // not break a pair (or a copy) that was formed after it. Alone, we
        // take any joiner, whatever generation it last saw.
        let stale = generation < p.pairing_generation;
        if stale && !matches!(p.pairing, Pairing::Solo) {
            self.stats.dropped_stale += 1;
            return;
        }
        match &p.pairing {
            Pairing::Paired { .. } => {
                // Our backup restarted without its state.
                self.peer_heard = self.now;
                self.peer_lost();
            }
            Pairing::Solo => {
                let disk = match disk {
                    Some(cp) if p.lineage.contains(cp) => p
                        .history
                        .written_after(cp.epoch)
                        .map_or(DiskCopy::Full, DiskCopy::Blocks),
                    _ => DiskCopy::Full,
                };
                self.peer_heard = self.now;
                self.start_copy(disk);
            }
            Pairing::Copying(copy) | Pairing::Catching(copy)
                if copy.session == p.epoch || copy.round == 0 =>
            {
                // A session is named by the epoch it began in, so a second
                // one in that epoch would share its name and the joiner
                // would mix their rounds. A Join now is a duplicate of the
                // one that began it. So is a Join before round 0 is
                // acknowledged: a large guest's round 0 takes many epochs
                // to read and send, and the joiner asks again until its
                // first chunk arrives. A joiner that really restarted
                // meanwhile loses nothing: round 0 (sent again if need be)
                // starts it afresh. Either way the joiner is alive.
                self.peer_heard = self.now;
                self.stats.dropped_duplicate += 1;
            }
            Pairing::Copying(_) | Pairing::Catching(_) => {
                // The joiner restarted mid-copy: begin again.
                tracing::info!(node = %self.config.me, "joiner restarted mid-copy");
                self.copy_again();
            }
            Pairing::Certifying { .. } if p.grant_wanted.is_none() => {
                // The joiner does not hold the copy we think it holds (it
                // restarted, or took a forged round for ours and found
                // out): begin again. Once certification is asked, its
                // answer comes first.
                tracing::info!(node = %self.config.me, "joiner joins again before certification");
                self.copy_again();
            }
            Pairing::Seceding | Pairing::Certifying { .. } => self.stats.dropped_unexpected += 1,
        }
    }

    /// The joiner, alive, holds none of the copy under way: a new one.
    fn copy_again(&mut self) {
        self.peer_heard = self.now;
        let p = self.primary_mut();
        p.pairing = Pairing::Solo;
        p.unacked.clear();
        self.start_copy(DiskCopy::Full);
    }

    pub(super) fn start_copy(&mut self, disk: DiskCopy) {
        let (joiner, generation) = (self.config.peer, self.generation);
        let p = self.primary_mut();
        if p.phase == Phase::CapturingFinal {
            return; // the previous session's final capture must land first
        }
        tracing::info!(node = %self.config.me, %joiner, ?disk, "re-protection: copy begins");
        let p = self.primary_mut();
        p.pairing_generation = generation;
        p.retransmits_unanswered = 0;
        p.pairing = Pairing::Copying(Copy {
            joiner,
            session: p.epoch,
            round: 0,
            disk: disk.clone(),
            in_flight: None,
            base: None,
            capturing: true,
            next_is_final: false,
            final_due: false,
        });
        self.push(Action::CaptureCopy {
            round: 0,
            disk,
            last: false,
        });
    }
}
