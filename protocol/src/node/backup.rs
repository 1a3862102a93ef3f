//! The backup (stages and applies deltas, promotes itself with the witness's
//! grant) and the joiner (receives copy rounds until it is a backup).

use super::assembly::{Assembly, Offered};
use super::lineage::Lineage;
use super::primary::{Pairing, Primary};
use super::{Claim, Node, Role};
use crate::action::Action;
use crate::config::Config;
use crate::types::{CheckpointId, Digest, Epoch, Generation, NodeId, Time};
use crate::wire::{Chunk, Message, PeerRole};
use std::collections::BTreeMap;

/// State of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Backup {
    /// The newest complete, applied checkpoint: what a promotion restores.
    pub(super) applied: CheckpointId,
    /// Digest of the transfer that brought us to `applied` (the delta, or
    /// the final copy round; none for the boot image): our acks name it.
    applied_digest: Digest,
    lineage: Lineage,
    /// Deltas being received, at most `deltas_in_flight_max` of them.
    staged: BTreeMap<Epoch, Assembly>,
    /// The generation asked of the witness to promote.
    pub(super) grant_wanted: Option<Generation>,
    /// A generation asked for that the witness said we cannot have (we are
    /// not the certified backup): we stopped asking, but should its grant
    /// come after all, it is ours and taken.
    grant_refused: Option<Generation>,
    /// The copy session, final round and its digest that made us a
    /// backup, if a copy did: its retransmissions are answered with their
    /// ack again.
    copied: Option<(Epoch, u32, Digest)>,
}

/// A copy being received.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CopyProgress {
    generation: Generation,
    session: Epoch,
    /// The round being assembled; rounds below it are applied.
    round: u32,
    /// Digest of the last round applied (`round - 1`): a retransmission of
    /// it (its ack was lost) is acknowledged again.
    applied_digest: Option<Digest>,
    assembly: Option<Assembly>,
}

/// State of a joiner.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Joining {
    /// The checkpoint the local disk holds, if known.
    pub(super) disk: Option<CheckpointId>,
    pub(super) copy: Option<CopyProgress>,
    /// Whether the witness answered since we began to join: until then,
    /// each tick asks it the generation the copy will come in.
    pub(super) witness_answered: bool,
    /// The standby we were a backup of, kept while a promotion we asked
    /// for may still be granted and no copy round replaced it.
    resumable: Option<Resumable>,
}

/// A backup's standby, kept by the joiner it became: the witness may yet
/// grant the promotion it asked for (a request in flight outlives a
/// refusal), and then it is the holder and the only host that can run the
/// guest. Its standby holds every epoch it acknowledged, so every output
/// the primary released: resuming it loses nothing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Resumable {
    /// The generation asked for.
    asked: Generation,
    checkpoint: CheckpointId,
    lineage: Lineage,
}

/// An assembly holds no more chunks and bytes than one transfer may have.
fn check_bounds(assembly: &Assembly, config: &Config) {
    let chunks_max = super::validate::transfer_chunks_max(config) as usize;
    assert!(
        assembly.chunks() <= chunks_max,
        "assemblies are bounded by chunks"
    );
    assert!(
        assembly.bytes() <= config.transfer_bytes_max,
        "assemblies are bounded by bytes"
    );
}

impl Backup {
    pub(super) fn new(applied: CheckpointId, applied_digest: Digest) -> Backup {
        Backup {
            applied,
            applied_digest,
            lineage: Lineage::starting_at(applied),
            staged: BTreeMap::new(),
            grant_wanted: None,
            grant_refused: None,
            copied: None,
        }
    }

    pub(super) fn deadline(&self, config: &Config, peer_heard: Time) -> Option<Time> {
        match self.grant_wanted {
            None => Some(peer_heard.add_ns(config.suspect_after_ns)),
            Some(_) => None,
        }
    }

    pub(super) fn staged(&self) -> impl Iterator<Item = &Assembly> {
        self.staged.values()
    }

    pub(super) fn check_invariants(&self, config: &Config) {
        for assembly in self.staged.values() {
            check_bounds(assembly, config);
        }
        assert!(
            self.staged.len() <= config.deltas_in_flight_max as usize,
            "staged deltas are bounded"
        );
        if let Some(first) = self.staged.keys().next() {
            assert!(
                *first > self.applied.epoch,
                "applied deltas leave the stage"
            );
        }
        assert_eq!(
            self.lineage.head(),
            self.applied,
            "the lineage ends at the applied checkpoint"
        );
    }
}

#[cfg(feature = "mutants")]
impl Backup {
    /// The broken backup: treats the next staged delta as complete.
    fn apply_whatever_arrived(&mut self, _generation: Generation) {
        let next = self.applied.epoch.next();
        if let Some(assembly) = self.staged.get_mut(&next) {
            assembly.pretend_complete();
        }
    }
}

impl Joining {
    pub(super) fn new(disk: Option<CheckpointId>) -> Joining {
        Joining {
            disk,
            copy: None,
            witness_answered: false,
            resumable: None,
        }
    }

    pub(super) fn assembly(&self) -> Option<&Assembly> {
        self.copy.as_ref().and_then(|c| c.assembly.as_ref())
    }

    pub(super) fn check_invariants(&self, config: &Config) {
        if let Some(assembly) = self.assembly() {
            check_bounds(assembly, config);
        }
        if let Some(copy) = &self.copy {
            assert!(
                copy.assembly.as_ref().is_none_or(|a| !a.is_complete()),
                "complete rounds are applied at once"
            );
        }
    }
}

impl Node {
    fn backup_mut(&mut self) -> &mut Backup {
        match &mut self.role {
            Role::Backup(b) => b,
            _ => unreachable!("called on a backup only"),
        }
    }

    pub(super) fn backup_timeouts(&mut self) {
        let suspect_at = self.peer_heard.add_ns(self.config.suspect_after_ns);
        let b = self.backup_mut();
        if b.grant_wanted.is_none() && self.now >= suspect_at {
            #[cfg(feature = "mutants")]
            if self.config.mutant == Some(crate::config::Mutant::NoGenerationFence) {
                // The fence gone, and with it the check that our
                // generation is one the witness stated.
                let generation = self.generation.next();
                self.witnessed = generation;
                return self.promote_backup(generation);
            }
            self.ask_promotion();
        }
    }

    fn ask_promotion(&mut self) {
        let want = self.generation.next();
        let b = self.backup_mut();
        if b.grant_wanted.is_none() {
            b.grant_wanted = Some(want);
            self.request_grant(want, None);
        }
    }

    pub(super) fn on_backup_message(&mut self, msg: Message) {
        match msg {
            Message::Delta {
                generation,
                epoch,
                chunk,
            } if generation == self.generation => {
                self.peer_heard = self.now;
                self.on_delta(generation, epoch, chunk);
            }
            // Newer generations are claims, which the witness answers
            // (`Node::on_claim`): what reaches here is ours or older.
            Message::Heartbeat {
                generation,
                role: PeerRole::Primary,
                ..
            } if generation == self.generation => self.peer_heard = self.now,
            Message::Join { generation, .. } if generation == self.generation => {
                // The primary restarted without state: take over now.
                self.ask_promotion();
            }
            Message::Copy {
                generation,
                session,
                round,
                chunk,
                ..
            } if generation == self.generation => {
                self.on_copy_as_backup(session, round, chunk.digest)
            }
            _ => self.stats.dropped_stale += 1,
        }
    }

    fn on_delta(&mut self, generation: Generation, epoch: Epoch, chunk: Chunk) {
        let (in_flight_max, bytes_max) = (
            self.config.deltas_in_flight_max,
            self.config.transfer_bytes_max,
        );
        let b = self.backup_mut();
        if epoch > b.applied.epoch && epoch.0 - b.applied.epoch.0 <= u64::from(in_flight_max) {
            let assembly = b
                .staged
                .entry(epoch)
                .or_insert_with(|| Assembly::new(chunk.count, chunk.digest));
            let offered = assembly.offer(chunk, bytes_max);
            if !self.count_offered(offered) {
                return;
            }
        } else if epoch > b.applied.epoch && b.grant_wanted.is_some() {
            // Promoting ourselves: a grant may already be ours, and with it
            // the only copy of the guest. Not the time to give it up.
            self.stats.dropped_unexpected += 1;
            return;
        } else if epoch > b.applied.epoch {
            // Our primary ships only `deltas_in_flight_max` past what we
            // acknowledged: a delta beyond means it believes we hold epochs
            // we never applied (a forged ack). We cannot catch up; a copy can.
            let applied = b.applied.epoch;
            tracing::info!(node = %self.config.me, %epoch, %applied, "delta beyond the window: joining again");
            self.stats.dropped_contradicting += 1;
            let generation = self.generation;
            self.become_stale(generation);
            return;
        }
        let mut applied = Vec::new();
        #[cfg(feature = "mutants")]
        let broken = self.config.mutant == Some(crate::config::Mutant::ApplyIncompleteDelta);
        let b = self.backup_mut();
        #[cfg(feature = "mutants")]
        if broken {
            b.apply_whatever_arrived(generation);
        }
        while let Some(next) = b
            .staged
            .first_entry()
            .filter(|e| *e.key() == b.applied.epoch.next() && e.get().is_complete())
        {
            let (epoch, assembly) = next.remove_entry();
            b.applied = CheckpointId { generation, epoch };
            b.applied_digest = assembly.digest();
            b.lineage.extend(generation, epoch);
            applied.push((epoch, assembly.into_bytes()));
        }
        let (acked, digest) = (b.applied.epoch, b.applied_digest);
        self.stats.deltas_applied += applied.len() as u64;
        for (epoch, delta) in applied {
            self.push(Action::ApplyDelta { epoch, delta });
        }
        let (peer, generation) = (self.config.peer, self.generation);
        self.send(
            peer,
            Message::DeltaAck {
                generation,
                epoch: acked,
                digest,
            },
        );
    }

    /// Our primary still copies to us: the final round again (its ack was
    /// lost) is acknowledged again; any other round, or the same round with
    /// other content, means it does not take us for the backup we think we
    /// are (a forged final round made us one), so we join again and are
    /// copied for real.
    fn on_copy_as_backup(&mut self, session: Epoch, round: u32, digest: Digest) {
        let generation = self.generation;
        if self.backup_mut().copied == Some((session, round, digest)) {
            self.peer_heard = self.now;
            self.ack_copy(session, round, digest);
        } else if self.backup_mut().grant_wanted.is_some() {
            self.stats.dropped_unexpected += 1;
        } else {
            tracing::info!(node = %self.config.me, %session, round, "copied to as a backup: joining again");
            self.stats.dropped_contradicting += 1;
            self.become_stale(generation);
        }
    }

    /// Tells the primary copy round `round` of `session`, with `digest`,
    /// is applied.
    fn ack_copy(&mut self, session: Epoch, round: u32, digest: Digest) {
        let (peer, generation) = (self.config.peer, self.generation);
        self.send(
            peer,
            Message::CopyAck {
                generation,
                session,
                round,
                digest,
            },
        );
    }

    /// Counts what became of an offered chunk; `false` if it was refused.
    fn count_offered(&mut self, offered: Offered) -> bool {
        match offered {
            Offered::Added => true,
            Offered::Replaced => {
                self.stats.assemblies_replaced += 1;
                true
            }
            Offered::Refused => {
                self.stats.dropped_out_of_range += 1;
                false
            }
            Offered::Spoiled => {
                self.stats.transfers_spoiled += 1;
                false
            }
        }
    }

    /// The primary moved to a generation without us: our copy is stale.
    fn become_stale(&mut self, generation: Generation) {
        let (disk, resumable) = match &self.role {
            Role::Backup(b) => {
                let resumable = b.grant_wanted.or(b.grant_refused).map(|asked| Resumable {
                    asked,
                    checkpoint: b.applied,
                    lineage: b.lineage.clone(),
                });
                (Some(b.applied), resumable)
            }
            _ => (None, None),
        };
        if generation > self.generation {
            self.adopt_generation(generation);
        }
        tracing::info!(node = %self.config.me, %generation, "our copy is stale: joining again");
        let mut joining = Joining::new(disk);
        joining.resumable = resumable.filter(|r| r.asked > self.generation);
        self.role = Role::Joining(joining);
        self.tick();
    }

    /// The witness's word to a joiner. If it grants the promotion we asked
    /// for as a backup, we hold the generation and resume the standby we
    /// kept; a grant of that generation or a newer one to anyone else makes
    /// the standby moot. Its first answer is the one the Join waited for.
    pub(super) fn joining_witness_state(&mut self, generation: Generation, holder: NodeId) {
        let Role::Joining(j) = &mut self.role else {
            unreachable!("called on a joiner only")
        };
        let first = !std::mem::replace(&mut j.witness_answered, true);
        let join = (first && j.copy.is_none()).then_some(j.disk);
        match j.resumable.take() {
            Some(r) if r.asked == generation && holder == self.config.me => {
                tracing::info!(node = %self.config.me, %generation, "granted the promotion we asked for as a backup");
                return self.promote(generation, r.checkpoint, r.lineage);
            }
            Some(r) if generation < r.asked => j.resumable = Some(r),
            _ => {}
        }
        if generation > self.generation {
            self.adopt_generation(generation);
        }
        // The answer we waited for to join: ask for the copy now.
        if let Some(disk) = join {
            let generation = self.generation;
            self.send(self.config.peer, Message::Join { generation, disk });
        }
    }

    pub(super) fn backup_witness_state(
        &mut self,
        generation: Generation,
        holder: NodeId,
        backup: Option<NodeId>,
        claim: Option<Claim>,
    ) {
        let (me, peer, current) = (self.config.me, self.config.peer, self.generation);
        let b = self.backup_mut();
        let wanted = b.grant_wanted;
        let asked = wanted.or(b.grant_refused);
        if asked == Some(generation) && holder == me && generation <= current {
            // Granted what we asked for, but we have moved past it since.
            b.grant_wanted = None;
            b.grant_refused = None;
            self.stats.dropped_contradicting += 1;
        } else if asked == Some(generation) && holder == me {
            self.promote_backup(generation);
        } else if generation > self.generation && holder == peer && backup == Some(me) {
            self.adopt_generation(generation);
            // Certified: the primary asked the witness for this generation
            // naming us its backup, so it was alive a moment ago (when it
            // claimed it to us, if it did; when it asked, which the
            // witness's word is just after): a suspicion of ours is moot,
            // as is a promotion we asked for, whose grant, should it still
            // come, is for a generation older than ours. Asking for the
            // next one at once deposed live primaries whenever a backup's
            // suspicion was only a slow host; if the primary did die, we
            // suspect it again a suspicion's time from now.
            let heard = claim
                .filter(|c| c.generation == generation)
                .map_or(self.now, |c| c.heard);
            self.peer_heard = self.peer_heard.max(heard);
            self.backup_mut().grant_wanted = None;
        } else if generation > self.generation {
            self.become_stale(generation);
        } else if generation < self.generation {
            self.stats.dropped_stale += 1;
        } else if wanted.is_some() && holder == peer && backup != Some(me) {
            // Our generation, and we are not its certified backup (a copy
            // made us a backup that was never certified, or a forged one):
            // the witness grants the next generation only to the holder or
            // that backup, so our request will never be granted. Stop
            // asking and listen to the primary again for a suspicion's
            // time: if it is there, what it sends sorts us out.
            tracing::info!(node = %me, %generation, "not the certified backup: promotion refused");
            let b = self.backup_mut();
            b.grant_refused = b.grant_wanted.take();
            self.peer_heard = self.now;
        }
    }

    fn promote_backup(&mut self, generation: Generation) {
        let Role::Backup(b) = &self.role else {
            unreachable!("promote a backup")
        };
        let (checkpoint, lineage) = (b.applied, b.lineage.clone());
        self.promote(generation, checkpoint, lineage);
    }

    /// Resume the standby as of `checkpoint` as the primary of `generation`.
    fn promote(&mut self, generation: Generation, checkpoint: CheckpointId, lineage: Lineage) {
        let config = self.config.clone();
        self.adopt_generation(generation);
        self.stats.promotions += 1;
        tracing::info!(node = %self.config.me, %generation, restored = ?checkpoint, "promoted to primary");
        self.push(Action::RestoreAndResume { checkpoint });
        let primary = Primary::running(&config, lineage, Pairing::Solo, generation, self.now);
        self.role = Role::Primary(Box::new(primary));
        self.peer_heard = self.now;
        self.tick();
    }

    pub(super) fn on_joining_message(&mut self, msg: Message) {
        let generation = match &msg {
            Message::Heartbeat { generation, .. }
            | Message::Delta { generation, .. }
            | Message::Copy { generation, .. } => *generation,
            _ => {
                self.stats.dropped_unexpected += 1;
                return;
            }
        };
        if generation < self.generation {
            self.stats.dropped_stale += 1;
            return;
        }
        match msg {
            Message::Copy {
                generation,
                session,
                round,
                base,
                chunk,
            } => {
                self.peer_heard = self.now;
                self.on_copy(generation, session, round, base, chunk);
            }
            Message::Heartbeat { .. } => self.peer_heard = self.now,
            _ => self.stats.dropped_unexpected += 1,
        }
    }

    fn on_copy(
        &mut self,
        generation: Generation,
        session: Epoch,
        round: u32,
        base: Option<CheckpointId>,
        chunk: Chunk,
    ) {
        let bytes_max = self.config.transfer_bytes_max;
        let Role::Joining(j) = &mut self.role else {
            unreachable!("joiner")
        };
        let same_session = j
            .copy
            .as_ref()
            .is_some_and(|c| c.generation == generation && c.session == session);
        if !same_session {
            if round != 0 {
                // A session we did not see begin (or whose start a forged
                // round 0 displaced): its rounds are of no use to us. Forget
                // ours and Join again, so that the primary begins anew.
                tracing::debug!(node = %self.config.me, round, %session, "copy round of another session dropped");
                self.stats.dropped_unexpected += 1;
                j.copy = None;
                return;
            }
            j.copy = Some(CopyProgress {
                generation,
                session,
                round: 0,
                applied_digest: None,
                assembly: None,
            });
            // The copy overwrites the disk: whatever checkpoint it held is
            // no claim any more, should this session be given up.
            j.disk = None;
        }
        let copy = j.copy.as_mut().expect("set above");
        if round < copy.round {
            // A duplicate of the round last applied: ack again (the ack was
            // lost). Of an older one, or with other content: nothing the
            // primary waits for.
            if round + 1 == copy.round && copy.applied_digest == Some(chunk.digest) {
                self.ack_copy(session, round, chunk.digest);
            } else {
                self.stats.dropped_stale += 1;
            }
            return;
        }
        if round > copy.round {
            // The primary sends a round only once we acknowledged the one
            // before (a forged ack moved it on): start over with a Join.
            tracing::debug!(node = %self.config.me, round, expected = copy.round, "copy round out of order: joining again");
            self.stats.dropped_contradicting += 1;
            j.copy = None;
            return;
        }
        let assembly = copy
            .assembly
            .get_or_insert_with(|| Assembly::new(chunk.count, chunk.digest));
        let offered = assembly.offer(chunk, bytes_max);
        let complete = assembly.is_complete();
        if !self.count_offered(offered) || !complete {
            return;
        }
        let Role::Joining(j) = &mut self.role else {
            unreachable!("joiner")
        };
        // The standby is replaced from here on.
        j.resumable = None;
        let copy = j.copy.as_mut().expect("set above");
        let assembly = copy.assembly.take().expect("complete");
        let digest = assembly.digest();
        copy.round += 1;
        copy.applied_digest = Some(digest);
        self.push(Action::ApplyCopy {
            round,
            copy: assembly.into_bytes(),
        });
        self.ack_copy(session, round, digest);
        if let Some(base) = base {
            let mut backup = Backup::new(base, digest);
            backup.copied = Some((session, round, digest));
            self.role = Role::Backup(backup);
        }
    }
}
