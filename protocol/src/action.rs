//! What the protocol asks its driver to do.

use crate::types::{BlockIndex, CheckpointId, Digest, Epoch, Generation, NodeId};
use crate::wire::Message;
use bytes::Bytes;

/// An output of the protocol, polled with `poll_action` and carried out by
/// the driver in the order given.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Send `msg` to `to` (encode it with the node's codec).
    Send {
        /// Addressee.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Stop running guest vCPUs until `ResumeGuest`.
    PauseGuest,
    /// Run the guest again.
    ResumeGuest,
    /// The guest is paused: capture the state that ends `epoch` (dirty
    /// pages, every vCPU, devices, the epoch's disk writes) and report it
    /// with `handle_delta_captured`. With `ship` false nobody receives it:
    /// only the disk blocks and the reset of dirty tracking matter.
    CaptureDelta {
        /// The epoch that ends.
        epoch: Epoch,
        /// Whether the bytes go to a backup.
        ship: bool,
    },
    /// Capture pre-copy round `round` for a joining backup and report it with
    /// `handle_copy_captured`. Round 0 copies all memory and the disk named
    /// by `disk` (plus the blocks written since the last capture); a later
    /// round copies what changed since the previous one. When `last` is set
    /// the guest is paused and the capture is a complete checkpoint.
    CaptureCopy {
        /// The round, from 0.
        round: u32,
        /// Which disk blocks round 0 carries.
        disk: DiskCopy,
        /// The final, paused round.
        last: bool,
    },
    /// Backup: apply this complete delta to the standby image.
    ApplyDelta {
        /// The epoch it completes.
        epoch: Epoch,
        /// The bytes, as captured by the primary's driver.
        delta: Vec<u8>,
    },
    /// Joiner: apply this complete copy round to the standby image (round 0
    /// replaces it).
    ApplyCopy {
        /// The round.
        round: u32,
        /// The bytes, as captured by the primary's driver.
        copy: Vec<u8>,
    },
    /// Outputs the guest made in epochs up to and including `upto` may go
    /// out, including those it makes later in `upto` if `upto` is still open.
    ReleaseOutput {
        /// The newest epoch whose output may go out.
        upto: Epoch,
    },
    /// Promotion: restore the standby image as of `checkpoint`, drop every
    /// output buffered from the old primary, and run the guest.
    RestoreAndResume {
        /// The checkpoint restored from.
        checkpoint: CheckpointId,
    },
    /// This host lost its authority: stop the guest and discard its outputs.
    StopGuest,
    /// Durably record this generation before sending anything else.
    PersistGeneration(Generation),
    /// Witness: durably record this grant before sending anything else.
    PersistGrant(Grant),
}

/// Which disk blocks the first pre-copy round carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DiskCopy {
    /// The whole disk.
    Full,
    /// Only these blocks: the joiner's disk holds a checkpoint of this
    /// lineage and these are the blocks written since.
    Blocks(Vec<BlockIndex>),
}

/// What the driver captured for a delta or copy round.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capture {
    /// The encoded state; the protocol treats it as opaque. Shared, so
    /// that the driver may keep a handle and free a large round off its
    /// own thread once the protocol is done with it.
    pub bytes: Bytes,
    /// The digest of `bytes` when the driver took it as it read them (a
    /// large round, read a part at a time): the protocol does not hash
    /// them again in one step.
    pub digest: Option<Digest>,
    /// Disk blocks the guest wrote since the previous capture (not every
    /// block a full round carries): the primary's disk history.
    pub disk_blocks: Vec<BlockIndex>,
    /// Memory pages the capture carries.
    pub pages: u64,
}

/// The witness's grant: who holds a generation and which backup was
/// certified in sync with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Grant {
    /// The generation.
    pub generation: Generation,
    /// Its holder, the only host that may run the guest in it.
    pub holder: NodeId,
    /// The backup that may take the next generation if the holder fails.
    pub backup: Option<NodeId>,
}
