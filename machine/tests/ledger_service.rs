// The Linux guest's ledger service (guest-linux/ledger/ledger.c) on the
// host, where it runs as it will in the guest: built with gcc, served on a
// loopback UDP port with its journal in a file, driven with transfers,
// retries and malformed datagrams, killed with SIGKILL mid-load and
// restarted on its journal. The replies and the journal are judged by the
// same format and oracle code as the assembled ledger guest's
// (machine::guests::ledger_load). Without gcc the tests say SKIPPED and
// pass.
//
// The socket's read timeout bounds how long a test waits for a live
// service's reply; nothing is timed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, ErrorKind};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use machine::guests::ledger::{STATUS_APPLIED, STATUS_INVALID, STATUS_REJECTED};
use machine::guests::ledger_load::{
    check_journal, journal_from_blocks, JournalCheck, LedgerConfig, LedgerProblem, Reply, Request,
};
use machine::rng::SplitMix64;

const SOURCE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest-linux/ledger/ledger.c"
);
/// How long a test waits for a reply from a live service before it fails.
const REPLY_WAIT: Duration = Duration::from_secs(10);

/// A directory of its own for a test, removed when it ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("lockstep-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the service into `dir`, or None after saying loudly that gcc
/// is missing. A source that does not compile fails the test.
fn build(dir: &Path) -> Option<PathBuf> {
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("==================================================================");
        eprintln!("SKIPPED: no gcc to build {SOURCE}.");
        eprintln!("==================================================================");
        return None;
    }
    let binary = dir.join("lockstep-ledger");
    let output = Command::new("gcc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&binary)
        .arg(SOURCE)
        .output()
        .expect("gcc runs");
    assert!(
        output.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(binary)
}

/// A running service.
struct Service {
    child: Child,
    port: u16,
    /// The journal records it replayed when it started.
    replayed: u64,
}

impl Service {
    fn start(binary: &Path, journal: &Path, config: &LedgerConfig) -> Service {
        let mut child = Command::new(binary)
            .arg("-j")
            .arg(journal)
            .args(["-p", "0", "-l", "127.0.0.1"])
            .args(["-a", &config.accounts.to_string()])
            .args(["-b", &config.initial_balance.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the service starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut first)
            .expect("its first line");
        // "lockstep-ledger: serving N accounts on ADDRESS:PORT, R journal records"
        let port = first
            .split(':')
            .nth(2)
            .and_then(|rest| rest.split(',').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        let replayed = first
            .split(", ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no record count in {first:?}"));
        Service {
            child,
            port,
            replayed,
        }
    }

    /// SIGKILL, and the process reaped.
    fn kill(mut self) {
        self.child.kill().expect("kills");
        self.child.wait().expect("reaps");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client: every reply it got, and what was wrong with them.
struct Client {
    socket: UdpSocket,
    replies: BTreeMap<u64, Reply>,
    problems: Vec<LedgerProblem>,
}

impl Client {
    fn new() -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("binds");
        socket.set_read_timeout(Some(REPLY_WAIT)).expect("sets");
        Client {
            socket,
            replies: BTreeMap::new(),
            problems: Vec::new(),
        }
    }

    fn send(&self, service: &Service, bytes: &[u8]) {
        self.socket
            .send_to(bytes, ("127.0.0.1", service.port))
            .expect("sends");
    }

    /// Keeps `reply`; a second, different reply to its id is a problem.
    fn keep(&mut self, reply: Reply) {
        match self.replies.get(&reply.id) {
            Some(first) if *first != reply => {
                self.problems
                    .push(LedgerProblem::answered_twice(first, &reply));
            }
            Some(_) => {}
            None => {
                self.replies.insert(reply.id, reply);
            }
        }
    }

    /// The next reply, waiting for it.
    fn receive(&mut self) -> Reply {
        let mut buf = [0u8; 64];
        // A signal (the killed service's SIGCHLD, another test's) may cut
        // the wait short; that is no answer either way.
        let len = loop {
            match self.socket.recv_from(&mut buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                received => break received.expect("a reply in time").0,
            }
        };
        let reply = Reply::decode(&buf[..len]).expect("a well-formed reply");
        self.keep(reply);
        reply
    }

    /// Every reply already delivered, without waiting.
    fn drain(&mut self) -> u64 {
        self.socket.set_nonblocking(true).expect("sets");
        let mut buf = [0u8; 64];
        let mut drained = 0;
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((len, _)) => {
                    self.keep(Reply::decode(&buf[..len]).expect("a well-formed reply"));
                    drained += 1;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => panic!("receiving: {error}"),
            }
        }
        self.socket.set_nonblocking(false).expect("sets");
        drained
    }

    /// Sends `request` and returns its reply, which must be the next
    /// datagram the service sends.
    fn transfer(&mut self, service: &Service, request: &Request) -> Reply {
        self.send(service, &request.encode());
        let reply = self.receive();
        assert_eq!(reply.id, request.id, "the reply to {request:?}");
        reply
    }
}

fn config(requests: u64) -> LedgerConfig {
    LedgerConfig {
        accounts: 16,
        initial_balance: 1000,
        ..LedgerConfig::with_requests(requests)
    }
}

/// Request `id`: accounts up to two beyond the last (invalid), amounts
/// up to 700 (some more than a balance holds).
fn request(rng: &mut SplitMix64, config: &LedgerConfig, id: u64) -> Request {
    Request {
        id,
        from: rng.range(0, config.accounts + 1) as u32,
        to: rng.range(0, config.accounts + 1) as u32,
        amount: rng.range(0, 700),
    }
}

/// The oracle over the journal file and the client's replies.
fn judge(journal: &Path, config: &LedgerConfig, client: &Client) -> JournalCheck {
    let blocks = std::fs::read(journal).expect("the journal");
    let records = journal_from_blocks(&blocks);
    let check = check_journal(
        config,
        &records,
        &client.replies,
        &client.problems,
        Some(config.requests),
    );
    assert!(check.violations.is_empty(), "{:#?}", check.violations);
    let total: u64 = check.balances.iter().sum();
    assert_eq!(total, config.accounts * config.initial_balance);
    assert_eq!(check.applied + check.refused, config.requests);
    check
}

/// Datagrams the service must drop without an answer.
fn malformed(config: &LedgerConfig) -> Vec<Vec<u8>> {
    let valid = Request {
        id: 1,
        from: 0,
        to: 1,
        amount: 1,
    };
    let with = |f: &dyn Fn(&mut Request)| {
        let mut r = valid;
        f(&mut r);
        r.encode()
    };
    let bytes = valid.encode();
    vec![
        vec![],
        bytes[..bytes.len() - 1].to_vec(),
        [bytes.clone(), vec![0]].concat(),
        with(&|r| r.id = 0),
        with(&|r| r.id = 1 << 16),
        with(&|r| r.from = 1 << 16),
        with(&|r| r.to = u32::MAX - config.accounts as u32),
    ]
}

#[test]
fn transfers_retries_and_malformed_datagrams_are_answered_as_the_ledger_guest_does() {
    let scratch = Scratch::new("ledger-service");
    let Some(binary) = build(&scratch.0) else {
        return;
    };
    let config = config(300);
    let journal = scratch.0.join("journal");
    let service = Service::start(&binary, &journal, &config);
    assert_eq!(service.replayed, 0);
    let mut client = Client::new();
    let mut rng = SplitMix64::new(7);
    let junk = malformed(&config);
    for id in 1..=config.requests {
        if id % 13 == 0 {
            // Dropped: the next datagram back is the next request's reply.
            client.send(&service, &junk[(id / 13) as usize % junk.len()]);
        }
        let reply = client.transfer(&service, &request(&mut rng, &config, id));
        assert_eq!(reply.seq, id, "each new id is the next record");
        if id % 7 == 0 {
            let earlier = rng.range(1, id);
            let again = request(&mut rng, &config, earlier);
            let first = client.replies[&earlier];
            assert_eq!(
                client.transfer(&service, &again),
                first,
                "a retry of {earlier}"
            );
        }
    }
    let check = judge(&journal, &config, &client);
    let statuses: Vec<u64> = client.replies.values().map(|r| r.status).collect();
    for status in [STATUS_APPLIED, STATUS_REJECTED, STATUS_INVALID] {
        assert!(
            statuses.contains(&u64::from(status)),
            "status {status} seen"
        );
    }
    assert!(check.applied > 0 && check.refused > 0);
}

#[test]
fn a_service_killed_mid_load_restarts_on_its_journal_losing_and_repeating_nothing() {
    const ROUNDS: u64 = 6;
    const WINDOW: u64 = 40;
    let scratch = Scratch::new("ledger-kill");
    let Some(binary) = build(&scratch.0) else {
        return;
    };
    let config = config(ROUNDS * WINDOW);
    let journal = scratch.0.join("journal");
    let mut client = Client::new();
    let mut rng = SplitMix64::new(11);
    let requests: Vec<Request> = (1..=config.requests)
        .map(|id| request(&mut rng, &config, id))
        .collect();
    let mut service = Service::start(&binary, &journal, &config);
    let mut unanswered_at_kills = 0;
    for round in 0..ROUNDS {
        let window = &requests[(round * WINDOW) as usize..((round + 1) * WINDOW) as usize];
        // A window in flight, a few answers awaited, then SIGKILL while
        // the rest are queued or being journaled.
        for request in window {
            client.send(&service, &request.encode());
        }
        for _ in 0..round {
            client.receive();
        }
        service.kill();
        let acknowledged = client.drain() + round;
        unanswered_at_kills += WINDOW - acknowledged.min(WINDOW);
        let before: BTreeMap<u64, Reply> = client.replies.clone();
        service = Service::start(&binary, &journal, &config);
        assert!(
            service.replayed >= before.len() as u64,
            "every acknowledged transfer is in the journal it replays"
        );
        // Every request of the window again: an acknowledged one gets its
        // reply again, the others are decided now, each once.
        for request in window {
            let reply = client.transfer(&service, request);
            if let Some(first) = before.get(&request.id) {
                assert_eq!(reply, *first, "the same reply after the restart");
            }
        }
    }
    eprintln!(
        "{unanswered_at_kills} of {} requests were unanswered when their service was killed",
        config.requests
    );
    judge(&journal, &config, &client);
    // And once more from the journal alone: every id answered as before.
    service.kill();
    let service = Service::start(&binary, &journal, &config);
    assert_eq!(service.replayed, config.requests);
    for request in requests.iter().step_by(17) {
        let first = client.replies[&request.id];
        assert_eq!(client.transfer(&service, request), first);
    }
}

#[test]
fn a_journal_the_ledger_could_not_have_written_stops_it_with_a_clear_error() {
    let scratch = Scratch::new("ledger-corrupt");
    let Some(binary) = build(&scratch.0) else {
        return;
    };
    let config = config(3);
    let journal = scratch.0.join("journal");
    {
        let service = Service::start(&binary, &journal, &config);
        let mut client = Client::new();
        let mut rng = SplitMix64::new(3);
        for id in 1..=config.requests {
            client.transfer(&service, &request(&mut rng, &config, id));
        }
    }
    let good = std::fs::read(&journal).expect("the journal");
    let record = |k: usize| k * 32;
    for (what, at, value) in [
        ("out of sequence", record(1), 7u8),
        ("impossible or repeated id", record(2) + 8, 1),
        ("decision", record(0) + 20, 9),
    ] {
        let mut bad = good.clone();
        bad[at] = value;
        std::fs::write(&journal, &bad).expect("writes");
        let mut child = Command::new(&binary)
            .arg("-j")
            .arg(&journal)
            .args(["-p", "0", "-l", "127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs");
        // A service that takes the journal says it serves, and then
        // would serve for good: that is the failure.
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut first)
            .expect("reads");
        if !first.is_empty() {
            let _ = child.kill();
        }
        let output = child.wait_with_output().expect("ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(first, "", "{what}: the service took the journal");
        assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains(what), "{what}: {stderr}");
    }
}
