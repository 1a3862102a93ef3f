//! The node driver end to end, in process: two VM hosts running the ledger
//! guest on the emulated engine, a witness, a client that retries, a
//! network with a fixed latency. The primary dies under load; the client
//! must see no reply contradicted and the survivor's ledger must hold every
//! transfer the client was told about.

use cpu_model::{emulated_machine, EmuConfig, EmuEngine, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger::STATUS_APPLIED;
use machine::guests::ledger_load::{
    check_ledger, LedgerConfig, LedgerProblem, ProblemKind, Reply, Request,
};
use machine::guests::Guest;
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Machine, Shape};
use protocol::{Codec, Config, Generation, Grant, Level, NodeId, RoleKind, Start, Time};
use runtime::{Transmit, VmHost, WitnessHost};
use std::collections::{BTreeMap, VecDeque};

const A: NodeId = NodeId(0);
const B: NodeId = NodeId(1);
const W: NodeId = NodeId(2);
const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const TICK_NS: u64 = 100 * US;
const LATENCY_NS: u64 = 200 * US;

fn ledger() -> LedgerConfig {
    LedgerConfig {
        accounts: 16,
        initial_balance: 1000,
        requests: 400,
        window: 8,
        repeat_percent: 0,
    }
}

fn machine(seed: u64) -> Machine<EmuEngine> {
    let image = Guest::Ledger.image(ledger().params()).expect("assembles");
    let shape = Shape::new(2, MEMORY_BYTES_MIN).expect("valid shape");
    let config = EmuConfig {
        seed,
        quantum: Quantum::default(),
    };
    emulated_machine(shape, &image, config, Box::new(MemStore::new(64))).expect("boots")
}

fn config(me: NodeId, level: Level) -> Config {
    let peer = if me == A { B } else { A };
    let mut config = Config::new(me, peer, W, level);
    config.epoch_duration_ns = 5 * MS;
    config.heartbeat_interval_ns = 10 * MS;
    config.suspect_after_ns = 60 * MS;
    config.retransmit_after_ns = 30 * MS;
    config
}

/// What travels: protocol frames between hosts, requests from the client
/// to the primary's guest, replies from a guest to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Payload {
    Frame(NodeId, Vec<u8>),
    Request(NodeId, Vec<u8>),
    Reply(Vec<u8>),
}

/// A client that keeps `window` requests outstanding against whichever
/// host is primary, retries on timeout, and records what it saw.
struct Client {
    next_id: u64,
    outstanding: BTreeMap<u64, (Request, Time)>,
    replies: BTreeMap<u64, Reply>,
    bad: Vec<LedgerProblem>,
}

impl Client {
    fn sends(&mut self, now: Time) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while self.outstanding.len() < ledger().window as usize && self.next_id <= ledger().requests
        {
            let id = self.next_id;
            let request = Request {
                id,
                from: (id % 16) as u32,
                to: ((id * 7 + 3) % 16) as u32,
                amount: 1 + id % 700,
            };
            self.outstanding.insert(id, (request, now));
            out.push(request.encode());
            self.next_id += 1;
        }
        for (request, sent) in self.outstanding.values_mut() {
            if now.0 >= sent.0 + 40 * MS {
                *sent = now;
                out.push(request.encode());
            }
        }
        out
    }

    fn receive(&mut self, packet: &[u8]) {
        let reply = match Reply::decode(packet) {
            Ok(reply) => reply,
            Err(problem) => {
                return self
                    .bad
                    .push(LedgerProblem::new(ProblemKind::ReplyUnreadable, problem))
            }
        };
        match self.replies.get(&reply.id) {
            Some(first) if *first != reply => {
                self.bad.push(LedgerProblem::answered_twice(first, &reply))
            }
            Some(_) => {}
            None => {
                self.replies.insert(reply.id, reply);
            }
        }
        self.outstanding.remove(&reply.id);
    }
}

struct Cluster {
    now: Time,
    hosts: [Option<VmHost<EmuEngine>>; 2],
    witness: WitnessHost,
    network: VecDeque<(Time, Payload)>,
    client: Client,
}

impl Cluster {
    fn new(level: Level) -> Cluster {
        let g1 = Generation(1);
        let a = VmHost::new(
            config(A, level),
            Codec::plain(),
            Start::Primary { generation: g1 },
            machine(1),
            Time(0),
        );
        let b = VmHost::new(
            config(B, level),
            Codec::plain(),
            Start::Backup { generation: g1 },
            machine(1),
            Time(0),
        );
        let grant = Grant {
            generation: g1,
            holder: A,
            backup: Some(B),
        };
        Cluster {
            now: Time(0),
            hosts: [Some(a.expect("host a")), Some(b.expect("host b"))],
            witness: WitnessHost::new(W, [A, B], grant, Codec::plain()),
            network: VecDeque::new(),
            client: Client {
                next_id: 1,
                outstanding: BTreeMap::new(),
                replies: BTreeMap::new(),
                bad: Vec::new(),
            },
        }
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|i| {
            self.hosts[*i]
                .as_ref()
                .is_some_and(|h| h.role() == RoleKind::Primary && h.is_running())
        })
    }

    fn step(&mut self) {
        self.now = self.now.add_ns(TICK_NS);
        let now = self.now;
        while self.network.front().is_some_and(|(at, _)| *at <= now) {
            let (_, payload) = self.network.pop_front().expect("checked");
            match payload {
                Payload::Reply(bytes) => self.client.receive(&bytes),
                Payload::Frame(W, bytes) => self.witness.handle_frame(now, &bytes),
                Payload::Frame(id, bytes) => {
                    if let Some(host) = self.hosts[usize::from(id.0)].as_mut() {
                        host.handle_frame(now, &bytes).expect("host runs");
                    }
                }
                Payload::Request(id, bytes) => {
                    if let Some(host) = self.hosts[usize::from(id.0)].as_mut() {
                        host.handle_client_packet(now, bytes).expect("host runs");
                    }
                }
            }
        }
        let later = now.add_ns(LATENCY_NS);
        // The switch sends client traffic to the host that runs the guest.
        for packet in self.client.sends(now) {
            if let Some(i) = self.primary() {
                self.network
                    .push_back((later, Payload::Request(NodeId(i as u8), packet)));
            }
        }
        for i in 0..2 {
            let Some(host) = self.hosts[i].as_mut() else {
                continue;
            };
            host.advance(now).expect("host runs");
            while let Some(t) = host.poll_transmit(now) {
                self.network.push_back(match t {
                    Transmit::Frame { to, frame } => (later, Payload::Frame(to, frame.seal())),
                    Transmit::Output(packet) => (later, Payload::Reply(packet)),
                });
            }
        }
        while let Some(Transmit::Frame { to, frame }) = self.witness.poll_transmit() {
            self.network
                .push_back((later, Payload::Frame(to, frame.seal())));
        }
    }

    /// Runs until the client holds `replies` replies: the crash then hits
    /// a service under load.
    fn run_until_answered(&mut self, replies: usize) {
        while self.client.replies.len() < replies {
            assert!(self.now.0 < 10_000 * MS, "the load stalled");
            self.step();
        }
    }

    fn run_ms(&mut self, ms: u64) {
        for _ in 0..(ms * MS / TICK_NS) {
            self.step();
        }
    }

    /// The ledger oracle on host `i`: money conserved, journal replayed,
    /// and every reply the client received matches the survivor's journal.
    fn check(&mut self, i: usize) -> Vec<LedgerProblem> {
        let host = self.hosts[i].as_mut().expect("survivor");
        let expected =
            (self.client.replies.len() as u64 == ledger().requests).then_some(ledger().requests);
        match check_ledger(
            host.machine(),
            &ledger(),
            &self.client.replies,
            &self.client.bad,
            expected,
        )
        .expect("readable")
        {
            Ok(_) => Vec::new(),
            Err(violations) => violations,
        }
    }
}

#[test]
fn no_fault_every_request_answered_and_ledger_consistent() {
    let mut c = Cluster::new(Level::Ft);
    c.run_ms(400);
    assert_eq!(
        c.client.replies.len() as u64,
        ledger().requests,
        "all answered"
    );
    assert!(c
        .client
        .replies
        .values()
        .any(|r| r.status == u64::from(STATUS_APPLIED)));
    assert_eq!(c.check(0), Vec::<LedgerProblem>::new());
    let a = c.hosts[0].as_ref().expect("a");
    assert!(a.stats().captures > 10, "epochs closed: {:?}", a.stats());
    assert!(c.hosts[1].as_ref().expect("b").stats().applied > 10);
}

#[test]
fn primary_crash_under_load_loses_no_acknowledged_transfer_at_ft() {
    let mut c = Cluster::new(Level::Ft);
    c.run_until_answered(100);
    let answered_before = c.client.replies.len();
    println!("answered before the crash: {answered_before}");
    assert!(answered_before > 20, "load was flowing: {answered_before}");
    assert!((answered_before as u64) < ledger().requests, "and still is");
    c.hosts[0] = None; // the primary dies
    c.run_ms(800);
    let b = c.hosts[1].as_ref().expect("b");
    assert_eq!(b.role(), RoleKind::Primary, "the backup took over");
    assert_eq!(b.node().generation(), Generation(2));
    assert_eq!(
        c.client.replies.len() as u64,
        ledger().requests,
        "service resumed; all answered"
    );
    assert_eq!(
        c.check(1),
        Vec::<LedgerProblem>::new(),
        "every reply the client saw is in the survivor"
    );
}

#[test]
fn at_ha_the_oracle_sees_lost_replies() {
    // ha releases output before the backup has it: a crash under load loses
    // replies the client already saw. The same oracle must say so.
    let mut c = Cluster::new(Level::Ha);
    c.run_until_answered(100);
    c.hosts[0] = None;
    c.run_ms(800);
    let violations = c.check(1);
    assert!(
        violations
            .iter()
            .any(|v| v.kind == ProblemKind::ReplyContradictsJournal),
        "expected lost replies, got {violations:?}"
    );
}

#[test]
fn a_burst_beyond_the_guest_nic_waits_for_it_instead_of_being_dropped() {
    let mut c = Cluster::new(Level::Ft);
    c.run_ms(20);
    // Three times what the guest's NIC holds, all at one instant: the
    // client has no more to send, so only the host's backlog can save the
    // packets past the NIC's room from a retry.
    let burst = 3 * machine::devices::RX_QUEUE_MAX as u64;
    c.client.next_id = ledger().requests + 1;
    let at = c.now.add_ns(LATENCY_NS);
    for id in 1..=burst {
        let request = Request {
            id,
            from: (id % 16) as u32,
            to: ((id * 5 + 1) % 16) as u32,
            amount: 1 + id % 300,
        };
        c.network
            .push_back((at, Payload::Request(A, request.encode())));
    }
    c.run_ms(300);
    let a = c.hosts[0].as_ref().expect("a");
    assert_eq!(a.stats().inputs_dropped, 0, "{:?}", a.stats());
    let answered = c.client.replies.keys().filter(|id| **id <= burst).count() as u64;
    assert_eq!(answered, burst, "every request of the burst answered once");
}

#[test]
fn on_a_real_host_an_idle_guest_lets_the_host_wait_until_an_input() {
    let mut host = VmHost::new(
        config(A, Level::Ft),
        Codec::plain(),
        Start::Primary {
            generation: Generation(1),
        },
        machine(1),
        Time(0),
    )
    .expect("host");
    host.set_pace(runtime::Pace::Slices { slice_ns: MS });
    let mut now = Time(0);
    let mut idle = None;
    for _ in 0..200 {
        now = now.add_ns(MS);
        host.advance(now).expect("runs");
        idle = host.guest_idle_until();
        if idle.is_some() {
            break;
        }
    }
    let until = idle.expect("a ledger with no requests goes to sleep");
    assert!(until > now, "nothing is due before a later time");
    let request = Request {
        id: 1,
        from: 1,
        to: 2,
        amount: 5,
    };
    host.handle_client_packet(now, request.encode())
        .expect("takes it");
    assert_eq!(
        host.guest_idle_until(),
        None,
        "a request is work for the guest"
    );
    host.advance(now.add_ns(MS)).expect("runs");
    assert_eq!(
        host.machine().bus().nic.rx_len(),
        0,
        "the guest ran and took the request"
    );
}
