//! The run's trace: every event that crosses a boundary, hashed as it
//! happens, and kept as JSON lines when a replay asks for them.

use machine::rng::Fnv64;
use std::fmt::Write as _;

/// One traced event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time, ns.
    pub at_ns: u64,
    /// Where it happened.
    pub host: String,
    /// What happened.
    pub what: String,
}

impl TraceEvent {
    /// The event as one JSON line.
    pub fn to_json(&self) -> String {
        let mut line = String::new();
        write!(
            line,
            "{{\"at_ns\":{},\"host\":\"{}\",\"what\":\"{}\"}}",
            self.at_ns,
            escape(&self.host),
            escape(&self.what)
        )
        .expect("writing to a String");
        line
    }
}

fn escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if c.is_control() => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect()
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

    /// Records an event.
    pub fn record(&mut self, at_ns: u64, host: &str, what: impl FnOnce() -> String) {
        let what = what();
        self.hash.write(&at_ns.to_le_bytes());
        self.hash.write(host.as_bytes());
        self.hash.write(what.as_bytes());
        self.events += 1;
        if self.keep {
            self.kept.push(TraceEvent {
                at_ns,
                host: host.to_string(),
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

/// A short fingerprint of bytes for the trace.
pub fn digest(bytes: &[u8]) -> u64 {
    let mut hash = Fnv64::default();
    hash.write(bytes);
    hash.finish()
}
