//! A client history from the real world (`lockstep load`), as JSON lines,
//! and its judgement by the simulator's oracle against the survivor's
//! state: one oracle, two worlds. Every request sent and every reply
//! packet received is a line; the judge rebuilds what the simulator's
//! clients keep (the first reply per id, contradictions, answers to ids
//! never sent) and hands them to the same ledger check the oracle uses.

use crate::oracle::Violation;
use machine::guests::ledger_load::{
    check_ledger, LedgerConfig, LedgerProblem, LedgerReport, ProblemKind, Reply, Request,
};
use machine::{Engine, Machine, MachineError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;

/// Longest history line read.
pub const LINE_BYTES_MAX: usize = 4096;

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Line {
    /// The load began, at this wall-clock time (ns since the Unix epoch),
    /// so that other records (a kill's time) can be placed on the
    /// history's own clock.
    Start {
        /// Wall-clock time of `t_ns` 0.
        unix_ns: u64,
    },
    /// A client sent a request (again, if `retry`).
    Send {
        /// Nanoseconds since the load began.
        t_ns: u64,
        /// The client.
        client: u16,
        /// Request id.
        id: u64,
        /// Source account.
        from: u32,
        /// Destination account.
        to: u32,
        /// Amount.
        amount: u64,
        /// A resend of an unanswered request.
        retry: bool,
    },
    /// A client received a reply packet.
    Reply {
        /// Nanoseconds since the load began.
        t_ns: u64,
        /// The client.
        client: u16,
        /// The packet, hex.
        packet: String,
    },
}

/// A history, as read.
#[derive(Debug, Default)]
pub struct History {
    /// Requests by id, as first sent.
    pub requests: BTreeMap<u64, Request>,
    /// The first reply to each id, and when it came.
    pub replies: BTreeMap<u64, (Reply, u64)>,
    /// When each id was first sent.
    pub sent_at: BTreeMap<u64, u64>,
    /// Replies that contradict an earlier one, answer an id never sent, or
    /// do not parse.
    pub bad: Vec<LedgerProblem>,
    /// Packets sent, retries included.
    pub sends: u64,
    /// Wall-clock time the load began, if the history says.
    pub start_unix_ns: Option<u64>,
    /// When each reply packet arrived, in order (ns since the start).
    pub reply_times_ns: Vec<u64>,
}

/// A history that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file failed.
    #[error("history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is not a history line.
    #[error("history line {line}: {why}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
}

/// Hex of bytes, for reply packets in the history.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > LINE_BYTES_MAX {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl History {
    /// Reads a history of JSON lines. A last line cut short (the load was
    /// killed mid-write) is ignored; any other bad line is an error.
    pub fn read(reader: impl BufRead) -> Result<History, HistoryError> {
        let mut history = History::default();
        let lines: Vec<String> = reader.lines().collect::<Result<_, _>>()?;
        let last = lines.len();
        for (i, text) in lines.iter().enumerate() {
            if text.trim().is_empty() {
                continue;
            }
            let bad = |why: String| HistoryError::Line { line: i + 1, why };
            if text.len() > LINE_BYTES_MAX {
                return Err(bad(format!("longer than {LINE_BYTES_MAX} bytes")));
            }
            match serde_json::from_str::<Line>(text) {
                Ok(line) => history.add(line),
                Err(_) if i + 1 == last && !text.ends_with('}') => {}
                Err(e) => return Err(bad(e.to_string())),
            }
        }
        history.reply_times_ns.sort_unstable();
        Ok(history)
    }

    fn add(&mut self, line: Line) {
        match line {
            Line::Start { unix_ns } => self.start_unix_ns = Some(unix_ns),
            Line::Send {
                t_ns,
                id,
                from,
                to,
                amount,
                ..
            } => {
                self.sends += 1;
                let request = Request {
                    id,
                    from,
                    to,
                    amount,
                };
                let first = *self.requests.entry(id).or_insert(request);
                if first != request {
                    self.bad.push(LedgerProblem::new(
                        ProblemKind::SentTwice,
                        format!("id {id} sent as {first:?} and as {request:?}"),
                    ));
                }
                self.sent_at.entry(id).or_insert(t_ns);
            }
            Line::Reply {
                t_ns,
                client,
                packet,
            } => {
                self.reply_times_ns.push(t_ns);
                let Some(bytes) = unhex(&packet) else {
                    return self.bad.push(LedgerProblem::new(
                        ProblemKind::ReplyUnreadable,
                        format!("client {client}: reply not hex"),
                    ));
                };
                let reply = match Reply::decode(&bytes) {
                    Ok(reply) => reply,
                    Err(why) => {
                        return self.bad.push(LedgerProblem::new(
                            ProblemKind::ReplyUnreadable,
                            format!("client {client}: {why}"),
                        ))
                    }
                };
                if !self.requests.contains_key(&reply.id) {
                    return self.bad.push(LedgerProblem::new(
                        ProblemKind::ReplyToUnsentId,
                        format!("client {client}: reply to unsent id {}", reply.id),
                    ));
                }
                match self.replies.get(&reply.id) {
                    Some((first, _)) if *first != reply => {
                        self.bad.push(LedgerProblem::answered_twice(first, &reply))
                    }
                    Some(_) => {}
                    None => {
                        self.replies.insert(reply.id, (reply, t_ns));
                    }
                }
            }
        }
    }

    /// The first reply at or after `t_ns` (ns since the start).
    pub fn first_reply_after(&self, t_ns: u64) -> Option<u64> {
        let i = self.reply_times_ns.partition_point(|at| *at < t_ns);
        self.reply_times_ns.get(i).copied()
    }

    /// Reply latency of every answered id (first send to first reply), ns.
    pub fn latencies_ns(&self) -> Vec<u64> {
        self.replies
            .iter()
            .filter_map(|(id, (_, at))| Some(at.saturating_sub(*self.sent_at.get(id)?)))
            .collect()
    }
}

/// Judges `history` against the survivor's `machine` by the oracle: every
/// reply a client received matches the survivor's journal (1: nothing
/// acknowledged lost, duplicated or contradicted), and the survivor's
/// ledger replays from its journal (3). Journaled transfers must be the
/// ones the clients sent.
pub fn judge<E: Engine>(
    history: &History,
    machine: &mut Machine<E>,
    ledger: &LedgerConfig,
) -> Result<(Vec<Violation>, Option<LedgerReport>), MachineError> {
    let replies: BTreeMap<u64, Reply> = history
        .replies
        .iter()
        .map(|(id, (r, _))| (*id, *r))
        .collect();
    let checked = check_ledger(machine, ledger, &replies, &history.bad, None)?;
    let mut violations = Vec::new();
    let report = match checked {
        Ok(report) => Some(report),
        Err(problems) => {
            violations.extend(problems.into_iter().map(crate::oracle::ledger_violation));
            None
        }
    };
    Ok((violations, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_line(client: u16, id: u64, seq: u64, status: u64) -> String {
        let mut packet = id.to_le_bytes().to_vec();
        packet.extend_from_slice(&seq.to_le_bytes());
        packet.extend_from_slice(&status.to_le_bytes());
        serde_json::to_string(&Line::Reply {
            t_ns: 5,
            client,
            packet: hex(&packet),
        })
        .expect("serialises")
    }

    fn send_line(id: u64) -> String {
        serde_json::to_string(&Line::Send {
            t_ns: 1,
            client: 0,
            id,
            from: 1,
            to: 2,
            amount: 3,
            retry: false,
        })
        .expect("serialises")
    }

    #[test]
    fn contradictions_and_unsent_ids_are_bad() {
        let text = [
            send_line(1),
            reply_line(0, 1, 1, 1),
            reply_line(0, 1, 1, 1),
            reply_line(0, 1, 2, 1),
            reply_line(0, 9, 1, 1),
        ]
        .join("\n");
        let history = History::read(text.as_bytes()).expect("reads");
        assert_eq!(history.replies.len(), 1);
        let kinds: Vec<ProblemKind> = history.bad.iter().map(|b| b.kind).collect();
        assert_eq!(
            kinds,
            [ProblemKind::AnsweredTwice, ProblemKind::ReplyToUnsentId],
            "{:?}",
            history.bad
        );
        assert_eq!(history.latencies_ns(), vec![4]);
    }

    #[test]
    fn a_cut_last_line_is_ignored_and_a_bad_middle_line_is_not() {
        let cut = format!("{}\n{{\"event\":\"se", send_line(1));
        assert_eq!(History::read(cut.as_bytes()).expect("reads").sends, 1);
        let bad = format!("{}\nnonsense\n{}", send_line(1), send_line(2));
        assert!(matches!(
            History::read(bad.as_bytes()),
            Err(HistoryError::Line { line: 2, .. })
        ));
    }
}
