//! `lockstep bench cluster`: the real-host cluster of `cluster local`
//! measured side by side in one run: the same load against an unprotected
//! primary (no backup), a pair at `ha` and a pair at `ft` (throughput and
//! reply latency, as ratios against unprotected); failover times of a
//! series of SIGKILLs at `ft`; and the re-protection of a guest of
//! `--memory-mib`, with the primary's longest step meanwhile.

use super::cluster::{
    is_root, kill_and_recover, percentile, protected, sh, spawn_signal_watch, wait_for,
    write_configs, Layout, Netns, Nodes, Shape, SKIPPED,
};
use anyhow::{bail, Context};
use sim::history::History;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SUBNET: &str = "10.77.0";

#[derive(Debug, clap::Args)]
pub struct ClusterBenchArgs {
    /// "emu" or "kvm".
    #[arg(long, default_value = "emu")]
    engine: String,
    /// Seconds of load per configuration (all rounds together).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Rounds of the throughput figures: each runs every configuration
    /// in turn for its share of `--seconds`, the order rotating.
    #[arg(long, default_value_t = 5)]
    rounds: u8,
    /// Clients of the load (each keeps `--window` requests outstanding):
    /// enough requests in flight that the cluster, not the clients' wait
    /// for replies, sets the throughput.
    #[arg(long, default_value_t = 16)]
    clients: u16,
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// SIGKILLs of the primary for the failover figures.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Guest memory for the re-protection figure, MiB.
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    /// MiB of it that hold data (seeded pseudo-random bytes), as a guest
    /// in use has: the copy carries them. Default: all but the first
    /// 16 MiB (which the ledger's own state lives in).
    #[arg(long)]
    data_mib: Option<u64>,
    /// A peer silent this long is suspected, ms.
    #[arg(long, default_value_t = 150)]
    suspect_after_ms: u64,
    /// Measure only these: throughput, failover, reprotect (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,failover,reprotect"
    )]
    only: Vec<String>,
    /// Where each configuration's files go.
    #[arg(long, default_value = "lockstep-bench-cluster")]
    out: PathBuf,
}

/// One configuration's daemons.
struct Running {
    layout: Layout,
    _witness: Nodes,
    nodes: Nodes,
}

fn node_args(layout: &Layout, host: &str) -> Vec<String> {
    let config = layout.out.join(format!("node-{host}.toml"));
    vec![
        "node".into(),
        "--config".into(),
        config.display().to_string(),
    ]
}

fn spawn_node(layout: &Layout, netns: &Netns, host: &str) -> anyhow::Result<Child> {
    let args = node_args(layout, host);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    layout.spawn(netns, host, &args, &format!("node-{host}.log"))
}

/// Starts the witness, `a` and (with a backup) `b` for `level`, and waits
/// until they are protected (or `a` runs alone).
fn start(
    args: &ClusterBenchArgs,
    netns: &Netns,
    stop: &AtomicBool,
    name: &str,
    level: &str,
    backup: bool,
    (memory_mib, data_mib): (u64, u64),
) -> anyhow::Result<Running> {
    let dir = args.out.join(name);
    std::fs::create_dir_all(&dir)?;
    let layout = Layout {
        out: std::fs::canonicalize(&dir)?,
        exe: std::env::current_exe()?,
    };
    let shape = Shape {
        engine: &args.engine,
        level,
        suspect_after_ms: args.suspect_after_ms,
        memory_mib,
        data_mib,
    };
    write_configs(&shape, &layout)?;
    let config = layout.out.join("witness.toml").display().to_string();
    let witness = layout.spawn(netns, "w", &["witness", "--config", &config], "witness.log")?;
    let a = spawn_node(&layout, netns, "a")?;
    let b = if backup {
        Some(spawn_node(&layout, netns, "b")?)
    } else {
        None
    };
    let running = Running {
        _witness: Nodes([Some(witness), None]),
        nodes: Nodes([Some(a), b]),
        layout,
    };
    if backup {
        wait_for(stop, "protection", || protected(&running.layout, "a", "b"))?;
    } else {
        wait_for(stop, "a primary alone", || {
            running.layout.status("a").is_some_and(|s| {
                s.role == "primary" && s.running && s.protection.as_deref() == Some("unprotected")
            })
        })?;
    }
    Ok(running)
}

/// Runs the load for `seconds` against the service address; its history.
fn load(
    layout: &Layout,
    netns: &Netns,
    clients: u16,
    window: u64,
    think_ms: u64,
    retry_ms: u64,
    seconds: f64,
) -> anyhow::Result<(Child, PathBuf)> {
    let history = layout.out.join("history.jsonl");
    let args = [
        "load".to_string(),
        "--target".into(),
        format!("{SUBNET}.100:8000"),
        "--clients".into(),
        clients.to_string(),
        "--window".into(),
        window.to_string(),
        "--think-ms".into(),
        think_ms.to_string(),
        "--retry-ms".into(),
        retry_ms.to_string(),
        "--requests".into(),
        "4000".into(),
        "--duration-s".into(),
        seconds.to_string(),
        "--drain-s".into(),
        "5".into(),
        "--history".into(),
        history.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Ok((layout.spawn(netns, "c", &args, "load.log")?, history))
}

fn read_history(path: &Path) -> anyhow::Result<History> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    Ok(History::read(std::io::BufReader::new(file))?)
}

/// Throughput (replies per second) and latency p50/p99 (ms) of one
/// configuration.
struct Figures {
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn throughput(
    args: &ClusterBenchArgs,
    netns: &Netns,
    running: &Running,
    seconds: f64,
) -> anyhow::Result<Figures> {
    let (mut child, path) = load(
        &running.layout,
        netns,
        args.clients,
        args.window,
        0,
        THROUGHPUT_RETRY_MS,
        seconds,
    )?;
    child.wait()?;
    let history = read_history(&path)?;
    let in_time: Vec<u64> = history
        .reply_times_ns
        .iter()
        .copied()
        .filter(|t| *t as f64 <= seconds * 1e9)
        .collect();
    // Over the time the load ran: clients that sent all their requests
    // before the end (each sends fewer than 4,096) stopped early, and
    // counting the idle rest would measure the request limit, not the
    // cluster.
    let last_s = in_time.last().map_or(seconds, |t| *t as f64 / 1e9);
    let mut latencies: Vec<f64> = history
        .latencies_ns()
        .iter()
        .map(|ns| *ns as f64 / 1e6)
        .collect();
    latencies.sort_by(f64::total_cmp);
    Ok(Figures {
        per_s: in_time.len() as f64 / last_s.max(1e-3),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
    })
}

/// How long the throughput load's clients wait before sending a request
/// again (the load's default).
const THROUGHPUT_RETRY_MS: u64 = 100;
/// How long the failover load's clients wait before sending a request
/// again: the first reply after a failover comes at the first retry after
/// the takeover, so a client that retries every 100 ms would measure its
/// own timer (two of them: its first retry falls before the takeover),
/// not the cluster.
const FAILOVER_RETRY_MS: u64 = 10;

/// Failover times (SIGKILL to the new primary's first reply), ms, over `kills` kills.
fn failovers(
    args: &ClusterBenchArgs,
    netns: &Netns,
    stop: &AtomicBool,
    running: &mut Running,
) -> anyhow::Result<Vec<f64>> {
    let seconds = f64::from(args.kills) * 2.5 + 10.0;
    let (mut child, path) = load(
        &running.layout,
        netns,
        args.clients,
        1,
        20,
        FAILOVER_RETRY_MS,
        seconds,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let mut primary = 0;
    let mut kills = Vec::new();
    // When the survivor began to run the guest as primary: replies before
    // it were still in flight from the killed one.
    let mut took_over = Vec::new();
    for _ in 0..args.kills {
        std::thread::sleep(Duration::from_millis(700));
        let layout = &running.layout;
        let figures = kill_and_recover(layout, netns, stop, &mut running.nodes, primary, |host| {
            spawn_node(layout, netns, host)
        })?;
        kills.push(figures.at_unix_ns);
        took_over.push(figures.took_over_unix_ns);
        primary = 1 - primary;
    }
    sh(&["kill", "-TERM", &child.id().to_string()])?;
    child.wait()?;
    let history = read_history(&path)?;
    let start = history
        .start_unix_ns
        .context("the history has no start line")?;
    let mut ms: Vec<f64> = kills
        .iter()
        .zip(&took_over)
        .filter_map(|(at, new)| {
            let at = at.checked_sub(start)?;
            let new = new.checked_sub(start)?;
            Some((history.first_reply_after(new)? - at) as f64 / 1e6)
        })
        .collect();
    if ms.len() != kills.len() {
        bail!("{} kills were followed by no reply", kills.len() - ms.len());
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

/// Kills the backup of a protected pair and times its re-protection; the
/// primary's longest step meanwhile (µs).
fn reprotection(
    netns: &Netns,
    stop: &AtomicBool,
    running: &mut Running,
) -> anyhow::Result<(Duration, u64)> {
    let mut backup = running.nodes.0[1].take().context("b runs")?;
    backup.kill()?;
    backup.wait()?;
    wait_for(stop, "a alone", || {
        running
            .layout
            .status("a")
            .is_some_and(|s| s.protection.as_deref() == Some("unprotected"))
    })?;
    running.nodes.0[1] = Some(spawn_node(&running.layout, netns, "b")?);
    let started = Instant::now();
    wait_for(stop, "re-protection", || {
        protected(&running.layout, "a", "b")
    })?;
    let took = started.elapsed();
    // The primary's longest step from the copy's first round to the
    // certification: the guest's longest pause while it was copied.
    let longest = running
        .layout
        .status("a")
        .and_then(|s| s.resync_longest_step_us)
        .context("a re-protected: it reports the longest step of it")?;
    Ok((took, longest))
}

pub fn run(args: ClusterBenchArgs) -> anyhow::Result<ExitCode> {
    if !is_root() {
        println!("bench cluster: SKIPPED: needs root (network namespaces)");
        return Ok(ExitCode::from(SKIPPED));
    }
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(Arc::clone(&stop))?;
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let netns = Netns::build(
        format!("lb{}", std::process::id()),
        &[("a", 1), ("b", 2), ("w", 3), ("c", 4)],
    )?;
    let wants = |what: &str| args.only.iter().any(|o| o == what);
    if wants("throughput") {
        throughputs(&args, &netns, &stop)?;
    }
    if wants("failover") {
        let mut running = start(&args, &netns, &stop, "failover", "ft", true, (4, 0))?;
        let ms = failovers(&args, &netns, &stop, &mut running)?;
        println!(
            "    failover: {} SIGKILLs at ft, SIGKILL to the new primary's first reply p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (suspect_after {} ms; clients retry every {FAILOVER_RETRY_MS} ms)",
            ms.len(),
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.last().copied().unwrap_or(f64::NAN),
            args.suspect_after_ms
        );
    }
    if wants("reprotect") {
        let data_mib = args
            .data_mib
            .unwrap_or(args.memory_mib.saturating_sub(super::daemon::DATA_FROM_MIB));
        let mut running = start(
            &args,
            &netns,
            &stop,
            "reprotect",
            "ft",
            true,
            (args.memory_mib, data_mib),
        )?;
        let (took, longest_us) = reprotection(&netns, &stop, &mut running)?;
        println!(
            "   reprotect: a {} MiB guest ({data_mib} MiB of it data) in {:.0} ms; the primary's longest step meanwhile {:.1} ms (epoch 20 ms)",
            args.memory_mib,
            took.as_secs_f64() * 1000.0,
            longest_us as f64 / 1000.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The configurations of the throughput figures: name, level, a backup.
const CONFIGS: [(&str, &str, bool); 3] = [
    ("unprotected", "ft", false),
    ("ha", "ha", true),
    ("ft", "ft", true),
];

/// Throughput and latency of unprotected, ha and ft, side by side: in
/// `--rounds` rounds, each running every configuration for its share of
/// `--seconds`, the order rotating from round to round. A machine whose
/// load changes during the run (a build, a neighbour) then weighs on
/// every configuration alike, and a round's ratios compare runs made
/// seconds apart; the ratios printed are the medians of the rounds'.
fn throughputs(args: &ClusterBenchArgs, netns: &Netns, stop: &AtomicBool) -> anyhow::Result<()> {
    let rounds = usize::from(args.rounds.max(1));
    let share = args.seconds / rounds as f64;
    // figures[round][config]
    let mut figures: Vec<Vec<Option<Figures>>> = Vec::new();
    for round in 0..rounds {
        let mut row: Vec<Option<Figures>> = (0..CONFIGS.len()).map(|_| None).collect();
        for k in 0..CONFIGS.len() {
            let c = (round + k) % CONFIGS.len();
            let (name, level, backup) = CONFIGS[c];
            let dir = format!("{name}-{}", round + 1);
            let running = start(args, netns, stop, &dir, level, backup, (4, 0))?;
            let f = throughput(args, netns, &running, share)?;
            println!(
                "round {}/{rounds} {name:>12}: {:.0} replies/s, latency p50 {:.2} ms, p99 {:.2} ms",
                round + 1,
                f.per_s,
                f.p50_ms,
                f.p99_ms
            );
            row[c] = Some(f);
            drop(running);
        }
        figures.push(row);
    }
    fn of(round: &[Option<Figures>], c: usize) -> &Figures {
        round[c]
            .as_ref()
            .expect("every round runs every configuration")
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(&v, 0.5)
    };
    for (c, (name, _, _)) in CONFIGS.iter().enumerate() {
        println!(
            "{name:>12}: {:.0} replies/s, latency p50 {:.2} ms, p99 {:.2} ms (medians of {rounds} rounds)",
            median(figures.iter().map(|r| of(r, c).per_s).collect()),
            median(figures.iter().map(|r| of(r, c).p50_ms).collect()),
            median(figures.iter().map(|r| of(r, c).p99_ms).collect()),
        );
    }
    for (c, (name, _, _)) in CONFIGS.iter().enumerate().skip(1) {
        let ratios: Vec<f64> = figures
            .iter()
            .map(|r| of(r, c).per_s / of(r, 0).per_s)
            .collect();
        let spread = {
            let mut r = ratios.clone();
            r.sort_by(f64::total_cmp);
            format!("{:.2}..{:.2}", r[0], r[r.len() - 1])
        };
        println!(
            "{name:>12} / unprotected: throughput {:.2} (rounds {spread}), added latency p50 {:+.2} ms, p99 {:+.2} ms",
            median(ratios),
            median(figures.iter().map(|r| of(r, c).p50_ms - of(r, 0).p50_ms).collect()),
            median(figures.iter().map(|r| of(r, c).p99_ms - of(r, 0).p99_ms).collect()),
        );
    }
    Ok(())
}
