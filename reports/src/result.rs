//! What one run found: the record every report is made from.

use std::fmt;

use faults::Level;
use serde::{Deserialize, Serialize};

/// One of the oracle's five judgements (ARCHITECTURE.md, The simulator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Oracle(u8);

impl Oracle {
    /// (1) No reply a client received is lost, duplicated or contradicted.
    pub const REPLIES: Oracle = Oracle(1);
    /// (2) Never two hosts releasing output in one generation.
    pub const ONE_RELEASER: Oracle = Oracle(2);
    /// (3) The survivor's state equals a failure-free run of the acked inputs.
    pub const STATE: Oracle = Oracle(3);
    /// (4) After healing, the service answers within the bound.
    pub const LIVENESS: Oracle = Oracle(4);
    /// (5) The same seed gives the same trace hash.
    pub const DETERMINISM: Oracle = Oracle(5);

    /// The oracle's number, `1..=5`.
    pub fn number(self) -> u8 {
        self.0
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self.0 {
            1 => "replies",
            2 => "one-releaser",
            3 => "state",
            4 => "liveness",
            _ => "determinism",
        }
    }
}

impl TryFrom<u8> for Oracle {
    type Error = String;

    fn try_from(n: u8) -> Result<Oracle, String> {
        if (1..=5).contains(&n) {
            Ok(Oracle(n))
        } else {
            Err(format!("oracle {n} is not one of 1..=5"))
        }
    }
}

impl From<Oracle> for u8 {
    fn from(oracle: Oracle) -> u8 {
        oracle.0
    }
}

impl fmt::Display for Oracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oracle {} ({})", self.0, self.name())
    }
}

/// What kind of thing the oracle found wrong. Each kind belongs to one
/// oracle; readers of `results.jsonl` sort violations by this, never by
/// their message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// 1: a reply a client received does not parse.
    ReplyUnreadable,
    /// 1: a reply to an id that was never sent.
    ReplyToUnsentId,
    /// 1: an id answered with two different replies.
    AnsweredTwice,
    /// 1: a request id sent with two different contents.
    SentTwice,
    /// 1: a reply that the survivor's journal contradicts.
    ReplyContradictsJournal,
    /// 2: two hosts released output in one generation.
    TwoReleasers,
    /// 3: a host hit an error (a guest fault, an inconsistent standby).
    HostError,
    /// 3: a journal record out of sequence.
    JournalOutOfSequence,
    /// 3: an id in the journal twice.
    JournaledTwice,
    /// 3: a journaled decision the ledger's rules do not make.
    WrongDecision,
    /// 3: an account's balance disagrees with the journal.
    BalanceDisagrees,
    /// 3: money not conserved.
    MoneyNotConserved,
    /// 3: the journal holds more or fewer ids than requests were answered.
    IdsJournaledWrong,
    /// 3: the survivor's memory or disk cannot be read.
    SurvivorUnreadable,
    /// 3: the run panicked: nothing of its state can be judged.
    RunPanicked,
    /// 4: requests still unanswered at the end of the liveness phase.
    Unanswered,
    /// 4: the host the witness grants is down at the end.
    HolderDown,
    /// 4: the host the witness grants is not its running primary at the end.
    HolderNotPrimary,
    /// 5: the same seed gave two different traces.
    Nondeterministic,
}

impl ViolationKind {
    /// The oracle a violation of this kind breaks.
    pub fn oracle(self) -> Oracle {
        use ViolationKind::*;
        match self {
            ReplyUnreadable
            | ReplyToUnsentId
            | AnsweredTwice
            | SentTwice
            | ReplyContradictsJournal => Oracle::REPLIES,
            TwoReleasers => Oracle::ONE_RELEASER,
            HostError | JournalOutOfSequence | JournaledTwice | WrongDecision
            | BalanceDisagrees | MoneyNotConserved | IdsJournaledWrong | SurvivorUnreadable
            | RunPanicked => Oracle::STATE,
            Unanswered | HolderDown | HolderNotPrimary => Oracle::LIVENESS,
            Nondeterministic => Oracle::DETERMINISM,
        }
    }
}

/// What the oracle found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Which judgement failed (always `kind.oracle()`; written for readers
    /// that sort by oracle).
    pub oracle: Oracle,
    /// What kind of thing went wrong.
    pub kind: ViolationKind,
    /// What it saw, for people.
    pub message: String,
}

impl Violation {
    /// A violation of `kind`, described by `message`.
    pub fn new(kind: ViolationKind, message: impl Into<String>) -> Violation {
        Violation {
            oracle: kind.oracle(),
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ViolationKind {
    /// The kind as `results.jsonl` spells it (`answered_twice`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).expect("a unit variant serialises");
        f.write_str(name.as_str().expect("unit variants serialise as strings"))
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.oracle, self.kind, self.message)
    }
}

/// A run's trace hash, written as 16 hex digits (`"0x00ab…"`) so that JSON
/// readers that hold numbers as doubles do not round it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TraceHash(pub u64);

impl fmt::Display for TraceHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

impl TryFrom<String> for TraceHash {
    type Error = String;

    fn try_from(text: String) -> Result<TraceHash, String> {
        let digits = text
            .strip_prefix("0x")
            .ok_or_else(|| format!("trace hash {text:?} must start with 0x"))?;
        u64::from_str_radix(digits, 16)
            .map(TraceHash)
            .map_err(|e| format!("trace hash {text:?}: {e}"))
    }
}

impl From<TraceHash> for String {
    fn from(hash: TraceHash) -> String {
        hash.to_string()
    }
}

/// Everything a run reports. One JSON line of `results.jsonl` each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Scenario name.
    pub scenario: String,
    /// The run's seed.
    pub seed: u64,
    /// Protection level it ran at.
    pub level: Level,
    /// No violation.
    pub passed: bool,
    /// What the oracle found wrong; empty when `passed`.
    pub violations: Vec<Violation>,
    /// Hash of the run's event trace.
    pub trace_hash: TraceHash,
    /// One line that replays the run exactly.
    pub replay_command: String,
    /// Simulated time the run covered.
    pub sim_ms: u64,
    /// Wall time the run took.
    pub wall_ms: u64,
    /// Failovers in the run.
    pub failovers: u32,
    /// For each failover, suspicion to first released output, simulated.
    pub failover_ms: Vec<f64>,
    /// Epochs committed.
    pub epochs: u64,
    /// Median guest pause per checkpoint, simulated.
    pub pause_ns_p50: u64,
    /// 99th percentile guest pause per checkpoint, simulated.
    pub pause_ns_p99: u64,
    /// Checkpoint delta bytes shipped to the backup.
    pub delta_bytes: u64,
    /// Requests the clients sent, retries included.
    pub requests_sent: u64,
    /// Replies the clients received.
    pub replies_received: u64,
    /// The faults left no host with the VM's state (more than the one host
    /// failure the system survives): not judged for liveness or state.
    #[serde(default)]
    pub vm_lost: bool,
    /// Why the VM was lost: which host held what at the end of the safety
    /// phase, and what the witness granted (when `vm_lost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_lost_reason: Option<String>,
    /// Disk faults injected in the run and what caught them.
    #[serde(default)]
    pub disk: DiskFigures,
}

/// Disk faults injected in a run, and what the hosts did about them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFigures {
    /// Injected: torn writes, writes a crash lost, reads with a flipped
    /// bit, I/Os failed.
    pub injected: u64,
    /// Caught: reads read again and writes written again after a checksum
    /// mismatch.
    pub repaired: u64,
    /// Blocks given up on as corrupt (the host stops, fail-stop).
    pub corrupt: u64,
    /// Copy sessions that sent a restarted host only the blocks it lacked.
    pub block_resyncs: u64,
}

impl std::ops::AddAssign for DiskFigures {
    fn add_assign(&mut self, other: DiskFigures) {
        self.injected += other.injected;
        self.repaired += other.repaired;
        self.corrupt += other.corrupt;
        self.block_resyncs += other.block_resyncs;
    }
}

/// The one-line command that replays a run.
pub fn replay_command(scenario: &str, seed: u64, level: Level) -> String {
    format!("lockstep replay --scenario {scenario} --seed {seed} --level {level}")
}

impl RunResult {
    /// Whether `passed` agrees with the violations; the writers assert it.
    pub fn is_consistent(&self) -> bool {
        self.passed == self.violations.is_empty()
            && self.failover_ms.len() == self.failovers as usize
            && self.violations.iter().all(|v| v.oracle == v.kind.oracle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_hashes_round_trip_as_hex() {
        let hash = TraceHash(0xab);
        assert_eq!(hash.to_string(), "0x00000000000000ab");
        assert_eq!(TraceHash::try_from(hash.to_string()), Ok(hash));
        assert!(TraceHash::try_from("ab".to_string()).is_err());
        assert!(TraceHash::try_from("0xzz".to_string()).is_err());
    }

    #[test]
    fn oracles_are_one_to_five() {
        assert!(Oracle::try_from(0).is_err());
        assert!(Oracle::try_from(6).is_err());
        assert_eq!(Oracle::try_from(4), Ok(Oracle::LIVENESS));
        assert_eq!(Oracle::STATE.to_string(), "oracle 3 (state)");
    }

    const KINDS: &str = r#"["reply_unreadable", "reply_to_unsent_id", "answered_twice",
        "sent_twice", "reply_contradicts_journal", "two_releasers", "host_error",
        "journal_out_of_sequence", "journaled_twice", "wrong_decision", "balance_disagrees",
        "money_not_conserved", "ids_journaled_wrong", "survivor_unreadable", "run_panicked",
        "unanswered", "holder_down", "holder_not_primary", "nondeterministic"]"#;

    #[test]
    fn a_violation_is_written_with_its_kind_and_its_kind_s_oracle() {
        let v = Violation::new(ViolationKind::AnsweredTwice, "id 5 answered twice");
        assert_eq!(v.oracle, Oracle::REPLIES);
        let json = serde_json::to_value(&v).expect("serialises");
        assert_eq!(json["kind"], "answered_twice");
        assert_eq!(json["oracle"], 1);
        let back: Violation = serde_json::from_value(json).expect("reads back");
        assert_eq!(back, v);
        assert_eq!(
            v.to_string(),
            "oracle 1 (replies) answered_twice: id 5 answered twice"
        );
        assert_eq!(ViolationKind::HolderDown.oracle(), Oracle::LIVENESS);
        assert_eq!(ViolationKind::RunPanicked.oracle(), Oracle::STATE);
        assert_eq!(
            ViolationKind::Nondeterministic.oracle(),
            Oracle::DETERMINISM
        );
        // Every kind's oracle is one of the five, and each oracle has a
        // kind (the table is complete).
        let kinds: Vec<ViolationKind> =
            serde_json::from_str(KINDS).expect("every kind's name reads back");
        let oracles: std::collections::BTreeSet<u8> =
            kinds.iter().map(|k| k.oracle().number()).collect();
        assert_eq!(oracles.into_iter().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }
}
