//! Golden frames: one committed frame per message kind, in
//! `tests/golden/v{VERSION}/`. Encoding the same message must give the same
//! bytes, and decoding the bytes the same message; so a change of the wire
//! format fails here unless the version goes up with it (a new version gets
//! new fixtures; the old ones stay as the record of the old format).
//!
//! To write the fixtures of a new version: `LOCKSTEP_BLESS_GOLDEN=1 cargo
//! test --release -p protocol --test golden`. It never overwrites one.

#![allow(clippy::unwrap_used)]

use protocol::wire::{Chunk, PeerRole, Stamp, VERSION};
use protocol::{CheckpointId, Codec, Digest, Envelope, Epoch, Generation, Message, NodeId};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn checkpoint(g: u64, e: u64) -> Option<CheckpointId> {
    Some(CheckpointId {
        generation: Generation(g),
        epoch: Epoch(e),
    })
}

/// A digest of 32 distinct bytes from `first` on.
fn digest(first: u8) -> Digest {
    Digest(std::array::from_fn(|i| first + i as u8))
}

/// One message of each kind, with fields that tell apart their order and
/// width (no two equal, none zero, some above 2^32).
fn samples() -> Vec<(&'static str, Message)> {
    let chunk = Chunk {
        index: 2,
        count: 5,
        digest: digest(0x40),
        data: b"golden chunk".to_vec().into(),
    };
    vec![
        (
            "heartbeat",
            Message::Heartbeat {
                generation: Generation(0x0102_0304_0506),
                role: PeerRole::Joining,
                backup: Some(NodeId(7)),
            },
        ),
        (
            "delta",
            Message::Delta {
                generation: Generation(3),
                epoch: Epoch(0x1_0000_0011),
                chunk: chunk.clone(),
            },
        ),
        (
            "delta_ack",
            Message::DeltaAck {
                generation: Generation(4),
                epoch: Epoch(0x2_0000_0022),
                digest: digest(0x60),
            },
        ),
        (
            "copy",
            Message::Copy {
                generation: Generation(5),
                session: Epoch(6),
                round: 9,
                base: checkpoint(5, 0x3_0000_0033),
                chunk,
            },
        ),
        (
            "copy_ack",
            Message::CopyAck {
                generation: Generation(8),
                session: Epoch(10),
                round: 11,
                digest: digest(0x80),
            },
        ),
        (
            "join",
            Message::Join {
                generation: Generation(12),
                disk: checkpoint(13, 14),
            },
        ),
        (
            "grant_request",
            Message::GrantRequest {
                want: Generation(16),
                known: Generation(15),
                backup: Some(NodeId(1)),
            },
        ),
        (
            "witness_ping",
            Message::WitnessPing {
                generation: Generation(17),
            },
        ),
        (
            "witness_state",
            Message::WitnessState {
                generation: Generation(18),
                holder: NodeId(0),
                backup: None,
            },
        ),
    ]
}

const STAMP: Stamp = Stamp {
    session: 0x0a0b_0c0d_0e0f,
    seq: 0x1234,
};

fn codec() -> Codec {
    let keys: BTreeMap<NodeId, Vec<u8>> = [(NodeId(1), b"golden link key".to_vec())].into();
    Codec::per_pair(keys)
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("v{VERSION}"))
}

fn hex(bytes: &[u8]) -> String {
    let mut text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    text
}

fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim();
    assert!(text.len() % 2 == 0, "a fixture is whole bytes");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_message_kind_encodes_to_its_golden_frame() {
    let bless = std::env::var_os("LOCKSTEP_BLESS_GOLDEN").is_some();
    let codec = codec();
    let mut missing = Vec::new();
    for (name, msg) in samples() {
        let envelope = Envelope {
            from: NodeId(0),
            to: NodeId(1),
            msg,
        };
        let frame = codec.encode_stamped(&envelope, STAMP);
        let path = dir().join(format!("{name}.hex"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            if bless {
                std::fs::create_dir_all(dir()).unwrap();
                std::fs::write(&path, hex(&frame)).unwrap();
            }
            missing.push(name);
            continue;
        };
        let golden = unhex(&text);
        assert_eq!(
            hex(&frame),
            hex(&golden),
            "{name}: the wire format changed under version {VERSION}: bump \
             wire::VERSION and bless new fixtures"
        );
        // The receiving end reads the committed bytes as the same message.
        let receiver: BTreeMap<NodeId, Vec<u8>> = [(NodeId(0), b"golden link key".to_vec())].into();
        let opened = Codec::per_pair(receiver).open(&golden).unwrap();
        assert_eq!(opened.envelope, envelope, "{name}");
        assert_eq!(opened.stamp, STAMP, "{name}");
    }
    assert!(
        missing.is_empty(),
        "no golden frame for {missing:?} at version {VERSION}{}",
        if bless {
            " (written now: commit them)"
        } else {
            ""
        }
    );
}

#[test]
fn the_samples_cover_every_kind_once() {
    let mut kinds: Vec<u8> = samples()
        .into_iter()
        .map(|(_, msg)| {
            let frame = codec().encode_stamped(
                &Envelope {
                    from: NodeId(0),
                    to: NodeId(1),
                    msg,
                },
                STAMP,
            );
            frame[6]
        })
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, (1..=9).collect::<Vec<u8>>());
}
