//! The witness host: the protocol's witness plus the grant it persists.

use super::Transmit;
use protocol::{Action, Codec, Envelope, Grant, NodeId, Time, Witness};
use std::collections::VecDeque;

/// The witness of one VM's pair of hosts.
#[derive(Debug)]
pub struct WitnessHost {
    witness: Witness,
    persisted: Grant,
    transmits: VecDeque<Transmit>,
}

impl WitnessHost {
    /// A witness starting from `grant`: the bootstrap grant, or after a
    /// restart the one it persisted (a witness never forgets a grant).
    pub fn new(me: NodeId, members: [NodeId; 2], grant: Grant, codec: Codec) -> WitnessHost {
        WitnessHost {
            witness: Witness::new(me, members, grant, codec),
            persisted: grant,
            transmits: VecDeque::new(),
        }
    }

    /// The grant on durable storage.
    pub fn persisted(&self) -> Grant {
        self.persisted
    }

    /// A frame arrived.
    pub fn handle_frame(&mut self, now: Time, bytes: &[u8]) {
        self.witness.handle_bytes(now, bytes);
        let me = self.me();
        while let Some(action) = self.witness.poll_action() {
            match action {
                Action::PersistGrant(grant) => self.persisted = grant,
                Action::Send { to, msg } => {
                    let frame = self
                        .witness
                        .codec_mut()
                        .stamp(Envelope { from: me, to, msg });
                    self.transmits.push_back(Transmit::Frame { to, frame });
                }
                other => unreachable!("the witness does not {other:?}"),
            }
        }
    }

    fn me(&self) -> NodeId {
        self.witness.me()
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }
}
