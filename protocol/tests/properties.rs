//! Properties over random input: the codec round-trips, arbitrary bytes
//! never panic the decoder or a node, and random sequences of deliveries,
//! losses, crashes and timeouts keep every invariant (the nodes assert
//! theirs on every input) and never let two hosts release in one generation.

#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

mod common;

use common::*;
use hmac::{Hmac, Mac};
use protocol::wire::{Chunk, PeerRole, Stamp, MAGIC, VERSION};
use protocol::{
    CheckpointId, Codec, DecodeError, Digest, Envelope, Epoch, Generation, Level, Message, NodeId,
    Time,
};
use quickcheck::{quickcheck, Arbitrary, Gen, TestResult};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
struct AnyMessage(Message);

fn gen_u64(g: &mut Gen) -> u64 {
    u64::arbitrary(g) % 1000
}

fn checkpoint(g: &mut Gen) -> Option<CheckpointId> {
    bool::arbitrary(g).then(|| CheckpointId {
        generation: Generation(gen_u64(g)),
        epoch: Epoch(gen_u64(g)),
    })
}

fn digest(g: &mut Gen) -> Digest {
    Digest(std::array::from_fn(|_| u8::arbitrary(g)))
}

fn chunk(g: &mut Gen) -> Chunk {
    let count = u32::arbitrary(g) % 8 + 1;
    Chunk {
        index: u32::arbitrary(g) % count,
        count,
        digest: digest(g),
        data: Vec::<u8>::arbitrary(g).into(),
    }
}

/// A frame as the wire format lays it out (see `protocol::wire`), written
/// here from the layout rather than by the codec, around any body.
fn frame_around(kind: u8, body: &[u8], stamp: Stamp, key: Option<&[u8]>) -> Vec<u8> {
    let mut frame = MAGIC.to_vec();
    frame.extend_from_slice(&[VERSION, u8::from(key.is_some()), kind, 0, 1]);
    frame.extend_from_slice(&stamp.session.to_le_bytes());
    frame.extend_from_slice(&stamp.seq.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(body);
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    if let Some(key) = key {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
        mac.update(&frame);
        frame.extend_from_slice(&mac.finalize().into_bytes());
    }
    frame
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let node = |g: &mut Gen| bool::arbitrary(g).then(|| NodeId(u8::arbitrary(g)));
        let generation = Generation(gen_u64(g));
        let msg = match u8::arbitrary(g) % 9 {
            0 => Message::Heartbeat {
                generation,
                role: *g
                    .choose(&[PeerRole::Primary, PeerRole::Backup, PeerRole::Joining])
                    .unwrap(),
                backup: node(g),
            },
            1 => Message::Delta {
                generation,
                epoch: Epoch(gen_u64(g)),
                chunk: chunk(g),
            },
            2 => Message::DeltaAck {
                generation,
                epoch: Epoch(gen_u64(g)),
                digest: digest(g),
            },
            3 => Message::Copy {
                generation,
                session: Epoch(gen_u64(g)),
                round: u32::arbitrary(g),
                base: checkpoint(g),
                chunk: chunk(g),
            },
            4 => Message::CopyAck {
                generation,
                session: Epoch(gen_u64(g)),
                round: u32::arbitrary(g),
                digest: digest(g),
            },
            5 => Message::Join {
                generation,
                disk: checkpoint(g),
            },
            6 => Message::GrantRequest {
                want: generation,
                known: Generation(gen_u64(g)),
                backup: node(g),
            },
            7 => Message::WitnessPing { generation },
            _ => Message::WitnessState {
                generation,
                holder: NodeId(u8::arbitrary(g)),
                backup: node(g),
            },
        };
        AnyMessage(msg)
    }
}

quickcheck! {
    fn codec_round_trips(msg: AnyMessage, from: u8, to: u8, keyed: bool) -> bool {
        let mut codec = if keyed { Codec::authenticated(b"k") } else { Codec::plain() };
        let env = Envelope { from: NodeId(from), to: NodeId(to), msg: msg.0 };
        let frame = codec.encode(&env);
        let first = codec.decode(&frame);
        let again = codec.decode(&frame);
        first == Ok(env) && (!keyed || matches!(again, Err(DecodeError::Replayed { .. })))
    }

    fn decoding_random_bytes_never_panics(bytes: Vec<u8>) -> bool {
        let _ = Codec::plain().decode(&bytes);
        let _ = Codec::authenticated(b"k").decode(&bytes);
        true
    }

    /// Random bodies in frames whose header, checksum and tag are good: the
    /// body decoder itself is what answers.
    fn decoding_framed_random_bodies_never_panics(kind: u8, body: Vec<u8>, keyed: bool) -> bool {
        let kind = kind % 12;
        let key: &[u8] = b"k";
        let stamp = Stamp { session: 3, seq: 9 };
        let frame = frame_around(kind, &body, stamp, keyed.then_some(key));
        let codec = if keyed { Codec::authenticated(key) } else { Codec::plain() };
        match codec.open(&frame) {
            Ok(opened) => {
                opened.stamp == stamp && codec.encode_stamped(&opened.envelope, stamp) == frame
            }
            Err(DecodeError::Malformed(_) | DecodeError::UnknownKind(_)) => true,
            Err(other) => panic!("a good frame was refused before its body: {other}"),
        }
    }

    fn a_corrupted_frame_is_rejected(msg: AnyMessage, at: usize, flip: u8) -> TestResult {
        if flip == 0 {
            return TestResult::discard();
        }
        let mut codec = Codec::authenticated(b"k");
        let mut frame = codec.encode(&Envelope { from: NodeId(0), to: NodeId(1), msg: msg.0 });
        let at = at % frame.len();
        frame[at] ^= flip;
        TestResult::from_bool(codec.decode(&frame).is_err())
    }

    fn a_truncated_frame_is_rejected(msg: AnyMessage, cut: usize) -> bool {
        let mut codec = Codec::plain();
        let frame = codec.encode(&Envelope { from: NodeId(0), to: NodeId(1), msg: msg.0 });
        let cut = cut % frame.len();
        codec.decode(&frame[..cut]).is_err()
    }

    fn nodes_survive_arbitrary_bytes_and_messages(inputs: Vec<(bool, Vec<u8>, AnyMessage)>) -> bool {
        let mut c = Cluster::new(Level::Ft);
        for (raw, bytes, msg) in inputs {
            let now = c.now;
            let a = c.node_mut(A);
            if raw {
                a.handle_bytes(now, &bytes);
            } else {
                a.handle_message(now, B, msg.0);
            }
            c.drain(0);
        }
        true
    }
}

/// A step of a random run.
#[derive(Clone, Copy, Debug)]
enum Step {
    Deliver(u8),
    Lose(u8),
    Duplicate(u8),
    Advance(u16),
    Crash(bool),
    Restart(bool),
    Cut(u8),
    Heal,
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Self {
        match u8::arbitrary(g) % 16 {
            0..=5 => Step::Deliver(u8::arbitrary(g)),
            6 => Step::Lose(u8::arbitrary(g)),
            7 => Step::Duplicate(u8::arbitrary(g)),
            8..=10 => Step::Advance(u16::arbitrary(g) % 40),
            11 => Step::Advance(u16::arbitrary(g) % 600),
            12 => Step::Crash(bool::arbitrary(g)),
            13 => Step::Restart(bool::arbitrary(g)),
            14 => Step::Cut(u8::arbitrary(g)),
            _ => Step::Heal,
        }
    }
}

/// What a random run reached, to check the generator reaches the paths
/// that matter.
#[derive(Clone, Copy, Debug, Default)]
struct Reached {
    promotions: u64,
    copy_rounds: u64,
    step_downs: u64,
}

fn run_random(level: Level, steps: Vec<Step>) -> Result<Reached, String> {
    let mut c = Cluster::new(level);
    let mut releasers: BTreeMap<Generation, NodeId> = BTreeMap::new();
    let mut logged = [0usize; 2];
    let links = [(A, B), (B, A), (A, W), (W, A), (B, W), (W, B)];
    for step in steps {
        match step {
            Step::Deliver(i) | Step::Lose(i) | Step::Duplicate(i) if !c.network.is_empty() => {
                let i = usize::from(i) % c.network.len();
                let item = c.network.remove(i).expect("index in range");
                if let Step::Duplicate(_) = step {
                    c.network.push_back(item.clone());
                }
                if !matches!(step, Step::Lose(_)) {
                    c.network.push_front(item);
                    deliver_one(&mut c);
                }
            }
            Step::Deliver(_) | Step::Lose(_) | Step::Duplicate(_) => {}
            Step::Advance(ms) => {
                c.now = c.now.add_ns(u64::from(ms) * MS);
                for i in 0..2 {
                    if let Some(node) = c.nodes[i].as_mut() {
                        node.handle_timeout(c.now);
                        c.drain(i);
                    }
                }
            }
            Step::Crash(b) => c.crash(if b { B } else { A }),
            Step::Restart(b) => {
                let id = if b { B } else { A };
                if c.nodes[id.0 as usize].is_none() {
                    // The persisted generation is the last one the host announced.
                    let generation = persisted(&c, id);
                    c.restart(id, generation);
                }
            }
            Step::Cut(l) => {
                c.cut.insert(links[usize::from(l) % links.len()]);
            }
            Step::Heal => c.cut.clear(),
        }
        // S1 over the actions logged since the last step.
        for i in 0..2 {
            let id = NodeId(i as u8);
            for action in &c.log[i][logged[i]..] {
                if let protocol::Action::ReleaseOutput { .. } = action {
                    let generation = generation_at_release(&c, id);
                    if let Some(other) = releasers.insert(generation, id) {
                        if other != id {
                            return Err(format!("{other} and {id} both released in {generation}"));
                        }
                    }
                }
            }
            logged[i] = c.log[i].len();
        }
    }
    let mut reached = Reached::default();
    for log in &c.log {
        for action in log {
            match action {
                protocol::Action::RestoreAndResume { .. } => reached.promotions += 1,
                protocol::Action::ApplyCopy { .. } => reached.copy_rounds += 1,
                protocol::Action::StopGuest => reached.step_downs += 1,
                _ => {}
            }
        }
    }
    Ok(reached)
}

/// The generation a host was in when it last released (its node's current
/// one: the log is checked after every step, and a node announces a new
/// generation before it releases under it).
fn generation_at_release(c: &Cluster, id: NodeId) -> Generation {
    c.nodes[id.0 as usize]
        .as_ref()
        .map_or(Generation(0), |n| n.generation())
}

fn persisted(c: &Cluster, id: NodeId) -> Generation {
    c.log[id.0 as usize]
        .iter()
        .rev()
        .find_map(|a| match a {
            protocol::Action::PersistGeneration(g) => Some(*g),
            _ => None,
        })
        .unwrap_or(Generation(1))
}

fn deliver_one(c: &mut Cluster) {
    let Some((from, to, bytes)) = c.network.pop_front() else {
        return;
    };
    if c.cut.contains(&(from, to)) {
        return;
    }
    let now = c.now;
    if to == W {
        c.witness.handle_bytes(now, &bytes);
        while let Some(action) = c.witness.poll_action() {
            if let protocol::Action::Send { to, msg } = action {
                let bytes = c.codec.encode(&Envelope { from: W, to, msg });
                c.network.push_back((W, to, bytes));
            }
        }
    } else if let Some(node) = c.nodes[to.0 as usize].as_mut() {
        node.handle_bytes(now, &bytes);
        c.drain(to.0 as usize);
    }
}

#[test]
fn random_runs_keep_every_invariant_ft() {
    fn prop(steps: Vec<Step>) -> TestResult {
        match run_random(Level::Ft, steps) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    quickcheck::QuickCheck::new()
        .tests(2000)
        .rng(Gen::new(200))
        .quickcheck(prop as fn(Vec<Step>) -> TestResult);
}

#[test]
fn random_runs_keep_every_invariant_ha() {
    fn prop(steps: Vec<Step>) -> TestResult {
        match run_random(Level::Ha, steps) {
            Ok(_) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    quickcheck::QuickCheck::new()
        .tests(1000)
        .rng(Gen::new(200))
        .quickcheck(prop as fn(Vec<Step>) -> TestResult);
}

#[test]
fn random_runs_reach_failover_reprotection_and_step_down() {
    // Without this, the two properties above could pass by never leaving
    // the happy path.
    let mut total = Reached::default();
    let mut g = Gen::new(200);
    for _ in 0..2000 {
        let steps = Vec::<Step>::arbitrary(&mut g);
        let reached = run_random(Level::Ft, steps).expect("invariants hold");
        total.promotions += reached.promotions;
        total.copy_rounds += reached.copy_rounds;
        total.step_downs += reached.step_downs;
    }
    assert!(total.promotions > 0, "{total:?}");
    assert!(total.copy_rounds > 0, "{total:?}");
    assert!(total.step_downs > 0, "{total:?}");
}

#[test]
fn time_is_an_input_only() {
    // The same inputs give the same outputs: the node reads no clock.
    let run = || {
        let mut c = Cluster::new(Level::Ft);
        c.run_for_ms(500);
        (c.log.clone(), c.node(A).stats().clone())
    };
    assert_eq!(run(), run());
    let _ = Time(0);
}
