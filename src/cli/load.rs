//! `lockstep load`: a real client fleet against a protected ledger VM,
//! the simulator's own clients (`sim::client::Client`) on real sockets and
//! the OS clock, recording every request and reply as JSON lines; and
//! `lockstep check`: the simulator's oracle on such a history and the
//! survivor's final checkpoint.

use anyhow::{bail, Context};
use cpu_model::{emulated_machine, EmuConfig, Quantum};
use machine::devices::MemStore;
use machine::guests::ledger_load::{LedgerConfig, Request};
use machine::guests::Guest;
use machine::Checkpoint;
use machine::{Shape, CHECKPOINT_BYTES_MAX};
use protocol::Time;
use sim::client::{Client, REQUESTS_TOTAL_MAX};
use sim::history::{hex, judge, History, Line};
use std::cell::RefCell;
use std::io::{BufWriter, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Clients at most (the scenario files' bound).
const CLIENTS_MAX: u16 = faults::scenario::CLIENTS_MAX;
/// Unanswered requests (and bad replies) named per client at the end.
const UNANSWERED_SHOWN: usize = 5;
/// How often the history is flushed to its file.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The service address (the virtual IP and port). Repeated, every
    /// request goes to each: a pair without a moving address serves on
    /// each host's own, and only the primary answers (a backup drops
    /// requests), so the clients follow a failover either way.
    #[arg(long, required = true)]
    target: Vec<SocketAddr>,
    /// Clients, each with its own socket and ids.
    #[arg(long, default_value_t = 4)]
    clients: u16,
    /// Requests a client keeps outstanding.
    #[arg(long, default_value_t = 4)]
    window: u64,
    /// Requests each client sends at most (below 4,096).
    #[arg(long, default_value_t = 4000)]
    requests: u64,
    /// Pause between a client's new requests, ms (0: as fast as the window allows).
    #[arg(long, default_value_t = 10)]
    think_ms: u64,
    /// A request unanswered this long is sent again, ms.
    #[arg(long, default_value_t = 100)]
    retry_ms: u64,
    /// Seconds of load; then no new requests (SIGTERM or SIGINT does the same).
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// After the load, seconds to wait for outstanding replies.
    #[arg(long, default_value_t = 10.0)]
    drain_s: f64,
    /// Accounts of the ledger.
    #[arg(long, default_value_t = 16)]
    accounts: u64,
    /// Seed of the requests.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the history goes (JSON lines).
    #[arg(long)]
    history: PathBuf,
}

type Writer = Rc<RefCell<BufWriter<std::fs::File>>>;

fn record(out: &Writer, line: &Line) {
    let mut w = out.borrow_mut();
    let json = serde_json::to_string(line).expect("a history line serialises");
    // A failing history file is reported at the end, when it is flushed.
    let _ = writeln!(w, "{json}");
}

pub fn load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        bail!("--clients must be 1..={CLIENTS_MAX}");
    }
    let total = args.requests.saturating_mul(u64::from(args.clients));
    if args.requests == 0 || total > REQUESTS_TOTAL_MAX {
        bail!("--requests must be at least 1 and --clients × --requests at most {REQUESTS_TOTAL_MAX} (one reply-table slot each)");
    }
    if args.window == 0 || args.accounts < 2 {
        bail!("--window must be positive and --accounts at least 2");
    }
    let file = std::fs::File::create(&args.history)
        .with_context(|| format!("{}: cannot create", args.history.display()))?;
    let out: Writer = Rc::new(RefCell::new(BufWriter::new(file)));
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    record(&out, &Line::Start { unix_ns });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let clients = runtime.block_on(run_fleet(&args, Rc::clone(&out)))?;
    out.borrow_mut().flush().context("writing the history")?;
    let sent: u64 = clients.iter().map(|c| c.sent).sum();
    let issued: u64 = clients
        .iter()
        .map(|c| c.replies.len() as u64 + c.outstanding() as u64)
        .sum();
    let answered: u64 = clients.iter().map(|c| c.replies.len() as u64).sum();
    let bad: usize = clients.iter().map(|c| c.bad.len()).sum();
    println!(
        "load: {issued} requests, {answered} answered, {} unanswered, {sent} packets sent, {bad} bad replies; history {}",
        issued - answered,
        args.history.display()
    );
    // What a failing run's reader needs first: which requests, since when.
    for (k, client) in clients.iter().enumerate() {
        for (id, at) in client.outstanding_ids().take(UNANSWERED_SHOWN) {
            println!(
                "load: client {k}: request {id} unanswered, last sent {:.1} ms after the start",
                at.0 as f64 / 1e6
            );
        }
        for problem in client.bad.iter().take(UNANSWERED_SHOWN) {
            println!("load: client {k}: bad reply: {problem}");
        }
    }
    Ok(if answered == issued && bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_fleet(args: &LoadArgs, out: Writer) -> anyhow::Result<Vec<Client>> {
    let started = Instant::now();
    let stop_at = started + Duration::from_secs_f64(args.duration_s);
    let give_up = stop_at + Duration::from_secs_f64(args.drain_s);
    let stop = Rc::new(std::cell::Cell::new(false));
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for k in 0..args.clients {
        let client = Client::new(
            k,
            args.clients,
            args.requests,
            args.window,
            args.retry_ms * 1_000_000,
            args.think_ms * 1_000_000,
            args.accounts,
            args.seed,
        );
        // Not connected: a connected socket takes replies from one
        // address only, and turns an ICMP error into the next send's
        // failure.
        let socket = UdpSocket::bind("0.0.0.0:0").await?;
        tasks.push(local.spawn_local(one_client(
            k,
            client,
            Link {
                socket,
                targets: args.target.clone(),
            },
            started,
            (stop_at, give_up),
            Rc::clone(&stop),
            Rc::clone(&out),
        )));
    }
    let flusher = {
        let out = Rc::clone(&out);
        local.spawn_local(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let _ = out.borrow_mut().flush();
            }
        })
    };
    let signals = local.spawn_local({
        let stop = Rc::clone(&stop);
        async move {
            runtime::daemon::stop_signal().await;
            stop.set(true);
        }
    });
    let clients = local
        .run_until(async move {
            let mut clients = Vec::new();
            for task in tasks {
                clients.push(task.await?);
            }
            anyhow::Ok(clients)
        })
        .await?;
    flusher.abort();
    signals.abort();
    Ok(clients)
}

fn now_since(started: Instant) -> Time {
    Time(u64::try_from(started.elapsed().as_nanos()).expect("short loads"))
}

/// A client's socket and the addresses it sends each request to.
struct Link {
    socket: UdpSocket,
    targets: Vec<SocketAddr>,
}

impl Link {
    /// Sends `packet` to every target. A send refused (no route while the
    /// address moves, nobody on a port) is retried with the request.
    async fn send(&self, packet: &[u8]) {
        for target in &self.targets {
            let _ = self.socket.send_to(packet, target).await;
        }
    }

    /// The next datagram from one of the targets (others are not replies).
    async fn recv(&self, buf: &mut [u8]) -> usize {
        loop {
            if let Ok((n, from)) = self.socket.recv_from(buf).await {
                if self.targets.contains(&from) {
                    return n;
                }
            }
        }
    }
}

async fn one_client(
    index: u16,
    mut client: Client,
    link: Link,
    started: Instant,
    (stop_at, give_up): (Instant, Instant),
    stop: Rc<std::cell::Cell<bool>>,
    out: Writer,
) -> Client {
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 2048];
    let mut stopped = false;
    loop {
        let wall = Instant::now();
        if !stopped && (wall >= stop_at || stop.get()) {
            stopped = true;
            client.stop_new();
        }
        if (stopped && client.outstanding() == 0) || wall >= give_up {
            return client;
        }
        let now = now_since(started);
        for packet in client.sends(now) {
            if let Ok(request) = Request::decode(&packet) {
                let retry = !seen.insert(request.id);
                record(
                    &out,
                    &Line::Send {
                        t_ns: now.0,
                        client: index,
                        id: request.id,
                        from: request.from,
                        to: request.to,
                        amount: request.amount,
                        retry,
                    },
                );
            }
            link.send(&packet).await;
        }
        let wake = client
            .next_retry()
            .map_or(Duration::from_millis(20), |t| {
                Duration::from_nanos(t.0.saturating_sub(now.0))
            })
            .min(Duration::from_millis(20));
        tokio::select! {
            n = link.recv(&mut buf) => {
                let now = now_since(started);
                record(&out, &Line::Reply { t_ns: now.0, client: index, packet: hex(&buf[..n]) });
                client.receive(now, &buf[..n]);
            }
            () = tokio::time::sleep(wake) => {}
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The history `lockstep load` wrote.
    #[arg(long)]
    history: PathBuf,
    /// The survivor's final checkpoint (a node's `final.ckpt`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Accounts of the ledger.
    #[arg(long, default_value_t = 16)]
    accounts: u64,
    /// The guest's vCPUs.
    #[arg(long, default_value_t = 2)]
    vcpus: u16,
    /// The guest's memory, MiB.
    #[arg(long, default_value_t = 4)]
    memory_mib: u64,
    /// The guest disk's blocks.
    #[arg(long, default_value_t = 8192)]
    disk_blocks: u64,
}

/// Judges a history against a final checkpoint of the cluster's default
/// guest shape; prints what it finds, says whether it passed.
pub fn check_files(
    history: &std::path::Path,
    checkpoint: &std::path::Path,
) -> anyhow::Result<bool> {
    let guest = super::daemon::GuestSection::default();
    let args = CheckArgs {
        history: history.to_path_buf(),
        checkpoint: checkpoint.to_path_buf(),
        accounts: guest.accounts,
        vcpus: guest.vcpus,
        memory_mib: guest.memory_mib,
        disk_blocks: guest.disk_blocks,
    };
    Ok(check(args)? == ExitCode::SUCCESS)
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let file = std::fs::File::open(&args.history)
        .with_context(|| format!("{}: cannot open", args.history.display()))?;
    let history = History::read(std::io::BufReader::new(file))?;
    let bytes = std::fs::read(&args.checkpoint)
        .with_context(|| format!("{}: cannot read", args.checkpoint.display()))?;
    let checkpoint = Checkpoint::decode(&bytes, CHECKPOINT_BYTES_MAX)
        .with_context(|| format!("{}: not a checkpoint", args.checkpoint.display()))?;
    let ledger = LedgerConfig {
        accounts: args.accounts,
        ..LedgerConfig::with_requests(0)
    };
    let shape = Shape::new(args.vcpus, args.memory_mib << 20)?;
    let image = Guest::Ledger.image(ledger.params())?;
    let config = EmuConfig {
        seed: 0,
        quantum: Quantum::default(),
    };
    let mut machine = emulated_machine(
        shape,
        &image,
        config,
        Box::new(MemStore::new(args.disk_blocks)),
    )?;
    machine
        .restore(&checkpoint)
        .with_context(|| format!("{}: does not restore", args.checkpoint.display()))?;
    let (violations, report) = judge(&history, &mut machine, &ledger)?;
    let latencies = {
        let mut l = history.latencies_ns();
        l.sort_unstable();
        l
    };
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |ns| *ns as f64 / 1e6)
    };
    println!(
        "check: {} requests, {} answered, {} packets sent; reply latency p50 {:.2} ms, p99 {:.2} ms",
        history.requests.len(),
        history.replies.len(),
        history.sends,
        pct(0.5),
        pct(0.99)
    );
    if let Some(report) = report {
        println!(
            "survivor: {} journal records ({} applied, {} refused), money {}",
            report.journal_records, report.applied, report.refused, report.total_money
        );
    }
    for v in &violations {
        println!("violation: {v}");
    }
    if violations.is_empty() {
        println!("check passed: nothing acknowledged was lost, duplicated or contradicted");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("check FAILED: {} violations", violations.len());
        Ok(ExitCode::from(1))
    }
}
