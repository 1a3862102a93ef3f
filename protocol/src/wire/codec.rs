//! Frames: the header, the checksum, the tag under the key of the link
//! between sender and receiver, and the replay window.

use super::{decode_body, encode_body, take, DecodeError, Envelope};
use super::{BODY_BYTES_MAX, MAGIC, REPLAY_WINDOW, VERSION};
use crate::types::NodeId;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::sync::Arc;

const HEADER_BYTES: usize = 4 + 1 + 1 + 1 + 1 + 1 + 8 + 8 + 4;
const CRC_BYTES: usize = 4;
const TAG_BYTES: usize = 32;
const FLAG_AUTHENTICATED: u8 = 1;
const WINDOW_WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Where a frame stands in its sender's stream to one receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    /// The sender's incarnation; grows from one start of the sender to the next.
    pub session: u64,
    /// The sender's frames to this receiver in `session`, from 0.
    pub seq: u64,
}

/// A frame whose header, checksum and tag are good, not yet checked
/// against replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The message and its addressing.
    pub envelope: Envelope,
    /// Its place in the sender's stream.
    pub stamp: Stamp,
    /// Whether it carried a tag that verified.
    pub authenticated: bool,
}

/// The keys of a node's links (shared with the frames stamped under them).
#[derive(Clone, PartialEq, Eq, Hash)]
enum Keys {
    /// No authentication.
    None,
    /// One key on every link (tests; one trust domain).
    Shared(Arc<[u8]>),
    /// The key of the link to each node.
    PerPeer(BTreeMap<NodeId, Arc<[u8]>>),
}

impl Keys {
    fn for_link(&self, other: NodeId) -> Option<&Arc<[u8]>> {
        match self {
            Keys::None => None,
            Keys::Shared(key) => Some(key),
            Keys::PerPeer(keys) => keys.get(&other),
        }
    }
}

/// A frame its sender's codec has stamped but not yet encoded: encoding,
/// checksum and tag are left to whoever sends it, so that a copy round of
/// hundreds of MiB is encoded and tagged on the link's own thread, a frame
/// at a time, not in the step that made it. Its chunk data are slices of
/// the sender's buffer.
#[derive(Clone, PartialEq, Eq)]
pub struct Unsealed {
    envelope: Envelope,
    stamp: Stamp,
    key: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.debug_struct("Unsealed")
            .field("envelope", &self.envelope)
            .field("stamp", &self.stamp)
            .field("tagged", &self.key.is_some())
            .finish()
    }
}

impl Unsealed {
    /// The message and its addressing.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// Its place in the sender's stream.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// Most bytes the sealed frame can have (for queues bounded by bytes),
    /// known without encoding it.
    pub fn len_max(&self) -> usize {
        let chunk = match &self.envelope.msg {
            super::Message::Delta { chunk, .. } | super::Message::Copy { chunk, .. } => {
                chunk.data.len()
            }
            _ => 0,
        };
        HEADER_BYTES + SMALL_BODY_BYTES_MAX + chunk + CRC_BYTES + TAG_BYTES
    }

    /// The frame: header, body, checksum and (with a key) tag.
    pub fn seal(&self) -> Vec<u8> {
        seal(&self.envelope, self.stamp, self.key.as_deref())
    }
}

/// A bound on a message body apart from its chunk's data: every other
/// field is of fixed size.
const SMALL_BODY_BYTES_MAX: usize = 1024;

/// Which frames of one sender were taken: every (session, seq) at most
/// once, and nothing older than [`REPLAY_WINDOW`] frames behind the newest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Window {
    session: u64,
    highest: u64,
    /// Bit `seq % REPLAY_WINDOW` is set when `seq` (within the window) was taken.
    seen: [u64; WINDOW_WORDS],
}

impl Window {
    fn starting_at(stamp: Stamp) -> Window {
        let mut window = Window {
            session: stamp.session,
            highest: stamp.seq,
            seen: [0; WINDOW_WORDS],
        };
        window.mark(stamp.seq);
        window
    }

    fn bit(seq: u64) -> (usize, u64) {
        let bit = seq % REPLAY_WINDOW;
        ((bit / 64) as usize, 1 << (bit % 64))
    }

    fn mark(&mut self, seq: u64) {
        let (word, mask) = Window::bit(seq);
        self.seen[word] |= mask;
    }

    fn unmark(&mut self, seq: u64) {
        let (word, mask) = Window::bit(seq);
        self.seen[word] &= !mask;
    }

    fn is_marked(&self, seq: u64) -> bool {
        let (word, mask) = Window::bit(seq);
        self.seen[word] & mask != 0
    }

    /// Takes `stamp` if it is new; `false` if it was taken or is too old.
    fn take(&mut self, stamp: Stamp) -> bool {
        if stamp.session != self.session {
            if stamp.session < self.session {
                return false; // an earlier incarnation of the sender
            }
            *self = Window::starting_at(stamp);
            return true;
        }
        if stamp.seq > self.highest {
            // Slide: the bits of the sequence numbers now entering the
            // window belonged to ones that left it.
            if stamp.seq - self.highest >= REPLAY_WINDOW {
                self.seen = [0; WINDOW_WORDS];
            } else {
                for seq in self.highest + 1..=stamp.seq {
                    self.unmark(seq);
                }
            }
            self.highest = stamp.seq;
            self.mark(stamp.seq);
            return true;
        }
        if self.highest - stamp.seq >= REPLAY_WINDOW || self.is_marked(stamp.seq) {
            return false;
        }
        self.mark(stamp.seq);
        true
    }
}

/// Encodes and decodes frames: authenticates them with the key of each
/// link when it has keys, stamps what it sends and refuses what it took
/// before.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Codec {
    keys: Keys,
    session: u64,
    /// Next sequence number to each receiver.
    sent: BTreeMap<NodeId, u64>,
    /// Replay windows, by sender.
    heard: BTreeMap<NodeId, Window>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        let links: Vec<NodeId> = match &self.keys {
            Keys::PerPeer(keys) => keys.keys().copied().collect(),
            _ => Vec::new(),
        };
        f.debug_struct("Codec")
            .field("authenticated", &!matches!(self.keys, Keys::None))
            .field("keyed_links", &links)
            .field("session", &self.session)
            .finish()
    }
}

impl Codec {
    fn with_keys(keys: Keys) -> Codec {
        Codec {
            keys,
            session: 0,
            sent: BTreeMap::new(),
            heard: BTreeMap::new(),
        }
    }

    /// A codec that neither adds nor requires authentication, and so does
    /// not check for replay either (anyone can forge a frame).
    pub fn plain() -> Codec {
        Codec::with_keys(Keys::None)
    }

    /// A codec that uses one key on every link: for tests and single trust
    /// domains. Real hosts use [`Codec::per_pair`].
    pub fn authenticated(key: &[u8]) -> Codec {
        assert!(!key.is_empty(), "an empty key authenticates nothing");
        Codec::with_keys(Keys::Shared(Arc::from(key)))
    }

    /// A codec that tags each frame with the key of its link and accepts a
    /// frame only under the key of the link to the node it claims to be
    /// from: `keys` maps every node this one talks to to that link's key.
    pub fn per_pair(keys: BTreeMap<NodeId, Vec<u8>>) -> Codec {
        assert!(!keys.is_empty(), "a keyed codec has links");
        assert!(
            keys.values().all(|k| !k.is_empty()),
            "an empty key authenticates nothing"
        );
        Codec::with_keys(Keys::PerPeer(
            keys.into_iter().map(|(n, k)| (n, Arc::from(k))).collect(),
        ))
    }

    /// This codec, stamping frames with `session`: the sender's
    /// incarnation, which must grow from one start of the sender to the
    /// next (a receiver refuses an earlier one as replayed).
    pub fn with_session(mut self, session: u64) -> Codec {
        self.session = session;
        self
    }

    /// The session this codec stamps.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Whether frames are authenticated (and so checked for replay).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self.keys, Keys::None)
    }

    /// Encodes `envelope` as the next frame to its addressee.
    pub fn encode(&mut self, envelope: &Envelope) -> Vec<u8> {
        self.stamp(envelope.clone()).seal()
    }

    /// Stamps `envelope` as the next frame to its addressee, to be sealed
    /// later (by the thread that sends it).
    pub fn stamp(&mut self, envelope: Envelope) -> Unsealed {
        let next = self.sent.entry(envelope.to).or_insert(0);
        let stamp = Stamp {
            session: self.session,
            seq: *next,
        };
        *next = next.checked_add(1).expect("2^64 frames to one receiver");
        self.unsealed(envelope, stamp)
    }

    /// Encodes `envelope` with the given stamp (golden frames, tests).
    pub fn encode_stamped(&self, envelope: &Envelope, stamp: Stamp) -> Vec<u8> {
        self.unsealed(envelope.clone(), stamp).seal()
    }

    fn unsealed(&self, envelope: Envelope, stamp: Stamp) -> Unsealed {
        let key = match &self.keys {
            Keys::None => None,
            keys => Some(Arc::clone(
                keys.for_link(envelope.to)
                    .expect("a keyed codec sends only on its keyed links"),
            )),
        };
        Unsealed {
            envelope,
            stamp,
            key,
        }
    }

    /// Decodes one frame that must span all of `bytes`, and, when
    /// authenticating, takes its stamp: a frame taken before is refused.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let opened = self.open(bytes)?;
        if opened.authenticated {
            let from = opened.envelope.from;
            let fresh = match self.heard.get_mut(&from) {
                Some(window) => window.take(opened.stamp),
                None => {
                    self.heard.insert(from, Window::starting_at(opened.stamp));
                    true
                }
            };
            if !fresh {
                return Err(DecodeError::Replayed {
                    from,
                    session: opened.stamp.session,
                    seq: opened.stamp.seq,
                });
            }
        }
        Ok(opened.envelope)
    }

    /// Checks one frame's header, checksum and tag and decodes it, without
    /// looking at or changing the replay windows.
    pub fn open(&self, bytes: &[u8]) -> Result<Opened, DecodeError> {
        let header = take(bytes, 0, HEADER_BYTES)?;
        if header[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if header[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(header[4]));
        }
        let flags = header[5];
        if flags & !FLAG_AUTHENTICATED != 0 {
            return Err(DecodeError::Malformed("unknown flags"));
        }
        let kind = header[6];
        let from = NodeId(header[7]);
        let to = NodeId(header[8]);
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
        let stamp = Stamp {
            session: word(9),
            seq: word(17),
        };
        let body_len = u32::from_le_bytes(header[25..29].try_into().expect("4 bytes")) as usize;
        if body_len > BODY_BYTES_MAX {
            return Err(DecodeError::TooLarge(body_len));
        }
        let tagged = flags & FLAG_AUTHENTICATED != 0;
        let crc_at = HEADER_BYTES + body_len;
        let frame_len = crc_at + CRC_BYTES + if tagged { TAG_BYTES } else { 0 };
        take(bytes, 0, frame_len)?;
        if bytes.len() > frame_len {
            return Err(DecodeError::TrailingBytes(bytes.len() - frame_len));
        }
        let crc = u32::from_le_bytes(bytes[crc_at..crc_at + CRC_BYTES].try_into().expect("4"));
        if crc32c::crc32c(&bytes[..crc_at]) != crc {
            return Err(DecodeError::BadChecksum);
        }
        self.verify(
            from,
            tagged,
            &bytes[..crc_at + CRC_BYTES],
            &bytes[crc_at + CRC_BYTES..],
        )?;
        let msg = decode_body(kind, &bytes[HEADER_BYTES..crc_at])?;
        Ok(Opened {
            envelope: super::Envelope { from, to, msg },
            stamp,
            authenticated: tagged,
        })
    }

    /// The tag must be present exactly when we have keys, and verify under
    /// the key of the link to `from`.
    fn verify(
        &self,
        from: NodeId,
        tagged: bool,
        signed: &[u8],
        tag: &[u8],
    ) -> Result<(), DecodeError> {
        match (&self.keys, tagged) {
            (Keys::None, false) => Ok(()),
            (Keys::None, true) => Err(DecodeError::BadTag),
            (_, false) => Err(DecodeError::Unauthenticated),
            (keys, true) => {
                let key = keys
                    .for_link(from)
                    .ok_or(DecodeError::UnknownSender(from))?;
                mac(&key[..])
                    .chain_update(signed)
                    .verify_slice(tag)
                    .map_err(|_| DecodeError::BadTag)
            }
        }
    }
}

/// The frame of `envelope` stamped `stamp`, tagged under `key` if given.
fn seal(envelope: &Envelope, stamp: Stamp, key: Option<&[u8]>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + SMALL_BODY_BYTES_MAX);
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(if key.is_some() { FLAG_AUTHENTICATED } else { 0 });
    frame.extend_from_slice(&[0; HEADER_BYTES - 6]);
    let kind = encode_body(&envelope.msg, &mut frame);
    let body_len = frame.len() - HEADER_BYTES;
    assert!(body_len <= BODY_BYTES_MAX, "message body over the limit");
    frame[6] = kind;
    frame[7] = envelope.from.0;
    frame[8] = envelope.to.0;
    frame[9..17].copy_from_slice(&stamp.session.to_le_bytes());
    frame[17..25].copy_from_slice(&stamp.seq.to_le_bytes());
    let body_len = u32::try_from(body_len).expect("body length bounded by BODY_BYTES_MAX");
    frame[25..29].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&frame);
    frame.extend_from_slice(&crc.to_le_bytes());
    if let Some(key) = key {
        let tag = mac(key).chain_update(&frame).finalize().into_bytes();
        frame.extend_from_slice(&tag);
    }
    frame
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(session: u64, seq: u64) -> Stamp {
        Stamp { session, seq }
    }

    #[test]
    fn window_takes_each_stamp_once_in_any_order_within_its_width() {
        let mut w = Window::starting_at(stamp(5, 10));
        assert!(!w.take(stamp(5, 10)), "the first one again");
        assert!(w.take(stamp(5, 12)));
        assert!(w.take(stamp(5, 11)), "late but new");
        assert!(!w.take(stamp(5, 11)));
        assert!(!w.take(stamp(4, 100)), "an earlier incarnation");
        assert!(w.take(stamp(5, 12 + REPLAY_WINDOW)));
        assert!(!w.take(stamp(5, 12)), "fell out of the window");
        assert!(
            w.take(stamp(5, 11 + REPLAY_WINDOW)),
            "inside the window, new"
        );
        assert!(w.take(stamp(6, 0)), "a new incarnation starts over");
        assert!(!w.take(stamp(5, 20_000)));
    }

    #[test]
    fn window_forgets_what_it_slid_past() {
        let mut w = Window::starting_at(stamp(1, 0));
        for seq in 1..3 * REPLAY_WINDOW {
            assert!(w.take(stamp(1, seq)), "{seq}");
        }
        let top = 3 * REPLAY_WINDOW - 1;
        for seq in top + 1 - REPLAY_WINDOW..=top {
            assert!(!w.take(stamp(1, seq)), "{seq} was taken");
        }
    }
}
