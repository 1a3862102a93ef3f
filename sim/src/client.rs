//! A client of the ledger service: sends transfers with request ids,
//! retries what is unanswered, and records what it sent and what it saw.

use machine::guests::ledger::TABLE_ENTRIES;
use machine::guests::ledger_load::{LedgerProblem, ProblemKind, Reply, Request};
use machine::rng::SplitMix64;
use protocol::Time;
use std::collections::BTreeMap;

/// Most requests of all clients together: request ids run from 1 to the
/// total, and each must have its own slot in the guest's reply table (an
/// id sharing a slot with another would find that one's reply and a
/// resend of it would be applied again).
pub const REQUESTS_TOTAL_MAX: u64 = TABLE_ENTRIES - 1;
const _: () = assert!(faults::scenario::REQUESTS_TOTAL_MAX <= REQUESTS_TOTAL_MAX);

/// The id of client `index`'s `n`-th request (from 1) among `clients`: ids
/// interleave, so that they are dense (1 ..= clients × requests) for any
/// number of clients.
pub fn request_id(index: u16, clients: u16, n: u64) -> u64 {
    assert!(index < clients, "a client of the workload");
    assert!(n >= 1, "requests count from 1");
    (n - 1) * u64::from(clients) + u64::from(index) + 1
}

/// One client's state and history.
#[derive(Debug)]
pub struct Client {
    index: u16,
    clients: u16,
    requests: u64,
    window: u64,
    retry_after_ns: u64,
    think_ns: u64,
    last_new: Option<Time>,
    accounts: u64,
    rng: SplitMix64,
    next: u64,
    outstanding: BTreeMap<u64, (Request, Time)>,
    /// The first reply to each id.
    pub replies: BTreeMap<u64, Reply>,
    /// When each reply first arrived.
    pub answered_at: BTreeMap<u64, Time>,
    /// Replies that contradicted an earlier one, or answered an id never
    /// sent, or did not parse.
    pub bad: Vec<LedgerProblem>,
    /// Packets sent, retries included.
    pub sent: u64,
}

impl Client {
    /// Client `index` of `clients` sending `requests` requests.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: u16,
        clients: u16,
        requests: u64,
        window: u64,
        retry_after_ns: u64,
        think_ns: u64,
        accounts: u64,
        seed: u64,
    ) -> Client {
        assert!(
            requests * u64::from(clients) <= REQUESTS_TOTAL_MAX,
            "every id has its own slot in the reply table"
        );
        Client {
            index,
            clients,
            requests,
            window,
            retry_after_ns,
            think_ns,
            last_new: None,
            accounts,
            rng: SplitMix64::new(seed ^ (0xC11E_0000 + u64::from(index))),
            next: 1,
            outstanding: BTreeMap::new(),
            replies: BTreeMap::new(),
            answered_at: BTreeMap::new(),
            bad: Vec::new(),
            sent: 0,
        }
    }

    /// Sends no new request from now on; what is outstanding is still
    /// retried.
    pub fn stop_new(&mut self) {
        self.requests = self.requests.min(self.next - 1);
    }

    /// Requests sent and not answered yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The ids of the requests sent and not answered yet, with when each
    /// was last sent.
    pub fn outstanding_ids(&self) -> impl Iterator<Item = (u64, Time)> + '_ {
        self.outstanding.iter().map(|(id, (_, at))| (*id, *at))
    }

    /// Which of `clients` clients an id belongs to.
    pub fn owner(id: u64, clients: u16) -> u16 {
        let k = id.saturating_sub(1) % u64::from(clients.max(1));
        u16::try_from(k).expect("below a u16 count")
    }

    /// The ordinal (from 1) of id among its client's requests.
    fn ordinal(&self, id: u64) -> u64 {
        id.saturating_sub(1) / u64::from(self.clients) + 1
    }

    /// Whether every request has its reply.
    pub fn done(&self) -> bool {
        self.replies.len() as u64 == self.requests
    }

    /// New requests the window allows and retries that are due.
    pub fn sends(&mut self, now: Time) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while (self.outstanding.len() as u64) < self.window
            && self.next <= self.requests
            && self.last_new.is_none_or(|t| now.0 >= t.0 + self.think_ns)
        {
            self.last_new = Some(now);
            let id = request_id(self.index, self.clients, self.next);
            let request = Request {
                id,
                from: u32::try_from(self.rng.range(0, self.accounts - 1)).expect("few accounts"),
                to: u32::try_from(self.rng.range(0, self.accounts - 1)).expect("few accounts"),
                amount: self.rng.range(1, 600),
            };
            self.next += 1;
            self.outstanding.insert(id, (request, now));
            out.push(request.encode());
        }
        for (request, sent_at) in self.outstanding.values_mut() {
            if now.0 >= sent_at.0 + self.retry_after_ns {
                *sent_at = now;
                out.push(request.encode());
            }
        }
        self.sent += out.len() as u64;
        out
    }

    /// When the client next has something to do.
    pub fn next_retry(&self) -> Option<Time> {
        let retry = self
            .outstanding
            .values()
            .map(|(_, at)| at.add_ns(self.retry_after_ns))
            .min();
        let room = (self.outstanding.len() as u64) < self.window && self.next <= self.requests;
        let new = self
            .last_new
            .filter(|_| room)
            .map(|t| t.add_ns(self.think_ns));
        match (retry, new) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A reply arrived.
    pub fn receive(&mut self, now: Time, packet: &[u8]) {
        let reply = match Reply::decode(packet) {
            Ok(reply) => reply,
            Err(problem) => {
                return self.bad.push(LedgerProblem::new(
                    ProblemKind::ReplyUnreadable,
                    format!("client {}: {problem}", self.index),
                ))
            }
        };
        let ours = reply.id >= 1
            && Client::owner(reply.id, self.clients) == self.index
            && self.ordinal(reply.id) < self.next;
        if !ours {
            return self.bad.push(LedgerProblem::new(
                ProblemKind::ReplyToUnsentId,
                format!("client {}: reply to unsent id {}", self.index, reply.id),
            ));
        }
        match self.replies.get(&reply.id) {
            Some(first) if *first != reply => {
                self.bad.push(LedgerProblem::answered_twice(first, &reply))
            }
            Some(_) => {}
            None => {
                self.replies.insert(reply.id, reply);
                self.answered_at.insert(reply.id, now);
            }
        }
        self.outstanding.remove(&reply.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_distinct_and_find_their_client_for_every_count() {
        for clients in [1u16, 2, 15, 16, 17, 40, 64] {
            let requests = faults::scenario::REQUESTS_TOTAL_MAX / u64::from(clients);
            let mut seen = std::collections::BTreeSet::new();
            for k in 0..clients {
                for n in [1, 2, requests / 2 + 1, requests] {
                    let id = request_id(k, clients, n);
                    assert!(
                        (1..TABLE_ENTRIES).contains(&id),
                        "{clients} clients: id {id}"
                    );
                    assert_eq!(Client::owner(id, clients), k);
                    assert!(
                        seen.insert(id % TABLE_ENTRIES),
                        "{clients}: slot of {id} shared"
                    );
                }
            }
        }
    }
}
