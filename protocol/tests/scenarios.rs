//! Whole-protocol scenarios over the deterministic test driver.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use protocol::{
    Action, Codec, DiskCopy, Epoch, Generation, Level, Message, Protection, RoleKind, Start,
};

#[test]
fn ft_releases_only_acknowledged_epochs() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let released = c.released(A).expect("acks arrive, output goes out");
    assert!(
        released.0 >= 3,
        "about five 20 ms epochs acked, got {released}"
    );
    assert_eq!(
        c.node(B).applied().unwrap().epoch,
        released,
        "released is exactly what B holds"
    );
    // Acks stop coming (shorter than the suspicion timeout): output stops too.
    c.cut.insert((B, A));
    c.run_for_ms(150);
    assert_eq!(c.released(A), Some(released), "no ack, no release");
    assert!(
        c.node(A).epoch().unwrap().0 > released.0 + 1,
        "the guest kept running"
    );
    c.cut.clear();
    c.run_for_ms(300);
    assert!(
        c.released(A).unwrap() > released,
        "acks resume, output resumes"
    );
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
}

#[test]
fn an_idle_guest_ends_its_epoch_early_at_ft_and_only_then() {
    let mut c = Cluster::new(Level::Ft);
    // Epochs end every 20 ms: one begins at 40 ms.
    c.run_for_ms(40);
    let open = c.node(A).epoch().unwrap();
    let captures = |c: &Cluster| c.count(A, |a| matches!(a, Action::CaptureDelta { .. }));
    let before = captures(&c);
    let idle = |c: &mut Cluster| {
        let now = c.now;
        c.node_mut(A).handle_guest_idle(now);
        c.drain(0);
    };
    // Too young to end: it ends once epoch_idle_min_ns old, not at 20 ms.
    idle(&mut c);
    assert_eq!(
        c.node(A).epoch(),
        Some(open),
        "younger than epoch_idle_min_ns"
    );
    assert_eq!(c.node(A).poll_timeout(), c.now.add_ns(MS));
    c.run_until(c.now.add_ns(MS));
    assert_eq!(captures(&c), before + 1, "captured at its minimum age");
    assert_eq!(c.node(A).epoch(), Some(open.next()));
    assert_eq!(c.released(A), Some(open), "released at the ack, 1 ms in");
    // With a delta in flight the early end waits for its ack.
    c.run_until(c.now.add_ns(2 * MS));
    idle(&mut c);
    assert_eq!(
        c.node(A).epoch(),
        Some(open.next().next()),
        "no delta in flight: ends at once"
    );
    // Its delta is not delivered yet.
    c.now = c.now.add_ns(2 * MS);
    idle(&mut c);
    assert_eq!(
        c.node(A).epoch(),
        Some(open.next().next()),
        "a delta is unacknowledged"
    );
    c.deliver_all();
    assert_eq!(
        c.node(A).epoch(),
        Some(open.next().next().next()),
        "the ack ended it"
    );
    assert_eq!(c.node(A).stats().idle_epoch_ends, 3);
    // A guest that did not go idle ends its epochs at the timer.
    let at = c.now;
    c.run_until(at.add_ns(19 * MS));
    assert_eq!(c.node(A).stats().idle_epoch_ends, 3);

    // At ha output is never held for an ack: nothing ends early.
    let mut c = Cluster::new(Level::Ha);
    c.run_for_ms(40);
    let open = c.node(A).epoch().unwrap();
    c.now = c.now.add_ns(3 * MS);
    idle(&mut c);
    c.run_until(c.now.add_ns(MS));
    assert_eq!(c.node(A).epoch(), Some(open));
    assert_eq!(c.node(A).stats().idle_epoch_ends, 0);
}

#[test]
fn ha_releases_the_open_epoch_at_once() {
    let mut c = Cluster::new(Level::Ha);
    c.cut.insert((B, A));
    c.run_for_ms(100);
    assert_eq!(
        c.released(A),
        c.node(A).epoch(),
        "ha releases without waiting for acks"
    );
}

#[test]
fn backpressure_holds_the_guest_when_deltas_are_unacknowledged() {
    let mut c = Cluster::new(Level::Ft);
    c.cut.insert((B, A));
    c.run_for_ms(200);
    let max = c.node(A).config().deltas_in_flight_max as u64;
    assert!(
        c.node(A).stats().backpressure_holds >= 1,
        "the primary held its guest"
    );
    assert_eq!(
        c.node(A).epoch(),
        Some(Epoch(max + 1)),
        "no epoch closes beyond the window"
    );
    let captures = c.count(A, |a| matches!(a, Action::CaptureDelta { .. }));
    assert_eq!(
        captures as u64, max,
        "exactly the window of deltas was captured"
    );
}

#[test]
fn failover_restores_the_last_complete_delta_never_an_incomplete_one() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let complete = c.node(B).applied().unwrap();
    let applied_before = c.count(B, |a| matches!(a, Action::ApplyDelta { .. }));
    // From now on chunk 1 of every delta is lost: deltas stay incomplete.
    c.drop_delta_chunk = Some(1);
    c.run_for_ms(100);
    assert_eq!(
        c.node(B).applied().unwrap(),
        complete,
        "incomplete deltas are not applied"
    );
    assert_eq!(
        c.count(B, |a| matches!(a, Action::ApplyDelta { .. })),
        applied_before
    );
    c.crash(A);
    c.run_for_ms(1500);
    assert_eq!(c.node(B).role(), RoleKind::Primary);
    assert_eq!(c.node(B).generation(), Generation(2));
    let restored: Vec<_> = c.log[1]
        .iter()
        .filter_map(|a| match a {
            Action::RestoreAndResume { checkpoint } => Some(*checkpoint),
            _ => None,
        })
        .collect();
    assert_eq!(
        restored,
        vec![complete],
        "one restore, from the last complete delta"
    );
    let released_by_a = c.released(A).unwrap();
    assert!(
        released_by_a <= complete.epoch,
        "everything A released survives in B"
    );
    assert!(
        c.released(B).unwrap() > complete.epoch,
        "B releases on its own"
    );
}

#[test]
fn partition_between_hosts_leaves_exactly_one_primary_then_reprotects() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.cut.insert((A, B));
    c.cut.insert((B, A));
    c.run_for_ms(2000);
    let primaries: Vec<_> = [A, B]
        .into_iter()
        .filter(|n| c.node(*n).role() == RoleKind::Primary)
        .collect();
    assert_eq!(primaries.len(), 1, "the witness lets exactly one go on");
    assert_eq!(c.witness.grant().generation, Generation(2));
    assert_eq!(c.witness.grant().holder, primaries[0]);
    c.cut.clear();
    c.run_for_ms(3000);
    let p = primaries[0];
    let other = if p == A { B } else { A };
    assert_eq!(
        c.node(p).protection(),
        Some(Protection::Protected),
        "re-protected after the heal"
    );
    assert_eq!(c.node(other).role(), RoleKind::Backup);
    assert_eq!(c.node(other).generation(), c.node(p).generation());
    assert_eq!(
        c.witness.grant().backup,
        Some(other),
        "the witness certified the new backup"
    );
}

#[test]
fn isolated_primary_stops_releasing_and_steps_down_on_return() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    for link in [(A, B), (B, A), (A, W), (W, A)] {
        c.cut.insert(link);
    }
    let released = c.released(A);
    c.run_for_ms(2000);
    assert_eq!(
        c.released(A),
        released,
        "reaching neither backup nor witness, A releases nothing"
    );
    assert_eq!(c.node(B).role(), RoleKind::Primary, "B took over");
    c.cut.clear();
    c.run_for_ms(3000);
    assert!(
        c.count(A, |a| matches!(a, Action::StopGuest)) >= 1,
        "A stopped its guest"
    );
    assert_eq!(
        c.released(A),
        released,
        "and never released again as primary"
    );
    assert_eq!(
        c.node(A).role(),
        RoleKind::Backup,
        "A came back as B's backup"
    );
    assert_eq!(c.node(B).protection(), Some(Protection::Protected));
}

#[test]
fn paused_primary_steps_down_when_it_wakes() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let released = c.released(A);
    let paused = c.nodes[0].take();
    c.run_for_ms(1500);
    assert_eq!(c.node(B).role(), RoleKind::Primary);
    c.nodes[0] = paused;
    c.run_for_ms(3000);
    assert!(c.count(A, |a| matches!(a, Action::StopGuest)) >= 1);
    assert_eq!(c.released(A), released, "a stale primary never releases");
    assert_eq!(c.node(B).protection(), Some(Protection::Protected));
}

#[test]
fn backup_crash_then_restart_is_reprotected_with_full_copy() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    assert_eq!(c.node(A).protection(), Some(Protection::Unprotected));
    assert_eq!(
        c.node(A).generation(),
        Generation(2),
        "A went on alone under a new generation"
    );
    let solo_released = c.released(A).unwrap();
    c.restart(B, Generation(1));
    c.run_for_ms(2000);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
    assert_eq!(
        c.node(A).generation(),
        Generation(3),
        "certifying the new backup took a generation"
    );
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    assert!(c.released(A).unwrap() > solo_released);
    let round0 = c.log[0].iter().find_map(|a| match a {
        Action::CaptureCopy { round: 0, disk, .. } => Some(disk.clone()),
        _ => None,
    });
    assert_eq!(
        round0,
        Some(DiskCopy::Full),
        "a restart without a known disk gets the whole disk"
    );
    assert!(
        c.count(B, |a| matches!(a, Action::ApplyCopy { .. })) >= 2,
        "pre-copy and final rounds"
    );
    // And the new pair fails over correctly.
    let applied = c.node(B).applied().unwrap();
    c.crash(A);
    c.run_for_ms(1500);
    assert_eq!(c.node(B).role(), RoleKind::Primary);
    assert_eq!(c.node(B).generation(), Generation(4));
    assert!(
        c.released(A).unwrap() <= applied.epoch,
        "what A released, B holds"
    );
    let restored = c.log[1].iter().rev().find_map(|a| match a {
        Action::RestoreAndResume { checkpoint } => Some(*checkpoint),
        _ => None,
    });
    assert_eq!(restored, Some(applied));
}

#[test]
fn returning_backup_with_a_known_disk_resyncs_only_changed_blocks() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    let disk = c.node(B).applied().unwrap();
    c.crash(B);
    c.run_for_ms(1000);
    let start = Start::Restart {
        generation: Generation(1),
        disk: Some(disk),
    };
    let node = protocol::Node::new(config(B, Level::Ft), Codec::plain(), start, c.now).unwrap();
    c.nodes[1] = Some(node);
    c.drain(1);
    c.run_for_ms(2000);
    let round0 = c.log[0].iter().find_map(|a| match a {
        Action::CaptureCopy { round: 0, disk, .. } => Some(disk.clone()),
        _ => None,
    });
    let Some(DiskCopy::Blocks(blocks)) = round0 else {
        panic!("expected an incremental resync, got {round0:?}");
    };
    // The harness writes block (epoch % 5) each epoch: all five were written since.
    assert!(!blocks.is_empty() && blocks.len() <= 5, "{blocks:?}");
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
}

#[test]
fn forged_truncated_and_garbage_frames_are_dropped_and_counted() {
    let mut c = Cluster::with_codec(Level::Ft, Codec::authenticated(b"cluster key"));
    c.run_for_ms(60);
    let epoch = c.node(A).epoch();
    let mut forger = Codec::authenticated(b"wrong key");
    let mut plain = Codec::plain();
    let msg = protocol::Message::Heartbeat {
        generation: Generation(9),
        role: protocol::wire::PeerRole::Primary,
        backup: None,
    };
    let env = protocol::Envelope {
        from: B,
        to: A,
        msg,
    };
    let now = c.now;
    let a = c.node_mut(A);
    a.handle_bytes(now, &forger.encode(&env));
    a.handle_bytes(now, &plain.encode(&env));
    let good = Codec::authenticated(b"cluster key").encode(&env);
    a.handle_bytes(now, &good[..good.len() - 1]);
    a.handle_bytes(now, b"\x00garbage");
    let stats = a.stats().clone();
    assert_eq!(stats.dropped_unauthenticated, 2, "{stats:?}");
    assert_eq!(stats.dropped_malformed, 2, "{stats:?}");
    assert_eq!(
        a.role(),
        RoleKind::Primary,
        "a forged newer generation changed nothing"
    );
    assert_eq!(a.generation(), Generation(1));
    assert_eq!(a.epoch(), epoch);
}

/// Restarts `B`, which goes silent as soon as it takes its first copy
/// chunk: a joiner mid-copy that `A` hears nothing from.
fn restart_into_a_silent_copy(c: &mut Cluster) {
    c.silence_after_copy = Some(B);
    c.restart(B, Generation(1));
    c.run_for_ms(50);
    assert!(
        c.cut.contains(&(B, A)),
        "B took a copy chunk and went silent"
    );
    assert_eq!(c.node(B).role(), RoleKind::Joining);
    assert_eq!(c.node(A).protection(), Some(Protection::Resyncing));
}

#[test]
fn a_joiner_busy_for_longer_than_suspicion_keeps_its_copy_session() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    restart_into_a_silent_copy(&mut c);
    let suspect_ms = c.node(A).config().suspect_after_ns / MS;
    // Silent twice as long as a backup may be: a joiner applying a big round.
    c.run_for_ms(2 * suspect_ms);
    assert_eq!(
        c.node(A).protection(),
        Some(Protection::Resyncing),
        "the session waits for a busy joiner"
    );
    c.cut.clear();
    c.run_for_ms(3000);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
}

#[test]
fn a_joiner_whose_session_was_given_up_is_copied_again() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    restart_into_a_silent_copy(&mut c);
    let copies = c.count(A, |a| matches!(a, Action::CaptureCopy { round: 0, .. }));
    // Silent past the joiner's patience: A gives the session up, while B,
    // mid-copy, only heartbeats. Its heartbeat must be taken as its Join.
    let patience_ms = c.node(A).config().suspect_after_ns * 8 / MS;
    c.run_for_ms(patience_ms + 500);
    assert_eq!(c.node(A).protection(), Some(Protection::Unprotected));
    assert_eq!(c.node(B).role(), RoleKind::Joining);
    c.cut.clear();
    c.run_for_ms(3000);
    assert_eq!(
        c.node(A).protection(),
        Some(Protection::Protected),
        "the joiner is copied again and certified"
    );
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    assert!(
        c.count(A, |a| matches!(a, Action::CaptureCopy { round: 0, .. })) > copies,
        "a new session began"
    );
}

#[test]
fn a_joiner_that_asks_again_while_round_0_is_read_keeps_its_session() {
    let mut c = Cluster::new(Level::Ft);
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    // Round 0 of a large guest is read over many epochs; the joiner has
    // been sent nothing meanwhile and asks again every heartbeat.
    c.hold_first_round = true;
    c.restart(B, Generation(1));
    let patience_ms = c.node(A).config().suspect_after_ns * 8 / MS;
    c.run_for_ms(2 * patience_ms);
    assert!(c.first_round_held.is_some(), "round 0 is being read");
    let round_0 = |c: &Cluster| c.count(A, |a| matches!(a, Action::CaptureCopy { round: 0, .. }));
    assert_eq!(
        round_0(&c),
        1,
        "the joiner's repeated Joins began no new session"
    );
    assert_eq!(
        c.node(A).protection(),
        Some(Protection::Resyncing),
        "a joiner that keeps asking is alive"
    );
    c.release_first_round();
    c.run_for_ms(3000);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    assert_eq!(round_0(&c), 1, "one session copied it");
}

#[test]
fn a_large_round_is_not_sent_again_before_it_could_arrive() {
    let mut c = Cluster::tuned(Level::Ft, Codec::plain(), |config| {
        config.chunk_bytes_max = 64 * 1024;
        config.transfer_bytes_per_sec_min = 50 << 20;
    });
    c.first_round_bytes = 5 << 20; // 100 ms at 50 MiB/s
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    restart_into_a_silent_copy(&mut c); // 50 ms since round 0 left
    let sent = |c: &Cluster| {
        c.count(A, |a| {
            matches!(
                a,
                Action::Send {
                    msg: Message::Copy { round: 0, .. },
                    ..
                }
            )
        })
    };
    let chunks = sent(&c);
    assert_eq!(chunks, 80);
    let retransmit_ms = c.node(A).config().retransmit_after_ns / MS;
    // Past the plain retransmit wait, but not past the round's transfer time.
    c.run_for_ms(retransmit_ms);
    assert_eq!(
        sent(&c),
        chunks,
        "not sent again while it may still be arriving"
    );
    c.run_for_ms(100);
    assert_eq!(
        sent(&c),
        2 * chunks,
        "sent again once it could have arrived"
    );
}

#[test]
fn a_copy_round_of_more_chunks_than_the_action_queue_holds_reprotects() {
    // A guest of 8 MiB in 1 KiB chunks: one capture, 8 Ki sends, twice
    // the queue's fixed bound (a Linux guest's 256 MiB in the simulator's
    // 8 KiB chunks is 32 Ki).
    let mut c = Cluster::tuned(Level::Ft, Codec::plain(), |config| {
        config.chunk_bytes_max = 1024;
        config.transfer_bytes_max = 16 << 20;
    });
    c.first_round_bytes = 8 << 20;
    c.run_for_ms(100);
    c.crash(B);
    c.run_for_ms(1000);
    c.restart(B, Generation(1));
    c.run_for_ms(3000);
    assert_eq!(c.node(A).protection(), Some(Protection::Protected));
    assert_eq!(c.node(B).role(), RoleKind::Backup);
    let sent = c.count(A, |a| {
        matches!(
            a,
            Action::Send {
                msg: Message::Copy { round: 0, .. },
                ..
            }
        )
    });
    assert!(sent >= 8 << 10, "round 0 went in {sent} chunks");
}
