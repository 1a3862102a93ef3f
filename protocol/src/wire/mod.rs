//! The wire format: an explicit, versioned, length-checked, checksummed
//! encoding of every protocol message, authenticated with HMAC-SHA256 under
//! a key per pair of nodes and stamped against replay.
//!
//! A frame is laid out as
//!
//! ```text
//! magic "LKSP" | version u8 | flags u8 | kind u8 | from u8 | to u8
//! | session u64 LE | seq u64 LE | body_len u32 LE
//! | body (body_len bytes) | crc32c u32 LE over everything before it
//! | [tag: 32 bytes of HMAC-SHA256 over everything before it, if flags bit 0]
//! ```
//!
//! The tag is made with the key of the link between `from` and `to`, so a
//! node can only speak as itself: the witness holds one key per VM host,
//! each VM host one for its peer and one for the witness. `session` names
//! the sender's incarnation (it must grow from one start of the sender to
//! the next) and `seq` counts the sender's frames to one receiver within
//! it; an authenticating receiver accepts each (session, seq) once (see
//! the replay window), so a recorded frame cannot be played again.
//!
//! Decoding validates every length against the bytes actually present and
//! against [`BODY_BYTES_MAX`] before allocating, so arbitrary input yields a
//! [`DecodeError`], never a panic and never an unbounded allocation.

use crate::types::{CheckpointId, Digest, Epoch, Generation, NodeId};
use bytes::Bytes;

mod codec;

pub use codec::{Codec, Opened, Stamp, Unsealed};

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"LKSP";
/// The wire version this code speaks. 2: keys per pair of nodes, the
/// session and sequence stamp in the header. 3: every chunk carries the
/// digest of its whole transfer, and the acks of deltas and copy rounds
/// name the digest of what they acknowledge.
pub const VERSION: u8 = 3;
/// Largest body accepted, in bytes (a delta chunk plus its header).
pub const BODY_BYTES_MAX: usize = (1 << 20) + 256;
/// Largest data payload of one chunk.
pub const CHUNK_BYTES_MAX: usize = 1 << 20;
/// Frames of one sender that may arrive out of order and still be taken:
/// the replay window's width.
pub const REPLAY_WINDOW: u64 = 1024;

/// The role a VM host claims in a heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRole {
    /// Runs the guest.
    Primary,
    /// Holds (or is receiving) a copy of the guest.
    Backup,
    /// Wants to become a backup and has no usable state.
    Joining,
}

/// A piece of a delta or a copy round. The receiver assembles `count`
/// chunks before it uses any of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chunk {
    /// Index of this chunk, `0..count`.
    pub index: u32,
    /// Number of chunks of the whole.
    pub count: u32,
    /// Digest of the whole: the assembled chunks are used only if their
    /// bytes have it.
    pub digest: Digest,
    /// The bytes: a slice of the sender's one buffer of the whole, or of
    /// the frame it came in.
    pub data: Bytes,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Message {
    /// VM host to VM host, every heartbeat interval. `backup` is the
    /// sender's certified backup when the sender is primary: a backup that
    /// sees itself named adopts the newer generation.
    Heartbeat {
        /// Sender's generation.
        generation: Generation,
        /// Sender's role.
        role: PeerRole,
        /// The primary's certified backup in `generation`.
        backup: Option<NodeId>,
    },
    /// Primary to backup: part of the delta that ends `epoch`.
    Delta {
        /// Sender's generation.
        generation: Generation,
        /// The epoch this delta completes.
        epoch: Epoch,
        /// The piece.
        chunk: Chunk,
    },
    /// Backup to primary: every delta up to `epoch` is complete and applied.
    DeltaAck {
        /// Sender's generation.
        generation: Generation,
        /// Highest epoch applied, cumulative.
        epoch: Epoch,
        /// Digest of the transfer that brought the backup to `epoch` (the
        /// delta, or the final copy round): an ack releases output only if
        /// it names what the primary shipped for that epoch.
        digest: Digest,
    },
    /// Primary to joiner: part of pre-copy round `round`. The final round
    /// carries `base`, the checkpoint the joiner holds once it is applied.
    Copy {
        /// Sender's generation.
        generation: Generation,
        /// Names this copy: the primary's epoch when it began. A new session
        /// starts the joiner over; rounds of another session are dropped.
        session: Epoch,
        /// Pre-copy round, from 0.
        round: u32,
        /// Set on the final round.
        base: Option<CheckpointId>,
        /// The piece.
        chunk: Chunk,
    },
    /// Joiner to primary: copy round `round` is complete and applied.
    CopyAck {
        /// Sender's generation.
        generation: Generation,
        /// The copy session.
        session: Epoch,
        /// The round applied.
        round: u32,
        /// Digest of the round applied: the primary takes the ack only if
        /// it names the round it sent.
        digest: Digest,
    },
    /// A VM host without usable state asks its peer to re-protect it.
    Join {
        /// The newest generation the sender knows.
        generation: Generation,
        /// The checkpoint the sender's disk holds, if it is known to be one
        /// the primary's lineage may contain (enables incremental resync).
        disk: Option<CheckpointId>,
    },
    /// VM host to witness: grant me `want`, which follows `known`.
    GrantRequest {
        /// The generation asked for.
        want: Generation,
        /// The generation the sender believes current.
        known: Generation,
        /// The backup the sender certifies for `want`, if any.
        backup: Option<NodeId>,
    },
    /// VM host to witness: what is current? (the lease of a solo primary).
    WitnessPing {
        /// Sender's generation.
        generation: Generation,
    },
    /// Witness to VM host: the current grant. Answers both requests and
    /// pings; a requester is granted iff it is named holder of `want`.
    WitnessState {
        /// The current generation.
        generation: Generation,
        /// Who holds it.
        holder: NodeId,
        /// The backup certified with it.
        backup: Option<NodeId>,
    },
}

/// A message with its addressing, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Addressee.
    pub to: NodeId,
    /// The message.
    pub msg: Message,
}

/// Why bytes were not a valid frame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame says it has.
    #[error("frame truncated: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// More bytes than the frame says it has.
    #[error("{0} bytes trail the frame")]
    TrailingBytes(usize),
    /// Not a Lockstep frame.
    #[error("bad magic")]
    BadMagic,
    /// A wire version this code does not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// An unknown message kind.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// Declared body larger than [`BODY_BYTES_MAX`].
    #[error("body of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// A key is configured and the frame carries no tag.
    #[error("frame is not authenticated")]
    Unauthenticated,
    /// The tag does not verify under the configured key (or a tag came
    /// where no key is configured).
    #[error("authentication tag does not verify")]
    BadTag,
    /// The frame claims a sender this node shares no key with.
    #[error("no key for the link to sender {0}")]
    UnknownSender(NodeId),
    /// A frame whose stamp was taken before, or is older than the replay
    /// window, or from an earlier incarnation of its sender.
    #[error("replayed frame from {from}: session {session}, seq {seq}")]
    Replayed {
        /// The sender.
        from: NodeId,
        /// Its stamp's session.
        session: u64,
        /// Its stamp's sequence number.
        seq: u64,
    },
    /// The body does not parse as its kind.
    #[error("malformed body: {0}")]
    Malformed(&'static str),
}

fn take(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], DecodeError> {
    let end = at
        .checked_add(len)
        .ok_or(DecodeError::Malformed("length overflow"))?;
    bytes.get(at..end).ok_or(DecodeError::Truncated {
        needed: end,
        have: bytes.len(),
    })
}

mod kind {
    pub const HEARTBEAT: u8 = 1;
    pub const DELTA: u8 = 2;
    pub const DELTA_ACK: u8 = 3;
    pub const COPY: u8 = 4;
    pub const COPY_ACK: u8 = 5;
    pub const JOIN: u8 = 6;
    pub const GRANT_REQUEST: u8 = 7;
    pub const WITNESS_PING: u8 = 8;
    pub const WITNESS_STATE: u8 = 9;
}

struct Writer<'a>(&'a mut Vec<u8>);

impl Writer<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn node(&mut self, v: Option<NodeId>) {
        match v {
            None => self.u8(0),
            Some(n) => {
                self.u8(1);
                self.u8(n.0);
            }
        }
    }
    fn checkpoint(&mut self, v: Option<CheckpointId>) {
        match v {
            None => self.u8(0),
            Some(c) => {
                self.u8(1);
                self.u64(c.generation.0);
                self.u64(c.epoch.0);
            }
        }
    }
    fn digest(&mut self, d: Digest) {
        self.0.extend_from_slice(&d.0);
    }
    fn chunk(&mut self, c: &Chunk) {
        assert!(c.data.len() <= CHUNK_BYTES_MAX, "chunk over the limit");
        self.u32(c.index);
        self.u32(c.count);
        self.digest(c.digest);
        self.u32(u32::try_from(c.data.len()).expect("bounded by CHUNK_BYTES_MAX"));
        self.0.extend_from_slice(&c.data);
    }
}

fn encode_body(msg: &Message, out: &mut Vec<u8>) -> u8 {
    let mut w = Writer(out);
    match msg {
        Message::Heartbeat {
            generation,
            role,
            backup,
        } => {
            w.u64(generation.0);
            w.u8(match role {
                PeerRole::Primary => 0,
                PeerRole::Backup => 1,
                PeerRole::Joining => 2,
            });
            w.node(*backup);
            kind::HEARTBEAT
        }
        Message::Delta {
            generation,
            epoch,
            chunk,
        } => {
            w.u64(generation.0);
            w.u64(epoch.0);
            w.chunk(chunk);
            kind::DELTA
        }
        Message::DeltaAck {
            generation,
            epoch,
            digest,
        } => {
            w.u64(generation.0);
            w.u64(epoch.0);
            w.digest(*digest);
            kind::DELTA_ACK
        }
        Message::Copy {
            generation,
            session,
            round,
            base,
            chunk,
        } => {
            w.u64(generation.0);
            w.u64(session.0);
            w.u32(*round);
            w.checkpoint(*base);
            w.chunk(chunk);
            kind::COPY
        }
        Message::CopyAck {
            generation,
            session,
            round,
            digest,
        } => {
            w.u64(generation.0);
            w.u64(session.0);
            w.u32(*round);
            w.digest(*digest);
            kind::COPY_ACK
        }
        Message::Join { generation, disk } => {
            w.u64(generation.0);
            w.checkpoint(*disk);
            kind::JOIN
        }
        Message::GrantRequest {
            want,
            known,
            backup,
        } => {
            w.u64(want.0);
            w.u64(known.0);
            w.node(*backup);
            kind::GRANT_REQUEST
        }
        Message::WitnessPing { generation } => {
            w.u64(generation.0);
            kind::WITNESS_PING
        }
        Message::WitnessState {
            generation,
            holder,
            backup,
        } => {
            w.u64(generation.0);
            w.u8(holder.0);
            w.node(*backup);
            kind::WITNESS_STATE
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, len: usize) -> Result<&[u8], DecodeError> {
        let slice =
            take(self.bytes, self.at, len).map_err(|_| DecodeError::Malformed("short body"))?;
        self.at += len;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes(8)?.try_into().expect("8")))
    }
    fn generation(&mut self) -> Result<Generation, DecodeError> {
        self.u64().map(Generation)
    }
    fn node(&mut self) -> Result<Option<NodeId>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(NodeId(self.u8()?))),
            _ => Err(DecodeError::Malformed("bad option tag")),
        }
    }
    fn checkpoint(&mut self) -> Result<Option<CheckpointId>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(CheckpointId {
                generation: self.generation()?,
                epoch: Epoch(self.u64()?),
            })),
            _ => Err(DecodeError::Malformed("bad option tag")),
        }
    }
    fn digest(&mut self) -> Result<Digest, DecodeError> {
        Ok(Digest(self.bytes(32)?.try_into().expect("32")))
    }
    fn chunk(&mut self) -> Result<Chunk, DecodeError> {
        let index = self.u32()?;
        let count = self.u32()?;
        if count == 0 || index >= count {
            return Err(DecodeError::Malformed("chunk index out of range"));
        }
        let digest = self.digest()?;
        let len = self.u32()? as usize;
        if len > CHUNK_BYTES_MAX {
            return Err(DecodeError::Malformed("chunk too large"));
        }
        let data = Bytes::copy_from_slice(self.bytes(len)?);
        Ok(Chunk {
            index,
            count,
            digest,
            data,
        })
    }
    fn finish(self, msg: Message) -> Result<Message, DecodeError> {
        if self.at != self.bytes.len() {
            return Err(DecodeError::Malformed("bytes left in body"));
        }
        Ok(msg)
    }
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { bytes: body, at: 0 };
    let msg = match kind {
        kind::HEARTBEAT => Message::Heartbeat {
            generation: r.generation()?,
            role: match r.u8()? {
                0 => PeerRole::Primary,
                1 => PeerRole::Backup,
                2 => PeerRole::Joining,
                _ => return Err(DecodeError::Malformed("bad role")),
            },
            backup: r.node()?,
        },
        kind::DELTA => Message::Delta {
            generation: r.generation()?,
            epoch: Epoch(r.u64()?),
            chunk: r.chunk()?,
        },
        kind::DELTA_ACK => Message::DeltaAck {
            generation: r.generation()?,
            epoch: Epoch(r.u64()?),
            digest: r.digest()?,
        },
        kind::COPY => Message::Copy {
            generation: r.generation()?,
            session: Epoch(r.u64()?),
            round: r.u32()?,
            base: r.checkpoint()?,
            chunk: r.chunk()?,
        },
        kind::COPY_ACK => Message::CopyAck {
            generation: r.generation()?,
            session: Epoch(r.u64()?),
            round: r.u32()?,
            digest: r.digest()?,
        },
        kind::JOIN => Message::Join {
            generation: r.generation()?,
            disk: r.checkpoint()?,
        },
        kind::GRANT_REQUEST => Message::GrantRequest {
            want: r.generation()?,
            known: r.generation()?,
            backup: r.node()?,
        },
        kind::WITNESS_PING => Message::WitnessPing {
            generation: r.generation()?,
        },
        kind::WITNESS_STATE => Message::WitnessState {
            generation: r.generation()?,
            holder: NodeId(r.u8()?),
            backup: r.node()?,
        },
        other => return Err(DecodeError::UnknownKind(other)),
    };
    r.finish(msg)
}
