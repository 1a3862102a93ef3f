//! The witness: a tiny third host that grants each generation once, so that
//! two VM hosts that cannot see each other never both act alone.

use crate::action::{Action, Grant};
use crate::stats::Stats;
use crate::types::{NodeId, Time};
use crate::wire::{Codec, Message};
use std::collections::VecDeque;

/// Largest number of actions a single input may queue on the witness.
const WITNESS_ACTIONS_MAX: usize = 4;

/// The witness state machine. It answers every request and ping with the
/// current grant; it moves the grant forward only for the current holder or
/// the backup certified with it, and only to the very next generation, and
/// announces a new grant to the backup it certifies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Witness {
    me: NodeId,
    members: [NodeId; 2],
    grant: Grant,
    codec: Codec,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Witness {
    /// A witness for the two VM hosts `members`, starting from `grant`: the
    /// bootstrap grant on first start, or the last persisted one after a
    /// restart (a witness must never forget a grant it made).
    pub fn new(me: NodeId, members: [NodeId; 2], grant: Grant, codec: Codec) -> Witness {
        assert!(members[0] != members[1], "two distinct VM hosts");
        assert!(members.contains(&grant.holder), "the holder is a VM host");
        Witness {
            me,
            members,
            grant,
            codec,
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This witness's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The current grant.
    pub fn grant(&self) -> Grant {
        self.grant
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The codec for frames to and from this witness.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The codec, to encode frames with (encoding stamps each frame with
    /// the next sequence number of its link).
    pub fn codec_mut(&mut self) -> &mut Codec {
        &mut self.codec
    }

    /// A frame arrived. Bad frames are dropped and counted.
    pub fn handle_bytes(&mut self, now: Time, bytes: &[u8]) {
        match self.codec.decode(bytes) {
            Ok(envelope) if envelope.to == self.me => {
                self.handle_message(now, envelope.from, envelope.msg)
            }
            Ok(_) => self.stats.dropped_misaddressed += 1,
            Err(e) => self.stats.count_decode_error(&e),
        }
    }

    /// A message arrived from `from`.
    pub fn handle_message(&mut self, _now: Time, from: NodeId, msg: Message) {
        let before = self.grant;
        if !self.members.contains(&from) {
            self.stats.dropped_misaddressed += 1;
            return;
        }
        match msg {
            Message::GrantRequest {
                want,
                known,
                backup,
            } => {
                let eligible = from == self.grant.holder || Some(from) == self.grant.backup;
                let backup_ok = backup.is_none_or(|b| b != from && self.members.contains(&b));
                if want == self.grant.generation.next()
                    && known == self.grant.generation
                    && eligible
                    && backup_ok
                {
                    self.grant = Grant {
                        generation: want,
                        holder: from,
                        backup,
                    };
                    self.actions.push_back(Action::PersistGrant(self.grant));
                    // A backup certified with the grant hears of it from us
                    // at once, so that it takes the generation before the
                    // first delta of it arrives rather than take that
                    // delta as a claim to ask us about. A deposed holder
                    // or backup learns it from its own pings: announcing
                    // to it too would add a message to every failover for
                    // a step its next ping takes anyway.
                    if let Some(backup) = backup {
                        self.reply(backup);
                    }
                }
                self.reply(from);
            }
            Message::WitnessPing { .. } => self.reply(from),
            _ => self.stats.dropped_unexpected += 1,
        }
        self.check_invariants(before);
    }

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn reply(&mut self, to: NodeId) {
        self.actions.push_back(Action::Send {
            to,
            msg: Message::WitnessState {
                generation: self.grant.generation,
                holder: self.grant.holder,
                backup: self.grant.backup,
            },
        });
    }

    fn check_invariants(&self, before: Grant) {
        assert!(
            self.grant.generation >= before.generation,
            "grants only move forward"
        );
        assert!(
            self.grant.generation.0 <= before.generation.0 + 1,
            "one generation at a time"
        );
        assert!(
            self.grant.backup != Some(self.grant.holder),
            "holder is not its own backup"
        );
        assert!(
            self.actions.len() <= WITNESS_ACTIONS_MAX,
            "actions drained by the driver"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Generation;

    const A: NodeId = NodeId(0);
    const B: NodeId = NodeId(1);

    fn witness() -> Witness {
        let grant = Grant {
            generation: Generation(1),
            holder: A,
            backup: Some(B),
        };
        Witness::new(NodeId(2), [A, B], grant, Codec::plain())
    }

    fn request(w: &mut Witness, from: NodeId, want: u64, known: u64) -> Grant {
        w.handle_message(Time(0), from, msg_request(want, known));
        while w.poll_action().is_some() {}
        w.grant()
    }

    #[test]
    fn each_generation_is_granted_once() {
        let mut w = witness();
        assert_eq!(
            request(&mut w, B, 2, 1).holder,
            B,
            "the certified backup may take over"
        );
        let after = request(&mut w, A, 2, 1);
        assert_eq!(
            (after.generation, after.holder),
            (Generation(2), B),
            "g2 is not granted twice"
        );
        assert_eq!(
            request(&mut w, A, 3, 2).holder,
            B,
            "A is neither holder nor backup of g2"
        );
    }

    #[test]
    fn stale_and_skipping_requests_are_refused() {
        let mut w = witness();
        assert_eq!(
            request(&mut w, A, 3, 1).generation,
            Generation(1),
            "no skipping"
        );
        assert_eq!(
            request(&mut w, A, 2, 0).generation,
            Generation(1),
            "stale knowledge"
        );
        w.handle_message(
            Time(0),
            NodeId(9),
            Message::WitnessPing {
                generation: Generation(1),
            },
        );
        assert_eq!(w.stats().dropped_misaddressed, 1);
        assert!(w.poll_action().is_none(), "strangers get no answer");
    }

    #[test]
    fn a_grant_is_persisted_before_it_is_announced() {
        let mut w = witness();
        w.handle_message(Time(0), A, msg_request(2, 1));
        assert!(
            matches!(w.poll_action(), Some(Action::PersistGrant(g)) if g.generation == Generation(2))
        );
        assert_eq!(
            told_of(&mut w, 2),
            vec![A],
            "a grant without a backup: the holder only"
        );
        // A refused request is answered to the requester only.
        w.handle_message(Time(0), B, msg_request(3, 1));
        let told: Vec<Action> = std::iter::from_fn(|| w.poll_action()).collect();
        assert!(matches!(told[..], [Action::Send { to: B, .. }]), "{told:?}");
        // A grant that certifies a backup is announced to it too, first.
        let certify = Message::GrantRequest {
            want: Generation(3),
            known: Generation(2),
            backup: Some(B),
        };
        w.handle_message(Time(0), A, certify);
        assert!(matches!(w.poll_action(), Some(Action::PersistGrant(_))));
        assert_eq!(
            told_of(&mut w, 3),
            vec![B, A],
            "the certified backup hears of it"
        );
    }

    /// Whom the witness's pending actions tell of `generation`.
    fn told_of(w: &mut Witness, generation: u64) -> Vec<NodeId> {
        std::iter::from_fn(|| w.poll_action())
            .map(|a| match a {
                Action::Send {
                    to,
                    msg: Message::WitnessState { generation: g, .. },
                } if g == Generation(generation) => to,
                other => panic!("not an announcement of g{generation}: {other:?}"),
            })
            .collect()
    }

    fn msg_request(want: u64, known: u64) -> Message {
        Message::GrantRequest {
            want: Generation(want),
            known: Generation(known),
            backup: None,
        }
    }
}
