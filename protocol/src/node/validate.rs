//! Range checks of the values a message brings, before any of them reaches
//! an assertion or an arithmetic operation of the node.

use crate::config::Config;
use crate::types::{CheckpointId, Epoch, Generation};
use crate::wire::{Chunk, Message};

/// Largest generation or epoch a message may carry. Honest counters start
/// near zero and grow by one per grant or epoch, so they never come near
/// it; refusing what lies above it means `next()` on any value adopted
/// from the wire cannot overflow.
pub const COUNTER_MAX: u64 = u64::MAX / 2;

/// Largest copy round a message may carry (and the bound on
/// `precopy_rounds_max`).
pub const ROUND_MAX: u32 = 1 << 16;

/// Why a message was refused before the node looked at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A value beyond what any honest node produces.
    OutOfRange,
    /// Fields that contradict each other.
    Contradicting,
}

/// Chunks of one transfer at most: a transfer of `transfer_bytes_max` in
/// chunks of `chunk_bytes_max` (both nodes run one configuration).
pub(crate) fn transfer_chunks_max(config: &Config) -> u32 {
    let chunks = config
        .transfer_bytes_max
        .div_ceil(u64::from(config.chunk_bytes_max))
        .max(1);
    u32::try_from(chunks).unwrap_or(u32::MAX)
}

fn generation_ok(g: Generation) -> bool {
    g.0 <= COUNTER_MAX
}

fn epoch_ok(e: Epoch) -> bool {
    e.0 <= COUNTER_MAX
}

fn checkpoint_ok(c: Option<CheckpointId>) -> bool {
    c.is_none_or(|c| generation_ok(c.generation) && epoch_ok(c.epoch))
}

/// A chunk as `split` makes them with this configuration's
/// `chunk_bytes_max`: every chunk but the last is full, the last holds at
/// least a byte unless it is the only one. So the chunks an assembly holds
/// are bounded by its bytes, not only by the count a sender announces.
fn chunk_ok(config: &Config, c: &Chunk) -> bool {
    let size = config.chunk_bytes_max as usize;
    // The decoder refuses these too, but a message may come decoded.
    if c.count == 0 || c.index >= c.count {
        return false;
    }
    let shaped = if c.index < c.count - 1 {
        c.data.len() == size
    } else {
        c.data.len() <= size && (c.count == 1 || !c.data.is_empty())
    };
    c.count <= transfer_chunks_max(config) && shaped
}

/// Checks every value of `msg` against the bounds of the protocol and of
/// `config`, and the fields of a message against each other.
pub(super) fn check(config: &Config, msg: &Message) -> Result<(), Refusal> {
    let in_range = match msg {
        Message::Heartbeat { generation, .. }
        | Message::WitnessPing { generation }
        | Message::WitnessState { generation, .. } => generation_ok(*generation),
        Message::Delta {
            generation,
            epoch,
            chunk,
        } => generation_ok(*generation) && epoch_ok(*epoch) && chunk_ok(config, chunk),
        Message::DeltaAck {
            generation, epoch, ..
        } => generation_ok(*generation) && epoch_ok(*epoch),
        Message::Copy {
            generation,
            session,
            round,
            base,
            chunk,
        } => {
            generation_ok(*generation)
                && epoch_ok(*session)
                && *round <= ROUND_MAX
                && checkpoint_ok(*base)
                && chunk_ok(config, chunk)
        }
        Message::CopyAck {
            generation,
            session,
            round,
            ..
        } => generation_ok(*generation) && epoch_ok(*session) && *round <= ROUND_MAX,
        Message::Join { generation, disk } => generation_ok(*generation) && checkpoint_ok(*disk),
        Message::GrantRequest { want, known, .. } => generation_ok(*want) && generation_ok(*known),
    };
    if !in_range {
        return Err(Refusal::OutOfRange);
    }
    // The final copy round's base is the checkpoint its primary captured
    // in the copy's generation, at or after the epoch the session began.
    if let Message::Copy {
        generation,
        session,
        base: Some(base),
        ..
    } = msg
    {
        if base.generation != *generation || base.epoch < *session {
            return Err(Refusal::Contradicting);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Level, NodeId};

    fn config() -> Config {
        Config::new(NodeId(0), NodeId(1), NodeId(2), Level::Ft)
    }

    fn copy(generation: u64, session: u64, base: Option<(u64, u64)>, count: u32) -> Message {
        Message::Copy {
            generation: Generation(generation),
            session: Epoch(session),
            round: 0,
            base: base.map(|(g, e)| CheckpointId {
                generation: Generation(g),
                epoch: Epoch(e),
            }),
            chunk: Chunk {
                index: 0,
                count,
                digest: crate::types::Digest::default(),
                data: bytes::Bytes::new(),
            },
        }
    }

    #[test]
    fn bounds_and_contradictions_are_refused() {
        let c = config();
        assert_eq!(check(&c, &copy(3, 10, Some((3, 12)), 1)), Ok(()));
        assert_eq!(
            check(&c, &copy(3, 10, Some((4, 12)), 1)),
            Err(Refusal::Contradicting),
            "a base above the copy's generation"
        );
        assert_eq!(
            check(&c, &copy(3, 10, Some((3, 9)), 1)),
            Err(Refusal::Contradicting),
            "a base before the session began"
        );
        assert_eq!(
            check(&c, &copy(u64::MAX, 10, None, 1)),
            Err(Refusal::OutOfRange)
        );
        assert_eq!(
            check(&c, &copy(3, 10, None, u32::MAX)),
            Err(Refusal::OutOfRange),
            "more chunks than a transfer of transfer_bytes_max has"
        );
        assert_eq!(
            check(&c, &copy(3, 10, None, 2)),
            Err(Refusal::OutOfRange),
            "an empty chunk that is not the last"
        );
        let ack = Message::DeltaAck {
            generation: Generation(1),
            epoch: Epoch(COUNTER_MAX + 1),
            digest: crate::types::Digest::default(),
        };
        assert_eq!(check(&c, &ack), Err(Refusal::OutOfRange));
    }
}
