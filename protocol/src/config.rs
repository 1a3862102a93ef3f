//! The configuration of a VM host's protocol node.

use crate::types::{Level, NodeId};

/// Timing, bounds and identities of one VM host. All durations are in
/// nanoseconds of the driver's logical time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Config {
    /// This host.
    pub me: NodeId,
    /// The other VM host.
    pub peer: NodeId,
    /// The witness.
    pub witness: NodeId,
    /// Protection level of the VM.
    pub level: Level,
    /// An epoch ends after this long ...
    pub epoch_duration_ns: u64,
    /// ... or once the guest has dirtied this many pages, whichever is first
    /// ...
    pub epoch_dirty_pages_max: u64,
    /// ... or, at `ft` with a backup, once the guest has gone idle with
    /// output of the epoch held and the epoch is at least this old (see
    /// [`crate::Node::handle_guest_idle`]). `u64::MAX`: never.
    pub epoch_idle_min_ns: u64,
    /// Deltas shipped and not yet acknowledged before the primary holds the
    /// guest (backpressure).
    pub deltas_in_flight_max: u32,
    /// Interval of heartbeats, witness pings and request retries.
    pub heartbeat_interval_ns: u64,
    /// A peer (or the witness) silent this long is suspected.
    pub suspect_after_ns: u64,
    /// Unacknowledged deltas and copy rounds are sent again after this long.
    pub retransmit_after_ns: u64,
    /// The slowest the link to the peer is expected to carry a transfer
    /// and the peer to apply it, in bytes per second: a large copy round
    /// is not sent again before it could have arrived at this rate.
    pub transfer_bytes_per_sec_min: u64,
    /// Largest data payload of one chunk on the wire.
    pub chunk_bytes_max: u32,
    /// Largest delta or copy round accepted, in bytes.
    pub transfer_bytes_max: u64,
    /// Pre-copy rounds at most before the final, paused round.
    pub precopy_rounds_max: u32,
    /// A pre-copy round that carried at most this many pages is followed by
    /// the final round.
    pub precopy_pages_threshold: u64,
    /// Disk blocks remembered (by epoch) for incremental resync; beyond it,
    /// a joiner whose disk is older gets a full disk copy.
    pub disk_history_blocks_max: u64,
    /// A deliberately broken variant of the protocol (tests only).
    #[cfg(feature = "mutants")]
    pub mutant: Option<Mutant>,
}

/// Deliberately broken variants of the protocol, which the simulator's
/// scenarios must catch. They exist only with the `mutants` feature, which
/// only the simulator's tests enable.
#[cfg(feature = "mutants")]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mutant {
    /// A suspicious backup promotes itself without the witness's grant.
    NoGenerationFence,
    /// A backup applies and acknowledges a delta before all of it arrived.
    ApplyIncompleteDelta,
    /// At `ft`, output is released before the backup acknowledged its epoch.
    ReleaseBeforeAck,
}

/// A configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two roles share an id.
    #[error("node ids must differ: me {me}, peer {peer}, witness {witness}")]
    DuplicateIds {
        /// This host.
        me: NodeId,
        /// The other VM host.
        peer: NodeId,
        /// The witness.
        witness: NodeId,
    },
    /// A value out of its range.
    #[error("{field} {problem}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl Config {
    /// A configuration with defaults suited to a LAN: 20 ms epochs, 50 ms
    /// heartbeats, suspicion after 500 ms.
    pub fn new(me: NodeId, peer: NodeId, witness: NodeId, level: Level) -> Config {
        Config {
            me,
            peer,
            witness,
            level,
            epoch_duration_ns: 20_000_000,
            epoch_dirty_pages_max: 4096,
            epoch_idle_min_ns: 1_000_000,
            deltas_in_flight_max: 2,
            heartbeat_interval_ns: 50_000_000,
            suspect_after_ns: 500_000_000,
            retransmit_after_ns: 200_000_000,
            transfer_bytes_per_sec_min: 50 << 20,
            chunk_bytes_max: 256 * 1024,
            transfer_bytes_max: 16 << 30,
            precopy_rounds_max: 8,
            precopy_pages_threshold: 256,
            disk_history_blocks_max: 1 << 20,
            #[cfg(feature = "mutants")]
            mutant: None,
        }
    }

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.me == self.peer || self.me == self.witness || self.peer == self.witness {
            return Err(ConfigError::DuplicateIds {
                me: self.me,
                peer: self.peer,
                witness: self.witness,
            });
        }
        let checks: [(bool, &'static str, &'static str); 10] = [
            (
                self.epoch_duration_ns > 0,
                "epoch_duration_ns",
                "must be positive",
            ),
            (
                self.epoch_dirty_pages_max > 0,
                "epoch_dirty_pages_max",
                "must be positive",
            ),
            (
                self.deltas_in_flight_max > 0,
                "deltas_in_flight_max",
                "must be positive",
            ),
            (
                self.heartbeat_interval_ns > 0,
                "heartbeat_interval_ns",
                "must be positive",
            ),
            (
                self.suspect_after_ns > self.heartbeat_interval_ns,
                "suspect_after_ns",
                "must exceed heartbeat_interval_ns",
            ),
            (
                self.retransmit_after_ns > 0,
                "retransmit_after_ns",
                "must be positive",
            ),
            (
                self.transfer_bytes_per_sec_min > 0,
                "transfer_bytes_per_sec_min",
                "must be positive",
            ),
            (
                self.chunk_bytes_max > 0
                    && self.chunk_bytes_max as usize <= crate::wire::CHUNK_BYTES_MAX,
                "chunk_bytes_max",
                "must be within 1 byte and 1 MiB",
            ),
            (
                self.transfer_bytes_max > 0,
                "transfer_bytes_max",
                "must be positive",
            ),
            (
                self.precopy_rounds_max <= crate::node::ROUND_MAX,
                "precopy_rounds_max",
                "must be at most ROUND_MAX",
            ),
        ];
        for (ok, field, problem) in checks {
            if !ok {
                return Err(ConfigError::OutOfRange { field, problem });
            }
        }
        Ok(())
    }
}
