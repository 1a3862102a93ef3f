//! The ledger's load generator (requests in on the NIC, replies out) and
//! its invariant check against guest memory and the disk journal.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::ledger::*;
use crate::devices::{DeviceBus, BLOCK_BYTES};
use crate::engine::Engine;
use crate::machine::{Machine, MachineError};
use crate::rng::SplitMix64;
use crate::units::{Gpa, GuestNs, Instructions};

/// The shape of a ledger workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Number of accounts (at most `ACCOUNTS_MAX`).
    pub accounts: u64,
    /// Every account's balance at boot.
    pub initial_balance: u64,
    /// Distinct request ids to serve, `1..=requests`.
    pub requests: u64,
    /// Most packets in flight to the guest.
    pub window: u64,
    /// Percent of sends that repeat an earlier id.
    pub repeat_percent: u64,
}

impl LedgerConfig {
    /// A workload of `requests` requests with the usual other settings.
    pub fn with_requests(requests: u64) -> LedgerConfig {
        LedgerConfig {
            accounts: 16,
            initial_balance: 1000,
            requests,
            window: 16,
            repeat_percent: 5,
        }
    }

    /// The guest's boot parameters.
    pub fn params(&self) -> [u64; crate::boot::BOOT_PARAMS] {
        [self.accounts, self.initial_balance, 0, 0, 0, 0, 0, 0]
    }
}

/// A transfer request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Request id, from 1.
    pub id: u64,
    /// Source account.
    pub from: u32,
    /// Destination account.
    pub to: u32,
    /// Amount.
    pub amount: u64,
}

/// The guest's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    /// Request id.
    pub id: u64,
    /// Journal sequence number of the decision (from 1).
    pub seq: u64,
    /// One of the `STATUS_*` values.
    pub status: u64,
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

impl Request {
    /// The request as the guest reads it off the NIC.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(REQUEST_BYTES);
        bytes.extend_from_slice(&self.id.to_le_bytes());
        bytes.extend_from_slice(&self.from.to_le_bytes());
        bytes.extend_from_slice(&self.to.to_le_bytes());
        bytes.extend_from_slice(&self.amount.to_le_bytes());
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes
    }

    /// Parses a request as [`Request::encode`] writes it.
    pub fn decode(packet: &[u8]) -> Result<Request, String> {
        if packet.len() != REQUEST_BYTES {
            return Err(format!("request of {} bytes", packet.len()));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes(packet[at..at + 4].try_into().expect("4 bytes"));
        Ok(Request {
            id: u64_at(packet, 0),
            from: u32_at(8),
            to: u32_at(12),
            amount: u64_at(packet, 16),
        })
    }
}

impl Reply {
    /// Parses a packet the guest sent.
    pub fn decode(packet: &[u8]) -> Result<Reply, String> {
        if packet.len() != REPLY_BYTES {
            return Err(format!("reply of {} bytes", packet.len()));
        }
        Ok(Reply {
            id: u64_at(packet, 0),
            seq: u64_at(packet, 8),
            status: u64_at(packet, 16),
        })
    }
}

/// What the ledger check can find wrong, by kind: the oracle sorts
/// problems by their kind, never by their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// A reply that does not parse.
    ReplyUnreadable,
    /// A reply to an id that was never sent.
    ReplyToUnsentId,
    /// An id answered with two different replies.
    AnsweredTwice,
    /// A request id sent with two different contents.
    SentTwice,
    /// A reply that the journal contradicts.
    ReplyContradictsJournal,
    /// A journal record out of sequence.
    JournalOutOfSequence,
    /// An id in the journal twice.
    JournaledTwice,
    /// A journaled decision the ledger's rules do not make.
    WrongDecision,
    /// An account's balance in memory disagrees with the journal.
    BalanceDisagrees,
    /// The balances do not add up to the money the ledger began with.
    MoneyNotConserved,
    /// The journal holds more or fewer ids than requests were answered.
    IdsJournaledWrong,
}

/// One problem the ledger check found: its kind, and what it saw for
/// people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerProblem {
    /// What kind of problem.
    pub kind: ProblemKind,
    /// What it saw.
    pub message: String,
}

impl LedgerProblem {
    /// A problem of `kind` described by `message`.
    pub fn new(kind: ProblemKind, message: impl Into<String>) -> LedgerProblem {
        LedgerProblem {
            kind,
            message: message.into(),
        }
    }

    /// `then` answers an id that `first` already answered differently.
    pub fn answered_twice(first: &Reply, then: &Reply) -> LedgerProblem {
        LedgerProblem::new(
            ProblemKind::AnsweredTwice,
            format!("id {} answered {first:?} then {then:?}", then.id),
        )
    }
}

impl std::fmt::Display for LedgerProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Drives requests into the NIC and collects replies, through the
/// machine's client link ([`DeviceBus::deliver_client`]).
#[derive(Debug, Clone)]
pub struct LedgerLoad {
    config: LedgerConfig,
    rng: SplitMix64,
    next_id: u64,
    requests: BTreeMap<u64, Request>,
    replies: BTreeMap<u64, Reply>,
    in_flight: u64,
    /// Set: packets go missing (a guest whose service is not up yet, or
    /// restarts) and unanswered requests are sent again.
    retries: Option<Retries>,
    /// Guest time at the last [`LedgerLoad::step`].
    now: GuestNs,
    /// Replies that differ from an earlier reply to the same id, or that
    /// answer an id never sent, or that do not parse.
    pub bad_replies: Vec<LedgerProblem>,
}

/// A load that sends unanswered requests again: a packet unanswered for
/// `after_ns` of guest time counts as lost, leaves the window, and its
/// request goes again if no other packet of its id is still pending.
#[derive(Debug, Clone)]
struct Retries {
    after_ns: u64,
    /// The packets in the window: each one's id and when it was sent,
    /// oldest first (at most the window).
    pending: VecDeque<(u64, GuestNs)>,
    resent: u64,
}

impl LedgerLoad {
    /// A load generator drawing from `seed`.
    pub fn new(config: LedgerConfig, seed: u64) -> LedgerLoad {
        assert!(config.requests < TABLE_ENTRIES, "ids index the reply table");
        assert!(config.accounts > 0 && config.accounts <= ACCOUNTS_MAX);
        LedgerLoad {
            config,
            rng: SplitMix64::new(seed ^ 0x6c65_6467_6572),
            next_id: 1,
            requests: BTreeMap::new(),
            replies: BTreeMap::new(),
            in_flight: 0,
            retries: None,
            now: GuestNs(0),
            bad_replies: Vec::new(),
        }
    }

    /// This load sending a request again when none of its packets was
    /// answered within `after_ns` of guest time: for a guest that may
    /// lose packets (the Linux guest before its service binds its port).
    /// Without it every packet is answered, and the load waits for each.
    pub fn with_retries(mut self, after_ns: u64) -> LedgerLoad {
        assert!(after_ns > 0, "a packet gets time to be answered");
        self.retries = Some(Retries {
            after_ns,
            pending: VecDeque::new(),
            resent: 0,
        });
        self
    }

    /// Distinct requests answered.
    pub fn served(&self) -> u64 {
        self.replies.len() as u64
    }

    /// Requests sent again for want of an answer.
    pub fn resent(&self) -> u64 {
        self.retries.as_ref().map_or(0, |r| r.resent)
    }

    /// How many distinct ids the journal must hold: every request's, once
    /// the load is done; unknown before.
    fn expected_ids(&self) -> Option<u64> {
        self.done().then_some(self.config.requests)
    }

    /// Whether every request has an answer (and, without retries, every
    /// packet sent).
    pub fn done(&self) -> bool {
        let all = self.served() == self.config.requests;
        match self.retries {
            Some(_) => all,
            None => all && self.in_flight == 0,
        }
    }

    /// The replies received, by id.
    pub fn replies(&self) -> &BTreeMap<u64, Reply> {
        &self.replies
    }

    fn draw(&mut self) -> Option<Request> {
        let repeat = self.rng.range(0, 99) < self.config.repeat_percent;
        if repeat && !self.requests.is_empty() {
            let id = self.rng.range(1, self.next_id - 1);
            return self.requests.get(&id).copied();
        }
        if self.next_id > self.config.requests {
            return None;
        }
        let accounts = self.config.accounts - 1;
        let request = Request {
            id: self.next_id,
            from: u32::try_from(self.rng.range(0, accounts)).expect("few accounts"),
            to: u32::try_from(self.rng.range(0, accounts)).expect("few accounts"),
            amount: self.rng.range(1, self.config.initial_balance),
        };
        self.requests.insert(request.id, request);
        self.next_id += 1;
        Some(request)
    }

    /// Packets in the window.
    fn window_used(&self) -> u64 {
        match &self.retries {
            Some(retries) => retries.pending.len() as u64,
            None => self.in_flight,
        }
    }

    /// Delivers requests while the window and the NIC's rx queue allow:
    /// first those due again, then new ones (or repeats).
    pub fn feed(&mut self, bus: &mut DeviceBus) {
        let room = |bus: &DeviceBus| bus.nic.rx_len() < crate::devices::nic::RX_QUEUE_MAX;
        for request in self.due_again() {
            if !room(bus) {
                break;
            }
            self.send(bus, request);
        }
        while self.window_used() < self.config.window && room(bus) {
            let Some(request) = self.draw() else { break };
            self.send(bus, request);
        }
    }

    /// With retries: drops the packets unanswered too long from the
    /// window, and returns the requests of those with no other packet
    /// pending and no answer, oldest first.
    fn due_again(&mut self) -> Vec<Request> {
        let Some(retries) = self.retries.as_mut() else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        while let Some(&(id, sent)) = retries.pending.front() {
            if sent.0.saturating_add(retries.after_ns) > self.now.0 {
                break;
            }
            retries.pending.pop_front();
            lost.push(id);
        }
        let mut seen = BTreeSet::new();
        lost.retain(|id| {
            seen.insert(*id)
                && !self.replies.contains_key(id)
                && !retries.pending.iter().any(|(p, _)| p == id)
        });
        retries.resent += lost.len() as u64;
        lost.iter()
            .filter_map(|id| self.requests.get(id).copied())
            .collect()
    }

    fn send(&mut self, bus: &mut DeviceBus, request: Request) {
        bus.deliver_client(request.encode())
            .expect("checked room; a request fits any NIC");
        match self.retries.as_mut() {
            Some(retries) => retries.pending.push_back((request.id, self.now)),
            None => self.in_flight += 1,
        }
    }

    /// A reply to `id` arrived: one of its packets leaves the window.
    fn answered(&mut self, id: u64) {
        match self.retries.as_mut() {
            Some(retries) => {
                if let Some(at) = retries.pending.iter().position(|(p, _)| *p == id) {
                    retries.pending.remove(at);
                }
            }
            None => self.in_flight = self.in_flight.saturating_sub(1),
        }
    }

    /// Takes the guest's replies off the NIC.
    pub fn drain(&mut self, bus: &mut DeviceBus) {
        for packet in bus.take_client_output() {
            let reply = match Reply::decode(&packet) {
                Ok(reply) => reply,
                Err(problem) => {
                    self.answered_unreadable();
                    self.bad_replies
                        .push(LedgerProblem::new(ProblemKind::ReplyUnreadable, problem));
                    continue;
                }
            };
            self.answered(reply.id);
            if !self.requests.contains_key(&reply.id) {
                self.bad_replies.push(LedgerProblem::new(
                    ProblemKind::ReplyToUnsentId,
                    format!("reply to unsent id {}", reply.id),
                ));
            }
            match self.replies.get(&reply.id) {
                Some(first) if *first != reply => self
                    .bad_replies
                    .push(LedgerProblem::answered_twice(first, &reply)),
                Some(_) => {}
                None => {
                    self.replies.insert(reply.id, reply);
                }
            }
        }
    }

    /// One step of the driver: feed, run `slice`, drain.
    pub fn step<E: Engine>(
        &mut self,
        machine: &mut Machine<E>,
        slice: Instructions,
    ) -> Result<(), MachineError> {
        self.now = machine.engine().now();
        self.feed(machine.bus());
        machine.run(slice)?;
        self.drain(machine.bus());
        Ok(())
    }

    /// A reply that does not parse names no id: without retries it still
    /// answers some packet; with them the packet it answered times out.
    fn answered_unreadable(&mut self) {
        if self.retries.is_none() {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }
}

/// What the invariant check found in a healthy ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerReport {
    /// Journal records (decisions) written.
    pub journal_records: u64,
    /// Transfers applied.
    pub applied: u64,
    /// Transfers rejected or invalid.
    pub refused: u64,
    /// Sum of all balances (equals accounts × initial balance).
    pub total_money: u64,
    /// Per vCPU, lock acquisitions that found the lock held: each one is a
    /// vCPU switch that happened inside the critical section.
    pub contended: Vec<u64>,
}

fn read_u64<E: Engine>(machine: &Machine<E>, address: u64) -> Result<u64, MachineError> {
    let mut bytes = [0u8; 8];
    machine.engine().read_memory(Gpa(address), &mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// One journal record as the ledger writes it (see [`super::ledger`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number, from 1.
    pub seq: u64,
    /// The request id it decides.
    pub id: u64,
    /// The source account (16 bits of it).
    pub from: u64,
    /// The destination account (16 bits of it).
    pub to: u64,
    /// One of the `STATUS_*` values.
    pub status: u64,
    /// The amount.
    pub amount: u64,
}

impl Record {
    /// The record at the start of `bytes` (at least [`RECORD_BYTES`]).
    pub fn decode(bytes: &[u8]) -> Record {
        let word = u64_at(bytes, 16);
        Record {
            seq: u64_at(bytes, 0),
            id: u64_at(bytes, 8),
            from: word & 0xffff,
            to: (word >> 16) & 0xffff,
            status: word >> 32,
            amount: u64_at(bytes, 24),
        }
    }
}

fn read_journal<E: Engine>(
    machine: &mut Machine<E>,
    records: u64,
) -> Result<Vec<Record>, MachineError> {
    let mut out = Vec::new();
    let mut block = [0u8; BLOCK_BYTES];
    for k in 0..records {
        if k % RECORDS_PER_BLOCK == 0 {
            machine
                .bus()
                .store()
                .read_block(k / RECORDS_PER_BLOCK, &mut block)?;
        }
        let at = (k % RECORDS_PER_BLOCK) as usize * RECORD_BYTES;
        out.push(Record::decode(&block[at..]));
    }
    Ok(out)
}

/// The journal in `blocks` (a disk's bytes from block 0, as a service
/// that keeps no record count in memory writes it): its records up to
/// the first all-zero one.
pub fn journal_from_blocks(blocks: &[u8]) -> Vec<Record> {
    blocks
        .chunks_exact(RECORD_BYTES)
        .take_while(|bytes| bytes.iter().any(|b| *b != 0))
        .map(Record::decode)
        .collect()
}

/// What [`check_journal`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalCheck {
    /// Every violation, the clients' `bad_replies` first.
    pub violations: Vec<LedgerProblem>,
    /// The balances the journal's replay gives.
    pub balances: Vec<u64>,
    /// Transfers applied.
    pub applied: u64,
    /// Transfers rejected or invalid.
    pub refused: u64,
}

/// Checks a journal against the replies the clients received, whatever
/// wrote it: records in sequence, no id twice, every decision the right
/// one for the balances the records before it leave, every reply that
/// of its record, and, when every request was answered, `expected_ids`
/// distinct ids journaled.
pub fn check_journal(
    config: &LedgerConfig,
    journal: &[Record],
    replies: &BTreeMap<u64, Reply>,
    bad_replies: &[LedgerProblem],
    expected_ids: Option<u64>,
) -> JournalCheck {
    let mut violations = bad_replies.to_vec();
    let mut balances = vec![config.initial_balance; config.accounts as usize];
    let (mut applied, mut refused) = (0, 0);
    let mut ids = BTreeSet::new();
    for (k, record) in journal.iter().enumerate() {
        if record.seq != k as u64 + 1 {
            violations.push(LedgerProblem::new(
                ProblemKind::JournalOutOfSequence,
                format!("journal record {k} has seq {}", record.seq),
            ));
        }
        if !ids.insert(record.id) {
            violations.push(LedgerProblem::new(
                ProblemKind::JournaledTwice,
                format!("id {} journaled twice", record.id),
            ));
        }
        if let Err(problem) = replay(&mut balances, record) {
            violations.push(LedgerProblem::new(
                ProblemKind::WrongDecision,
                format!("journal record {k}: {problem}"),
            ));
        }
        if record.status == u64::from(STATUS_APPLIED) {
            applied += 1;
        } else {
            refused += 1;
        }
    }
    for reply in replies.values() {
        let matches = reply.seq >= 1
            && journal
                .get(reply.seq as usize - 1)
                .is_some_and(|r| r.id == reply.id && r.status == reply.status);
        if !matches {
            violations.push(LedgerProblem::new(
                ProblemKind::ReplyContradictsJournal,
                format!("reply {reply:?} does not match the journal"),
            ));
        }
    }
    if let Some(expected) = expected_ids.filter(|e| ids.len() as u64 != *e) {
        violations.push(LedgerProblem::new(
            ProblemKind::IdsJournaledWrong,
            format!("{} ids journaled for {expected} requests", ids.len()),
        ));
    }
    JournalCheck {
        violations,
        balances,
        applied,
        refused,
    }
}

/// Checks the ledger: money is conserved, replaying the journal gives the
/// balances in memory and every decision was right, no id is in the
/// journal twice, every reply matches its journal record, and every
/// request was answered once the load is done. Returns what it found or
/// a list of violations.
pub fn check<E: Engine>(
    machine: &mut Machine<E>,
    load: &LedgerLoad,
) -> Result<Result<LedgerReport, Vec<LedgerProblem>>, MachineError> {
    check_ledger(
        machine,
        &load.config,
        &load.replies,
        &load.bad_replies,
        load.expected_ids(),
    )
}

/// [`check`] for clients that are not a [`LedgerLoad`] (the simulator's,
/// which talk to the guest over a network): the replies they received, the
/// problems they saw in replies, and, when every request was answered, how
/// many distinct ids the journal must hold.
pub fn check_ledger<E: Engine>(
    machine: &mut Machine<E>,
    config: &LedgerConfig,
    replies: &BTreeMap<u64, Reply>,
    bad_replies: &[LedgerProblem],
    expected_ids: Option<u64>,
) -> Result<Result<LedgerReport, Vec<LedgerProblem>>, MachineError> {
    let config = *config;
    let records = read_u64(machine, SEQ)?;
    let journal = read_journal(machine, records)?;
    let JournalCheck {
        mut violations,
        balances,
        applied,
        refused,
    } = check_journal(&config, &journal, replies, bad_replies, expected_ids);
    let mut total_money = 0u64;
    for (account, expected) in balances.iter().enumerate() {
        let offset = read_u64(machine, BALANCES + 8 * account as u64)?;
        let actual = config.initial_balance.wrapping_add(offset);
        total_money = total_money.wrapping_add(actual);
        if actual != *expected {
            violations.push(LedgerProblem::new(
                ProblemKind::BalanceDisagrees,
                format!("account {account}: memory {actual}, journal {expected}"),
            ));
        }
    }
    let mut contended = Vec::new();
    for vcpu in 0..u64::from(machine.shape().vcpus()) {
        contended.push(read_u64(machine, CONTENDED + 8 * vcpu)?);
    }
    let report = LedgerReport {
        journal_records: records,
        applied,
        refused,
        total_money,
        contended,
    };
    Ok(conclude(&config, violations, report))
}

/// The report, unless problems were found or the money the ledger ends
/// with is not the money it began with (one more problem).
fn conclude(
    config: &LedgerConfig,
    mut violations: Vec<LedgerProblem>,
    report: LedgerReport,
) -> Result<LedgerReport, Vec<LedgerProblem>> {
    let total_money = report.total_money;
    if total_money != config.accounts * config.initial_balance {
        violations.push(LedgerProblem::new(
            ProblemKind::MoneyNotConserved,
            format!("money not conserved: {total_money}"),
        ));
    }
    if violations.is_empty() {
        Ok(report)
    } else {
        Err(violations)
    }
}

/// [`check`] for a service that keeps nothing the host can read in guest
/// memory, only its journal on the disk (the Linux guest's
/// lockstep-ledger): see [`check_disk_ledger`].
pub fn check_disk_journal<E: Engine>(
    machine: &mut Machine<E>,
    load: &LedgerLoad,
) -> Result<Result<LedgerReport, Vec<LedgerProblem>>, MachineError> {
    check_disk_ledger(
        machine,
        &load.config,
        &load.replies,
        &load.bad_replies,
        load.expected_ids(),
    )
}

/// [`check_ledger`] for a service whose journal on the disk is all the
/// host can read: the journal read from the disk's blocks up to its first
/// all-zero record, judged by [`check_journal`] against the replies, and
/// the balances its replay gives adding up to the money the ledger began
/// with. The report's `contended` is empty: the host sees no lock.
pub fn check_disk_ledger<E: Engine>(
    machine: &mut Machine<E>,
    config: &LedgerConfig,
    replies: &BTreeMap<u64, Reply>,
    bad_replies: &[LedgerProblem],
    expected_ids: Option<u64>,
) -> Result<Result<LedgerReport, Vec<LedgerProblem>>, MachineError> {
    let journal = journal_from_blocks(&journal_blocks(machine.bus())?);
    let JournalCheck {
        violations,
        balances,
        applied,
        refused,
    } = check_journal(config, &journal, replies, bad_replies, expected_ids);
    let report = LedgerReport {
        journal_records: journal.len() as u64,
        applied,
        refused,
        total_money: balances.iter().fold(0u64, |sum, b| sum.wrapping_add(*b)),
        contended: Vec::new(),
    };
    Ok(conclude(config, violations, report))
}

/// The disk's blocks from block 0 through the first that holds an
/// all-zero record (where a journal ends), or all of them.
fn journal_blocks(bus: &mut DeviceBus) -> Result<Vec<u8>, MachineError> {
    let store = bus.store();
    let mut bytes = Vec::new();
    let mut block = [0u8; BLOCK_BYTES];
    for number in 0..store.block_count() {
        store.read_block(number, &mut block)?;
        bytes.extend_from_slice(&block);
        let ends = block
            .chunks_exact(RECORD_BYTES)
            .any(|record| record.iter().all(|b| *b == 0));
        if ends {
            break;
        }
    }
    Ok(bytes)
}

fn replay(balances: &mut [u64], record: &Record) -> Result<(), String> {
    let accounts = balances.len() as u64;
    let valid = record.from < accounts && record.to < accounts;
    let status = u32::try_from(record.status).map_err(|_| "status".to_string())?;
    match (status, valid) {
        (STATUS_INVALID, false) => Ok(()),
        (STATUS_REJECTED, true) if balances[record.from as usize] < record.amount => Ok(()),
        (STATUS_APPLIED, true) if balances[record.from as usize] >= record.amount => {
            balances[record.from as usize] -= record.amount;
            balances[record.to as usize] += record.amount;
            Ok(())
        }
        _ => Err(format!("wrong decision {status} (id {})", record.id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::MemStore;
    use crate::fake::FakeEngine;
    use crate::layout::{Shape, MEMORY_BYTES_MIN};

    #[test]
    fn a_journal_read_from_its_blocks_ends_at_its_first_zero_record() {
        let record = |seq: u64| {
            let word = (u64::from(STATUS_REJECTED) << 32) | (3 << 16) | 4;
            [seq, seq + 100, word, 9]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let zero = vec![0; RECORD_BYTES];
        let blocks = [record(1), record(2), zero, record(4), vec![0; 5]].concat();
        let journal = journal_from_blocks(&blocks);
        assert_eq!(journal.len(), 2);
        let second = Record {
            seq: 2,
            id: 102,
            from: 4,
            to: 3,
            status: u64::from(STATUS_REJECTED),
            amount: 9,
        };
        assert_eq!(journal[1], second);
    }

    #[test]
    fn a_request_decodes_as_encoded_and_a_wrong_length_is_an_error() {
        let request = Request {
            id: u64::MAX - 3,
            from: 7,
            to: u32::MAX,
            amount: 1 << 40,
        };
        let bytes = request.encode();
        assert_eq!(Request::decode(&bytes), Ok(request));
        assert!(Request::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Request::decode(&[bytes.clone(), vec![0]].concat()).is_err());
    }

    fn put_u64<E: Engine>(machine: &mut Machine<E>, address: u64, value: u64) {
        let gpa = Gpa(address);
        machine
            .engine_mut()
            .write_memory(gpa, &value.to_le_bytes())
            .expect("in range");
    }

    /// The ledger guest's algorithm in Rust, over the same memory, journal
    /// and packets, so the check can be tried on states we tamper with.
    fn serve<E: Engine>(machine: &mut Machine<E>, config: &LedgerConfig) {
        while machine.bus().nic.rx_len() > 0 {
            let vcpu = crate::units::VcpuId(0);
            let ctx = crate::devices::IoContext {
                vcpu,
                now: crate::units::GuestNs(0),
            };
            machine
                .bus()
                .port_in(ctx, crate::devices::PORT_NIC_RX_POP, 4);
            let word = |m: &mut Machine<E>| {
                u64::from(m.bus().port_in(ctx, crate::devices::PORT_NIC_RX_DATA, 4))
            };
            let id = word(machine) | word(machine) << 32;
            let (from, to) = (word(machine), word(machine));
            let amount = word(machine) | word(machine) << 32;
            let slot = TABLE + 16 * (id % TABLE_ENTRIES);
            let (seq, status) = if read_u64(machine, slot).expect("in range") == id {
                let packed = read_u64(machine, slot + 8).expect("in range");
                (packed & 0xffff_ffff, packed >> 32)
            } else {
                let balance =
                    |m: &Machine<E>, a: u64| read_u64(m, BALANCES + 8 * a).expect("in range");
                let funds = config.initial_balance.wrapping_add(balance(machine, from));
                let status = if funds >= amount {
                    STATUS_APPLIED
                } else {
                    STATUS_REJECTED
                };
                if status == STATUS_APPLIED {
                    let (f, t) = (balance(machine, from), balance(machine, to));
                    put_u64(machine, BALANCES + 8 * from, f.wrapping_sub(amount));
                    let t = if from == to {
                        f.wrapping_sub(amount)
                    } else {
                        t
                    };
                    put_u64(machine, BALANCES + 8 * to, t.wrapping_add(amount));
                }
                let seq = read_u64(machine, SEQ).expect("in range") + 1;
                put_u64(machine, SEQ, seq);
                let mut block = [0u8; BLOCK_BYTES];
                let number = (seq - 1) / RECORDS_PER_BLOCK;
                machine
                    .bus()
                    .store()
                    .read_block(number, &mut block)
                    .expect("in range");
                let at = ((seq - 1) % RECORDS_PER_BLOCK) as usize * RECORD_BYTES;
                let record = [seq, id, from | to << 16 | u64::from(status) << 32, amount];
                for (i, value) in record.iter().enumerate() {
                    block[at + 8 * i..at + 8 * i + 8].copy_from_slice(&value.to_le_bytes());
                }
                machine
                    .bus()
                    .store()
                    .write_block(number, &block)
                    .expect("in range");
                put_u64(machine, slot, id);
                put_u64(machine, slot + 8, seq | u64::from(status) << 32);
                (seq, u64::from(status))
            };
            send_reply(machine, [id, seq, status]);
        }
    }

    fn send_reply<E: Engine>(machine: &mut Machine<E>, words: [u64; 3]) {
        let vcpu = crate::units::VcpuId(0);
        let ctx = crate::devices::IoContext {
            vcpu,
            now: crate::units::GuestNs(0),
        };
        for value in words {
            for half in [value as u32, (value >> 32) as u32] {
                machine
                    .bus()
                    .port_out(ctx, crate::devices::PORT_NIC_TX_DATA, 4, half);
            }
        }
        machine
            .bus()
            .port_out(ctx, crate::devices::PORT_NIC_TX_SEND, 4, REPLY_BYTES as u32);
    }

    fn served(requests: u64) -> (Machine<FakeEngine>, LedgerLoad) {
        let config = LedgerConfig::with_requests(requests);
        let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
        let bus = DeviceBus::new(1, Box::new(MemStore::new(64)));
        let mut machine = Machine::new(shape, FakeEngine::new(&shape), bus);
        let mut load = LedgerLoad::new(config, 3);
        while !load.done() {
            load.feed(machine.bus());
            serve(&mut machine, &config);
            load.drain(machine.bus());
        }
        (machine, load)
    }

    /// Flips the bits of `mask` in byte `at` of disk block `number`.
    fn flip(machine: &mut Machine<FakeEngine>, number: u64, at: usize, mask: u8) {
        let mut block = [0u8; BLOCK_BYTES];
        let store = machine.bus().store();
        store.read_block(number, &mut block).expect("in range");
        block[at] ^= mask;
        store.write_block(number, &block).expect("in range");
    }

    #[test]
    fn with_retries_the_requests_lost_before_the_service_listens_go_again() {
        let config = LedgerConfig::with_requests(60);
        let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
        let bus = DeviceBus::new(1, Box::new(MemStore::new(64)));
        let mut machine = Machine::new(shape, FakeEngine::new(&shape), bus);
        let mut load = LedgerLoad::new(config, 3).with_retries(1000);
        // Nothing listens yet: the first window is lost.
        load.feed(machine.bus());
        let mut lost = BTreeSet::new();
        while let Some(packet) = machine.bus().nic.rx_take() {
            lost.insert(Request::decode(&packet).expect("a request").id);
        }
        assert!(lost.len() > 1, "{lost:?}");
        load.now = GuestNs(999);
        load.feed(machine.bus());
        assert_eq!(
            machine.bus().nic.rx_len(),
            0,
            "the window is full until they time out"
        );
        load.now = GuestNs(1000);
        load.feed(machine.bus());
        let mut again = BTreeSet::new();
        let mut sent = Vec::new();
        while let Some(packet) = machine.bus().nic.rx_take() {
            again.insert(Request::decode(&packet).expect("a request").id);
            sent.push(packet);
        }
        for packet in sent {
            machine.bus().nic.deliver(packet).expect("room");
        }
        assert_eq!(again, lost, "every lost request goes again, once");
        assert_eq!(load.resent(), lost.len() as u64);
        while !load.done() {
            serve(&mut machine, &config);
            load.drain(machine.bus());
            load.now = GuestNs(load.now.0 + 1);
            load.feed(machine.bus());
        }
        let report = check(&mut machine, &load)
            .expect("readable")
            .expect("healthy");
        assert_eq!(report.journal_records, 60);
        assert_eq!(
            load.resent(),
            lost.len() as u64,
            "nothing answered goes again"
        );
    }

    #[test]
    fn the_journal_on_the_disk_alone_judges_a_service_that_shows_no_memory() {
        let (mut machine, load) = served(120);
        let report = check_disk_journal(&mut machine, &load)
            .expect("readable")
            .expect("healthy");
        assert_eq!(report.journal_records, 120);
        assert_eq!(report.total_money, 16 * 1000);
        assert!(report.contended.is_empty());
        flip(&mut machine, 2, 20, 3); // the status of block 2's first record (seq 33)
        let violations = check_disk_journal(&mut machine, &load)
            .expect("readable")
            .expect_err("caught");
        assert!(
            violations
                .iter()
                .any(|v| v.kind == ProblemKind::ReplyContradictsJournal),
            "{violations:?}"
        );
    }

    #[test]
    fn a_correct_ledger_passes() {
        let (mut machine, load) = served(200);
        let report = check(&mut machine, &load)
            .expect("readable")
            .expect("healthy");
        assert_eq!(report.journal_records, 200);
        assert_eq!(report.total_money, 16 * 1000);
        assert!(report.applied > 0 && report.refused > 0, "{report:?}");
    }

    #[test]
    fn a_changed_balance_is_caught() {
        let (mut machine, load) = served(50);
        let balance = read_u64(&machine, BALANCES + 8).expect("in range");
        put_u64(&mut machine, BALANCES + 8, balance.wrapping_add(5));
        let violations = check(&mut machine, &load)
            .expect("readable")
            .expect_err("caught");
        assert!(
            violations
                .iter()
                .any(|v| v.kind == ProblemKind::BalanceDisagrees && v.message.contains("account 1")),
            "{violations:?}"
        );
        assert!(
            violations
                .iter()
                .any(|v| v.kind == ProblemKind::MoneyNotConserved),
            "{violations:?}"
        );
    }

    #[test]
    fn a_journal_that_disagrees_with_a_reply_is_caught() {
        let (mut machine, load) = served(50);
        flip(&mut machine, 0, 8, 0xff); // the id of record 0
        let violations = check(&mut machine, &load)
            .expect("readable")
            .expect_err("caught");
        assert!(
            violations
                .iter()
                .any(|v| v.kind == ProblemKind::ReplyContradictsJournal),
            "{violations:?}"
        );
    }

    #[test]
    fn two_different_replies_to_one_id_are_caught() {
        let (mut machine, mut load) = served(20);
        send_reply(&mut machine, [5, 99, 1]);
        load.drain(machine.bus());
        let violations = check(&mut machine, &load)
            .expect("readable")
            .expect_err("caught");
        assert!(
            violations
                .iter()
                .any(|v| v.kind == ProblemKind::AnsweredTwice
                    && v.message.starts_with("id 5 answered")),
            "{violations:?}"
        );
    }
}
