//! The run's trace: every event that crosses a boundary, hashed as it
//! happens, and kept as JSON lines when a replay asks for them. Each event
//! has a typed kind; readers (the replay's decisive events, the tests)
//! select events by kind, never by their text.

use machine::rng::Fnv64;
use serde::{Deserialize, Serialize};

/// Whether a fault event begins a fault or ends one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A crash, pause, NIC or disk failure, stall, partition or link fault.
    Begins,
    /// A restart, resume, NIC repair, disk heal, repair or link heal.
    Ends,
}

/// What kind of event a trace line is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kind {
    /// A scenario's fault event (the text is the event), on the hosts its
    /// targets resolved to when it fired.
    Fault {
        /// The fault's number, when the event names one (every beginning,
        /// and an end that reaches the host its beginning struck).
        fault: Option<u32>,
        /// Beginning or end.
        side: Side,
        /// The host names its targets resolved to.
        on: Vec<String>,
    },
    /// The liveness phase begins: every fault is healed.
    Heal,
    /// A VM host or the witness boots.
    Boot,
    /// A VM host's role or generation changed.
    Role,
    /// A host stopped itself on a disk failure (fail-stop, by design).
    FailStop,
    /// A crash lost unsynced disk writes, or failed to revert them.
    CrashDisk,
    /// A restarting host's disk scrub.
    Scrub {
        /// Every block whole: the disk may claim its checkpoint.
        clean: bool,
    },
    /// A VM host sent a protocol frame.
    Frame,
    /// The witness answered (its only frame: its state).
    WitnessAnswer,
    /// A VM host released output to a client.
    Output,
    /// A lossy link lost a frame.
    Lost,
    /// The switch moved the service address.
    ServiceAddress,
    /// A client received a reply.
    Reply,
}

impl Kind {
    /// A fault event of `side`, numbered `fault`, on the hosts `on`.
    pub fn fault(fault: Option<u32>, side: Side, on: Vec<String>) -> Kind {
        Kind::Fault { fault, side, on }
    }

    /// Whether a failed run's replay shows it among the decisive events:
    /// the faults and the heal, boots, role changes, fail-stops, disk
    /// losses of a crash, and the witness's answers.
    pub fn is_decisive(&self) -> bool {
        match self {
            Kind::Fault { .. }
            | Kind::Heal
            | Kind::Boot
            | Kind::Role
            | Kind::FailStop
            | Kind::CrashDisk
            | Kind::WitnessAnswer => true,
            Kind::Scrub { .. }
            | Kind::Frame
            | Kind::Output
            | Kind::Lost
            | Kind::ServiceAddress
            | Kind::Reply => false,
        }
    }

    /// The kind's name, for the hash (the text carries the rest).
    fn tag(&self) -> &'static str {
        match self {
            Kind::Fault { .. } => "fault",
            Kind::Heal => "heal",
            Kind::Boot => "boot",
            Kind::Role => "role",
            Kind::FailStop => "fail_stop",
            Kind::CrashDisk => "crash_disk",
            Kind::Scrub { .. } => "scrub",
            Kind::Frame => "frame",
            Kind::WitnessAnswer => "witness_answer",
            Kind::Output => "output",
            Kind::Lost => "lost",
            Kind::ServiceAddress => "service_address",
            Kind::Reply => "reply",
        }
    }
}

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Simulated time, ns.
    pub at_ns: u64,
    /// Where it happened.
    pub host: String,
    /// What kind of event.
    #[serde(flatten)]
    pub kind: Kind,
    /// What happened, for people.
    pub what: String,
}

impl TraceEvent {
    /// The event as one JSON line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings and numbers serialise")
    }
}

/// The trace of a run.
#[derive(Debug, Default)]
pub struct Trace {
    hash: Fnv64,
    events: u64,
    keep: bool,
    kept: Vec<TraceEvent>,
}

impl Trace {
    /// A trace that keeps its events (for replay) or only hashes them.
    pub fn new(keep: bool) -> Trace {
        Trace {
            keep,
            ..Trace::default()
        }
    }

    /// Records an event of `kind`.
    pub fn record(&mut self, at_ns: u64, host: &str, kind: Kind, what: impl FnOnce() -> String) {
        let what = what();
        self.hash.write(&at_ns.to_le_bytes());
        self.hash.write(host.as_bytes());
        self.hash.write(kind.tag().as_bytes());
        self.hash.write(what.as_bytes());
        self.events += 1;
        if self.keep {
            self.kept.push(TraceEvent {
                at_ns,
                host: host.to_string(),
                kind,
                what,
            });
        }
    }

    /// The hash of everything recorded.
    pub fn hash(&self) -> u64 {
        self.hash.finish()
    }

    /// Events recorded.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// The events kept (empty unless kept).
    pub fn events(&self) -> &[TraceEvent] {
        &self.kept
    }
}

/// The last `most` decisive events of `trace` (see [`Kind::is_decisive`]),
/// in order.
pub fn decisive(trace: &[TraceEvent], most: usize) -> Vec<&TraceEvent> {
    let all: Vec<&TraceEvent> = trace.iter().filter(|e| e.kind.is_decisive()).collect();
    all[all.len().saturating_sub(most)..].to_vec()
}

/// A short fingerprint of bytes for the trace.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hash = Fnv64::default();
    hash.write(bytes);
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_line_that_reads_back_with_its_kind() {
        let mut trace = Trace::new(true);
        let on = vec!["b".to_string()];
        trace.record(7, "faults", Kind::fault(Some(3), Side::Ends, on), || {
            "Resume(Struck(3)) on b \"quoted\"\n".to_string()
        });
        trace.record(9, "a", Kind::Scrub { clean: false }, || "scrub".into());
        let line = trace.events()[0].to_json();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(value["kind"], "fault");
        assert_eq!(value["side"], "ends");
        assert_eq!(value["fault"], 3);
        assert_eq!(value["on"][0], "b");
        for event in trace.events() {
            let back: TraceEvent = serde_json::from_str(&event.to_json()).expect("reads back");
            assert_eq!(&back, event);
        }
    }

    #[test]
    fn the_kind_is_part_of_the_hash() {
        let mut a = Trace::new(false);
        let mut b = Trace::new(false);
        a.record(1, "a", Kind::Role, || "x".into());
        b.record(1, "a", Kind::Boot, || "x".into());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn decisive_events_are_the_last_faults_roles_fail_stops_and_answers() {
        let mut trace = Trace::new(true);
        let kinds = [
            Kind::Frame,
            Kind::fault(Some(0), Side::Begins, vec!["a".into()]),
            Kind::Reply,
            Kind::FailStop,
            Kind::Output,
            Kind::WitnessAnswer,
            Kind::Role,
        ];
        for (at, kind) in kinds.into_iter().enumerate() {
            trace.record(at as u64, "a", kind, String::new);
        }
        let at: Vec<u64> = decisive(trace.events(), 3)
            .iter()
            .map(|e| e.at_ns)
            .collect();
        assert_eq!(at, [3, 5, 6]);
        let at: Vec<u64> = decisive(trace.events(), 20)
            .iter()
            .map(|e| e.at_ns)
            .collect();
        assert_eq!(at, [1, 3, 5, 6]);
    }
}
