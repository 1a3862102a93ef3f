//! One regression test for each way a hostile (or merely unlucky) peer made
//! a node panic, stall or grow: well-formed frames with values that
//! contradict what the node knows. Each failed before the fix.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use protocol::wire::{Chunk, PeerRole};
use protocol::{
    Action, CheckpointId, Codec, Digest, Envelope, Epoch, Generation, Level, Message, Node, NodeId,
    Protection, RoleKind, Start, Time,
};
use std::collections::BTreeMap;

/// A chunk carrying the digest of its own bytes: with `count` 1, a whole
/// transfer that is consistent in itself.
fn chunk(index: u32, count: u32, data: &[u8]) -> Chunk {
    Chunk {
        index,
        count,
        digest: Digest::of(data),
        data: data.to_vec().into(),
    }
}

fn node(me: NodeId, start: Start) -> Node {
    Node::new(config(me, Level::Ft), Codec::plain(), start, Time(0)).unwrap()
}

fn drain(node: &mut Node) -> Vec<Action> {
    std::iter::from_fn(|| node.poll_action()).collect()
}

fn backup() -> Node {
    let start = Start::Backup {
        generation: Generation(1),
    };
    node(B, start)
}

fn joiner() -> Node {
    let start = Start::Restart {
        generation: Generation(1),
        disk: None,
    };
    node(B, start)
}

fn copy(base: Option<(u64, u64)>) -> Message {
    Message::Copy {
        generation: Generation(1),
        session: Epoch(5),
        round: 0,
        base: base.map(|(g, e)| CheckpointId {
            generation: Generation(g),
            epoch: Epoch(e),
        }),
        chunk: chunk(0, 1, &[7]),
    }
}

/// `lineage.rs:36`: a Copy whose base generation is above the copy's own,
/// then a Delta of the copy's generation.
#[test]
fn a_copy_based_above_its_own_generation_is_refused() {
    let mut b = joiner();
    b.handle_message(Time(1), A, copy(Some((7, 9))));
    let delta = Message::Delta {
        generation: Generation(1),
        epoch: Epoch(10),
        chunk: chunk(0, 1, &[8]),
    };
    b.handle_message(Time(2), A, delta.clone());
    assert_eq!(b.role(), RoleKind::Joining, "the copy made it nothing");
    assert_eq!(b.stats().dropped_contradicting, 1);
    // The honest final round is taken, and the delta after it applied.
    b.handle_message(Time(3), A, copy(Some((1, 9))));
    b.handle_message(Time(4), A, delta);
    assert_eq!(
        b.applied(),
        Some(CheckpointId {
            generation: Generation(1),
            epoch: Epoch(10)
        })
    );
}

/// `mod.rs:336`: a backup asks the witness for g2, adopts g3 from a
/// heartbeat that names it backup, then the late g2 grant arrives. The
/// heartbeat is a claim now, which the backup takes once the witness
/// confirms it.
#[test]
fn a_late_grant_for_an_older_generation_promotes_nobody() {
    let mut b = backup();
    let suspect = Time(b.config().suspect_after_ns);
    b.handle_timeout(suspect);
    let asked = drain(&mut b).into_iter().any(|a| {
        matches!(a, Action::Send { msg: Message::GrantRequest { want, .. }, .. } if want == Generation(2))
    });
    assert!(asked, "the backup asked for g2");
    let certified = Message::Heartbeat {
        generation: Generation(3),
        role: PeerRole::Primary,
        backup: Some(B),
    };
    b.handle_message(suspect.add_ns(1), A, certified);
    assert_eq!(b.generation(), Generation(1), "a claim is not taken");
    let pinged = drain(&mut b).into_iter().any(|a| {
        matches!(a, Action::Send { to: W, msg: Message::WitnessPing { generation } } if generation == Generation(1))
    });
    assert!(pinged, "the claim is asked of the witness");
    let confirmed = Message::WitnessState {
        generation: Generation(3),
        holder: A,
        backup: Some(B),
    };
    b.handle_message(suspect.add_ns(2), W, confirmed);
    let late = Message::WitnessState {
        generation: Generation(2),
        holder: B,
        backup: None,
    };
    b.handle_message(suspect.add_ns(3), W, late);
    assert_eq!(
        (b.role(), b.generation()),
        (RoleKind::Backup, Generation(3))
    );
    assert!(
        !drain(&mut b)
            .iter()
            .any(|a| matches!(a, Action::RestoreAndResume { .. })),
        "not promoted into an older generation"
    );
    assert_eq!(b.stats().dropped_stale, 1, "{:?}", b.stats());
}

/// `types.rs:68`: a generation near `u64::MAX` adopted from a heartbeat,
/// then the backup asks for the next one.
#[test]
fn a_generation_at_the_end_of_its_counter_is_refused() {
    let mut b = backup();
    let heartbeat = Message::Heartbeat {
        generation: Generation(u64::MAX),
        role: PeerRole::Primary,
        backup: Some(B),
    };
    b.handle_message(Time(1), A, heartbeat);
    assert_eq!(b.generation(), Generation(1));
    assert_eq!(b.stats().dropped_out_of_range, 1);
    b.handle_timeout(Time(b.config().suspect_after_ns + 1));
    let wants: Vec<Generation> = drain(&mut b)
        .into_iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: Message::GrantRequest { want, .. },
                ..
            } => Some(want),
            _ => None,
        })
        .collect();
    assert_eq!(wants, vec![Generation(2)]);
}

/// `types.rs:58`: a final copy round based at epoch `u64::MAX`, then the
/// backup is promoted and opens the next epoch.
#[test]
fn an_epoch_at_the_end_of_its_counter_is_refused() {
    let mut b = joiner();
    let msg = Message::Copy {
        generation: Generation(1),
        session: Epoch(0),
        round: 0,
        base: Some(CheckpointId {
            generation: Generation(1),
            epoch: Epoch(u64::MAX),
        }),
        chunk: chunk(0, 1, &[1]),
    };
    b.handle_message(Time(1), A, msg);
    assert_eq!(b.role(), RoleKind::Joining);
    assert_eq!(b.stats().dropped_out_of_range, 1);
    let ack = Message::DeltaAck {
        generation: Generation(1),
        epoch: Epoch(u64::MAX - 1),
        digest: Digest::default(),
    };
    let mut a = node(
        A,
        Start::Primary {
            generation: Generation(1),
        },
    );
    a.handle_message(Time(1), B, ack);
    assert_eq!(a.stats().dropped_out_of_range, 1);
}

/// `backup.rs:186`: one forged chunk for the next epoch with a wrong chunk
/// count fixed that epoch's count; every real chunk was refused after.
#[test]
fn a_forged_delta_chunk_does_not_stall_the_backup() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let applied = c.node(B).applied().unwrap().epoch;
    let released = c.released(A).unwrap();
    let forged = Message::Delta {
        generation: Generation(1),
        epoch: applied.next(),
        chunk: chunk(0, 5, &[0xEE; 4]),
    };
    c.inject(B, A, forged);
    c.run_for_ms(500);
    let b = c.node(B);
    assert!(
        b.applied().unwrap().epoch.0 >= applied.0 + 10,
        "{:?}",
        b.applied()
    );
    assert!(b.stats().assemblies_replaced >= 1);
    assert!(
        c.released(A).unwrap().0 >= released.0 + 10,
        "output released again"
    );
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
}

/// `backup.rs:366`: the same for a copy round: a forged chunk of round 0
/// with a wrong count, before the primary's real round 0.
#[test]
fn a_forged_copy_chunk_does_not_stall_the_joiner() {
    let mut c = Cluster::new(Level::Ft);
    c.crash(B);
    c.run_for_ms(1000);
    assert_eq!(c.node(A).protection(), Some(Protection::Unprotected));
    c.restart(B, Generation(1));
    // B's Join is on the wire: A will begin a session named by its epoch.
    // B asked the witness first, and its answer (A holds g2) comes first.
    let grant = c.witness.grant();
    let answer = Message::WitnessState {
        generation: grant.generation,
        holder: grant.holder,
        backup: grant.backup,
    };
    c.inject(B, W, answer);
    let forged = Message::Copy {
        generation: c.node(A).generation(),
        session: c.node(A).epoch().unwrap(),
        round: 0,
        base: None,
        chunk: chunk(0, 5, &[0xEE; 4]),
    };
    c.inject(B, A, forged);
    c.run_for_ms(2000);
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    assert!(c.node(B).stats().assemblies_replaced >= 1);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
}

/// `assembly.rs:43`: empty chunks announcing `count = u32::MAX` each added
/// an entry (3 M of them took 170 MB).
#[test]
fn chunks_announcing_huge_counts_take_no_memory() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let next = c.node(B).applied().unwrap().epoch.next();
    let now = c.now;
    let b = c.node_mut(B);
    for index in 0..200_000u32 {
        let msg = Message::Delta {
            generation: Generation(1),
            epoch: next,
            chunk: chunk(index, u32::MAX, &[]),
        };
        b.handle_message(now, A, msg);
        while b.poll_action().is_some() {}
    }
    let held = b.assembling();
    assert_eq!(held.chunks, 0, "{held:?}");
    assert_eq!(b.stats().dropped_out_of_range, 200_000);
    let released = c.released(A).unwrap();
    c.run_for_ms(200);
    assert!(c.released(A).unwrap() > released);
}

/// A codec with the keys of the given links.
fn keyed(links: &[(NodeId, &[u8])], session: u64) -> Codec {
    let keys: BTreeMap<NodeId, Vec<u8>> = links.iter().map(|(n, k)| (*n, k.to_vec())).collect();
    Codec::per_pair(keys).with_session(session)
}

const AB: &[u8] = b"key of the link a-b";
const AW: &[u8] = b"key of the link a-w";
const BW: &[u8] = b"key of the link b-w";

/// The key was shared by all three nodes and `from` was not bound to it:
/// the peer could pose as the witness.
#[test]
fn the_peer_cannot_pose_as_the_witness() {
    let mut a = Node::new(
        config(A, Level::Ft),
        keyed(&[(B, AB), (W, AW)], 1),
        Start::Primary {
            generation: Generation(1),
        },
        Time(0),
    )
    .unwrap();
    let mut b_codec = keyed(&[(A, AB), (W, BW)], 1);
    let forged = Envelope {
        from: W,
        to: A,
        msg: Message::WitnessState {
            generation: Generation(9),
            holder: B,
            backup: None,
        },
    };
    a.handle_bytes(Time(1), &b_codec.encode(&forged));
    assert_eq!(a.stats().dropped_unauthenticated, 1);
    assert_eq!(
        (a.role(), a.generation()),
        (RoleKind::Primary, Generation(1))
    );
    let mut w_codec = keyed(&[(A, AW), (B, BW)], 1);
    a.handle_bytes(Time(2), &w_codec.encode(&forged));
    assert_eq!(
        a.role(),
        RoleKind::Joining,
        "the witness's own word is taken: a newer generation deposes A"
    );
}

/// Nothing ordered or dated frames: any frame could be played again.
#[test]
fn a_replayed_frame_is_dropped_and_counted() {
    let mut b = Node::new(
        config(B, Level::Ft),
        keyed(&[(A, AB), (W, BW)], 1),
        Start::Backup {
            generation: Generation(1),
        },
        Time(0),
    )
    .unwrap();
    let mut a_codec = keyed(&[(B, AB), (W, AW)], 7);
    let delta = |epoch| Envelope {
        from: A,
        to: B,
        msg: Message::Delta {
            generation: Generation(1),
            epoch: Epoch(epoch),
            chunk: chunk(0, 1, &[epoch as u8]),
        },
    };
    let first = a_codec.encode(&delta(1));
    b.handle_bytes(Time(1), &first);
    b.handle_bytes(Time(2), &first);
    assert_eq!(b.stats().dropped_replayed, 1);
    assert_eq!(b.stats().deltas_applied, 1);
    // A restarts (a later session): its new frames are taken, the old
    // session's are replays.
    let old = a_codec.encode(&delta(2));
    let mut restarted = keyed(&[(B, AB), (W, AW)], 8);
    b.handle_bytes(Time(3), &restarted.encode(&delta(2)));
    b.handle_bytes(Time(4), &old);
    assert_eq!(b.stats().dropped_replayed, 2);
    assert_eq!(b.stats().deltas_applied, 2);
}

/// The copy rounds `A` sent, newest last: (session, round, base).
fn copies_sent(c: &Cluster) -> Vec<(Epoch, u32, Option<CheckpointId>)> {
    c.log[A.0 as usize]
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg:
                    Message::Copy {
                        session,
                        round,
                        base,
                        chunk,
                        ..
                    },
                ..
            } if chunk.index == 0 => Some((*session, *round, *base)),
            _ => None,
        })
        .collect()
}

/// The 100 M-event run, seeds 1438 and 4526: a keyholder's final copy
/// round, whole and consistent in itself, named the session and round the
/// primary had in flight. The joiner became a backup of a checkpoint the
/// primary never made, its ack moved the primary on, and the primary
/// stayed in Certifying for good. The ack now names the digest of the
/// round applied, and the primary takes only the one it sent.
#[test]
fn a_forged_final_copy_round_is_not_taken_for_the_primarys() {
    let mut c = Cluster::new(Level::Ft);
    c.crash(B);
    c.run_for_ms(1000);
    c.cut.insert((A, B));
    c.restart(B, Generation(1));
    c.run_for_ms(10);
    let (session, round, _) = *copies_sent(&c).last().expect("A began a copy");
    let generation = c.node(A).generation();
    let forged = Message::Copy {
        generation,
        session,
        round,
        base: Some(CheckpointId {
            generation,
            epoch: Epoch(session.0 + 3),
        }),
        chunk: chunk(0, 1, b"evil"),
    };
    let captures_before = c.count(A, |a| matches!(a, Action::CaptureCopy { .. }));
    c.inject(B, A, forged);
    c.run_for_ms(10);
    assert_eq!(c.node(B).role(), RoleKind::Backup, "B took it");
    assert_eq!(
        c.count(A, |a| matches!(a, Action::CaptureCopy { .. })),
        captures_before,
        "its ack moved A's copy on"
    );
    assert_eq!(c.node(A).stats().dropped_contradicting, 1);
    assert_eq!(c.node(A).protection(), Some(Protection::Resyncing));
    // A's own round, sent again, tells B it is not A's backup; B joins
    // again, is copied for real and certified.
    c.cut.clear();
    c.run_for_ms(3000);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    assert_eq!(c.node(B).generation(), c.node(A).generation());
    let released = c.released(A).unwrap();
    c.run_for_ms(200);
    assert!(c.released(A).unwrap().0 >= released.0 + 5, "releasing");
}

/// The chunks of `bytes` in chunks of `size`, as a sender splits them.
fn chunks_of(bytes: &[u8], size: usize) -> Vec<Chunk> {
    let count = bytes.len().div_ceil(size) as u32;
    bytes
        .chunks(size)
        .enumerate()
        .map(|(i, data)| Chunk {
            index: i as u32,
            count,
            digest: Digest::of(bytes),
            data: data.to_vec().into(),
        })
        .collect()
}

/// A chunk with the right index, count and transfer digest but other
/// bytes (a keyholder's bug, or an authentic chunk of another transfer
/// of that name) completed the count and the delta was applied with its
/// bytes. The assembled bytes are now checked against the digest first.
#[test]
fn chunks_of_other_content_with_the_right_count_are_not_applied() {
    let mut b = backup();
    let bytes = b"delta of epoch one".to_vec();
    let honest = chunks_of(&bytes, 4);
    let mut spoiled = honest[2].clone();
    spoiled.data = b"EVIL".to_vec().into();
    let delta = |chunk: &Chunk| Message::Delta {
        generation: Generation(1),
        epoch: Epoch(1),
        chunk: chunk.clone(),
    };
    b.handle_message(Time(1), A, delta(&spoiled));
    for (i, chunk) in honest.iter().enumerate().filter(|(i, _)| *i != 2) {
        b.handle_message(Time(2 + i as u64), A, delta(chunk));
    }
    let applied = |b: &mut Node| {
        drain(b)
            .into_iter()
            .filter_map(|a| match a {
                Action::ApplyDelta { delta, .. } => Some(delta),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(applied(&mut b), Vec::<Vec<u8>>::new(), "nothing applied");
    assert_eq!(b.stats().transfers_spoiled, 1);
    assert_eq!(b.applied().unwrap().epoch, Epoch(0));
    assert_eq!(b.assembling().chunks, 0, "the spoiled chunks are dropped");
    // The retransmission assembles the delta the primary sent.
    for chunk in &honest {
        b.handle_message(Time(20), A, delta(chunk));
    }
    assert_eq!(applied(&mut b), vec![bytes]);
    assert_eq!(b.applied().unwrap().epoch, Epoch(1));
}

/// The delta ack named only an epoch: a forged or stale one released the
/// output of epochs the backup never held. It names the digest of the
/// delta now, and only the one the primary shipped for that epoch counts.
#[test]
fn an_ack_that_names_other_content_releases_nothing() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.cut.insert((B, A));
    c.run_for_ms(60);
    let released = c.released(A).unwrap();
    let open = c.node(A).epoch().unwrap();
    let shipped: Vec<(Epoch, Digest)> = c.log[A.0 as usize]
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                msg: Message::Delta { epoch, chunk, .. },
                ..
            } if chunk.index == 0 => Some((*epoch, chunk.digest)),
            _ => None,
        })
        .collect();
    let newest = Epoch(open.0 - 1);
    let ack = |epoch, digest| Message::DeltaAck {
        generation: Generation(1),
        epoch,
        digest,
    };
    // Forged (no digest the primary made), and stale (the digest of
    // another epoch's delta).
    let other = shipped.iter().find(|(e, _)| *e != newest).unwrap().1;
    c.inject(A, B, ack(newest, Digest::default()));
    c.inject(A, B, ack(newest, other));
    assert_eq!(c.released(A), Some(released), "released early");
    assert_eq!(c.node(A).stats().dropped_contradicting, 2);
    // The real ack releases.
    let real = shipped.iter().rev().find(|(e, _)| *e == newest).unwrap().1;
    c.inject(A, B, ack(newest, real));
    assert_eq!(c.released(A), Some(newest));
}

/// Found by the 100 M-event run after the digests: a backup asking to
/// promote was told by the witness it is not the certified backup, and
/// stopped asking; its request, already on its way, was granted, and the
/// grant, arriving next, was taken for a newer generation without us:
/// the holder of the new generation joined again and nobody ran the
/// guest. A refused request is not asked again, but its grant, should it
/// come, is taken.
#[test]
fn a_grant_that_comes_after_a_refusal_is_taken() {
    let mut b = promoting_backup();
    let refused = witness_says(1, A);
    b.handle_message(Time(2), W, refused);
    assert_eq!(b.role(), RoleKind::Backup);
    drain(&mut b);
    let granted = witness_says(2, B);
    b.handle_message(Time(3), W, granted);
    assert_eq!(
        (b.role(), b.generation()),
        (RoleKind::Primary, Generation(2))
    );
    assert!(drain(&mut b)
        .iter()
        .any(|a| matches!(a, Action::RestoreAndResume { .. })));
}

/// The 100 M hostile run, seed 7706: a backup asked to promote, was
/// refused (a forged witness state), then a forged delta beyond the window
/// made it a joiner, and only then did the witness grant its request. It
/// held the generation as a joiner, with nothing to run; its deposed
/// primary joined too, and the two waited for each other's copy for good.
/// The joiner keeps the standby it was a backup of while its request may
/// be granted, and resumes it when it is.
#[test]
fn a_grant_that_comes_after_the_backup_became_a_joiner_resumes_its_standby() {
    let mut b = promoting_backup();
    let refused = witness_says(1, A);
    b.handle_message(Time(2), W, refused.clone());
    let beyond = delta_beyond_the_window();
    b.handle_message(Time(3), A, beyond);
    assert_eq!(b.role(), RoleKind::Joining);
    drain(&mut b);
    // An answer of the generation it has does not make the standby moot.
    b.handle_message(Time(4), W, refused);
    assert_eq!(b.role(), RoleKind::Joining);
    drain(&mut b);
    let granted = witness_says(2, B);
    b.handle_message(Time(5), W, granted);
    assert_eq!(
        (b.role(), b.generation()),
        (RoleKind::Primary, Generation(2))
    );
    let resumed = drain(&mut b).into_iter().find_map(|a| match a {
        Action::RestoreAndResume { checkpoint } => Some(checkpoint),
        _ => None,
    });
    assert_eq!(
        resumed.map(|c| c.epoch),
        Some(Epoch(0)),
        "the standby it applied"
    );
}

/// Once another host is granted the generation a joiner asked for as a
/// backup, the standby it kept is moot: no later statement resumes it.
#[test]
fn a_joiner_resumes_no_standby_once_it_is_moot() {
    let mut b = promoting_backup();
    let beyond = delta_beyond_the_window();
    // Asking (not refused): the delta is dropped, the backup stays one.
    b.handle_message(Time(2), A, beyond.clone());
    assert_eq!(b.role(), RoleKind::Backup);
    let refused = witness_says(1, A);
    b.handle_message(Time(3), W, refused);
    b.handle_message(Time(4), A, beyond);
    assert_eq!(b.role(), RoleKind::Joining);
    let to_a = witness_says(2, A);
    b.handle_message(Time(5), W, to_a);
    drain(&mut b);
    // Generation 2 is A's: a statement naming us holder of it now is not
    // the grant we asked for (that one was refused for good).
    let late = witness_says(2, B);
    b.handle_message(Time(6), W, late);
    assert_eq!(b.role(), RoleKind::Joining);
    assert!(!drain(&mut b)
        .iter()
        .any(|a| matches!(a, Action::RestoreAndResume { .. })));
}

/// `tests/daemons.rs`, on a loaded machine: a joiner just made a backup
/// did not hear its primary for a suspicion's time (a slow host) and asked
/// to promote; the primary's own request certifying it was granted first,
/// and the witness's word of it made the backup ask for the next
/// generation at once, which it was granted as the certified backup: a
/// live primary deposed. The certification shows the primary alive: the
/// backup stays one, and suspects it again only a suspicion's time later.
#[test]
fn a_certification_ends_a_suspicion_instead_of_deposing_the_primary() {
    let mut b = backup();
    let suspect = b.config().suspect_after_ns;
    let at = Time(suspect + 1);
    b.handle_timeout(at);
    let asked = |actions: &[Action], want: u64| {
        actions.iter().any(|a| {
            matches!(a, Action::Send { msg: Message::GrantRequest { want: w, .. }, .. }
                if *w == Generation(want))
        })
    };
    assert!(asked(&drain(&mut b), 2), "a suspicion asks to promote");
    let certified = Message::WitnessState {
        generation: Generation(2),
        holder: A,
        backup: Some(B),
    };
    b.handle_message(at, W, certified);
    assert_eq!(
        (b.role(), b.generation()),
        (RoleKind::Backup, Generation(2))
    );
    assert!(
        !asked(&drain(&mut b), 3),
        "no promotion over a live primary"
    );
    b.handle_timeout(Time(at.0 + suspect / 2));
    assert!(!asked(&drain(&mut b), 3), "the suspicion is not back yet");
    b.handle_timeout(Time(at.0 + suspect + 1));
    assert!(
        asked(&drain(&mut b), 3),
        "silent a suspicion's time: asks again"
    );
}

/// A backup at generation 1 whose primary restarted (a Join came): it asks
/// the witness for generation 2.
fn promoting_backup() -> Node {
    let mut b = backup();
    let join = Message::Join {
        generation: Generation(1),
        disk: None,
    };
    b.handle_message(Time(1), A, join);
    b
}

/// The witness's state: `holder` holds `generation`, with no backup.
fn witness_says(generation: u64, holder: NodeId) -> Message {
    Message::WitnessState {
        generation: Generation(generation),
        holder,
        backup: None,
    }
}

/// A delta of generation 1 far past anything a backup acknowledged.
fn delta_beyond_the_window() -> Message {
    Message::Delta {
        generation: Generation(1),
        epoch: Epoch(1_000),
        chunk: chunk(0, 1, &[8]),
    }
}

/// Whether `node`'s log ever persisted a generation above `max`.
fn persisted_above(c: &Cluster, id: NodeId, max: Generation) -> bool {
    c.log[id.0 as usize]
        .iter()
        .any(|a| matches!(a, Action::PersistGeneration(g) if *g > max))
}

/// A pair that is protected, in one generation, and releasing output.
fn assert_protected_and_releasing(c: &mut Cluster, primary: NodeId, backup: NodeId) {
    assert_eq!(c.node(primary).role(), RoleKind::Primary);
    assert_eq!(c.node(primary).protection(), Some(Protection::Protected));
    assert_eq!(c.node(backup).role(), RoleKind::Backup);
    assert_eq!(c.node(backup).generation(), c.node(primary).generation());
    let released = c.released(primary).unwrap();
    c.run_for_ms(200);
    assert!(
        c.released(primary).unwrap().0 >= released.0 + 5,
        "releasing"
    );
}

/// Hole 4: a node adopted a newer generation on its peer's word. A
/// keyholder peer named generation 9, which the witness never granted, and
/// the primary stopped its guest, persisted 9 and joined; its backup, at
/// 1, could never be granted 2 on top of a witness at 1 with a peer at 9,
/// and nobody ran the guest again. A newer generation from the peer is a
/// claim now: the node asks the witness and acts on its answer.
#[test]
fn a_generation_the_witness_never_granted_deposes_no_primary() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let stops = c.count(A, |a| matches!(a, Action::StopGuest));
    for msg in [
        Message::Heartbeat {
            generation: Generation(9),
            role: PeerRole::Primary,
            backup: None,
        },
        Message::Join {
            generation: Generation(9),
            disk: None,
        },
        Message::DeltaAck {
            generation: Generation(9),
            epoch: Epoch(1),
            digest: Digest::default(),
        },
    ] {
        c.inject(A, B, msg);
        c.run_for_ms(10);
        assert_eq!(c.node(A).role(), RoleKind::Primary, "deposed by a claim");
    }
    assert_eq!(c.count(A, |a| matches!(a, Action::StopGuest)), stops);
    assert_eq!(c.node(A).generation(), Generation(1));
    assert!(!persisted_above(&c, A, Generation(1)));
    assert_eq!(c.node(A).stats().dropped_unconfirmed, 3);
    assert!(c.node(A).stats().claims_refuted >= 1);
    assert_protected_and_releasing(&mut c, A, B);
}

/// Hole 4 on the backup: a heartbeat naming generation 9 with us as the
/// certified backup was adopted. The backup then took the primary's deltas
/// of generation 1 for stale ones and asked, when it suspected the
/// primary, for generation 10, which the witness (at 1) never grants.
#[test]
fn a_backup_takes_no_generation_the_witness_never_granted() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let forged = Message::Heartbeat {
        generation: Generation(9),
        role: PeerRole::Primary,
        backup: Some(B),
    };
    c.inject(B, A, forged);
    c.run_for_ms(10);
    assert_eq!(c.node(B).generation(), Generation(1));
    assert!(!persisted_above(&c, B, Generation(1)));
    assert_eq!(c.node(B).stats().dropped_unconfirmed, 1);
    assert_protected_and_releasing(&mut c, A, B);
    // Its own failover is intact: the primary dies, the backup is granted
    // the next generation and promoted.
    c.crash(A);
    c.run_for_ms(1000);
    assert_eq!(
        (c.node(B).role(), c.node(B).generation()),
        (RoleKind::Primary, Generation(2))
    );
}

/// Hole 4 on a joiner: it took the generation of whatever copy round or
/// heartbeat reached it. A forged one of generation 9 made it persist 9,
/// and the real primary's copy, of its own older generation, was stale to
/// it for good. A joiner takes a generation from the witness only.
#[test]
fn a_joiner_takes_no_generation_the_witness_never_granted() {
    let mut c = Cluster::new(Level::Ft);
    c.crash(B);
    c.run_for_ms(1000);
    let generation = c.node(A).generation();
    assert_eq!(generation, Generation(2), "A went on alone");
    c.restart(B, Generation(1));
    let forged = [
        Message::Heartbeat {
            generation: Generation(9),
            role: PeerRole::Primary,
            backup: None,
        },
        Message::Copy {
            generation: Generation(9),
            session: Epoch(1),
            round: 0,
            base: None,
            chunk: chunk(0, 1, b"evil"),
        },
    ];
    for msg in forged {
        c.inject(B, A, msg);
    }
    c.run_for_ms(3000);
    let granted = c.witness.grant().generation;
    assert!(!persisted_above(&c, B, granted), "granted {granted}");
    assert_protected_and_releasing(&mut c, A, B);
}
