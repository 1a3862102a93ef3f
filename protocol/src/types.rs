//! Identifiers and quantities that cross the protocol's boundary.

use std::fmt;

/// A host of the cluster: one of the two VM hosts or the witness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u8);

/// A checkpoint interval of the primary. Epoch 0 is the common boot image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub u64);

/// A term of authority granted by the witness; each is granted once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// A block of the guest disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockIndex(pub u64);

/// Logical time in nanoseconds since an origin the driver chooses. The
/// protocol never reads a clock: every `handle_*` call brings `now`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

/// A checkpoint, named by the generation in which its epoch was captured and
/// the epoch itself. Epoch numbers restart their meaning after a failover, so
/// the generation is needed to tell two lineages apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId {
    /// Generation in force when the epoch was captured.
    pub generation: Generation,
    /// The epoch.
    pub epoch: Epoch,
}

/// SHA-256 of the whole of one transfer (a delta or a copy round): every
/// chunk carries it, the receiver checks the assembled bytes against it
/// before it applies them, and the acknowledgement names it, so the sender
/// knows the receiver holds what it sent and not some other content that
/// claimed the same epoch or round.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::of_parts([bytes])
    }

    /// The digest of the concatenation of `parts`.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Digest {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        for part in parts {
            hasher.update(part);
        }
        Digest(hasher.finalize().into())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(")?;
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// How a VM is protected (ARCHITECTURE.md, protocol point 8): the one
/// notion of protection level, read from scenario and node files, given
/// on the command line and written into reports as `ft` or `ha`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Level {
    /// Fault tolerance: output of epoch N is released only once the backup
    /// holds epoch N. No output a client saw is ever lost.
    Ft,
    /// High availability: output is released at once, so a failover may lose
    /// outputs of the last unacknowledged epochs (lower latency).
    Ha,
}

impl Time {
    /// `self + ns`, saturating: deadlines far in the future stay far.
    pub fn add_ns(self, ns: u64) -> Time {
        Time(self.0.saturating_add(ns))
    }
}

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Epoch {
        Epoch(self.0.checked_add(1).expect("epoch counter overflows u64"))
    }
}

impl Generation {
    /// The generation after this one.
    pub fn next(self) -> Generation {
        Generation(
            self.0
                .checked_add(1)
                .expect("generation counter overflows u64"),
        )
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ft => "ft",
            Level::Ha => "ha",
        })
    }
}

impl std::str::FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ft" => Ok(Level::Ft),
            "ha" => Ok(Level::Ha),
            other => Err(format!(
                "unknown protection level `{other}` (expected ft or ha)"
            )),
        }
    }
}
