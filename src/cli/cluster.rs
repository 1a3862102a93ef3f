//! `lockstep cluster local`: the real-host counterpart of a scenario
//! suite, on one machine. Network namespaces for the witness, host a, host
//! b and the clients, joined by a bridge in a namespace of its own; the
//! three daemons as separate processes; `lockstep load` against the
//! service address; the primary SIGKILLed again and again at seeded
//! moments, restarted each time, and the pair waited for until it is
//! protected again; then the history judged against the survivor by the
//! simulator's oracle. Namespaces are removed at the end, on an error and
//! on SIGINT/SIGTERM.

use anyhow::{bail, Context};
use machine::rng::SplitMix64;
use runtime::daemon::node::Status;
use sim::history::History;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The bridge's subnet; hosts are .1 (a), .2 (b), .3 (witness), .4
/// (clients), the service address .100.
const SUBNET: &str = "10.77.0";
const SERVICE_PORT: u16 = 8000;
const FRAME_PORT: u16 = 7000;
/// How long a failover or a re-protection may take before the run fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(60);
/// The exit code of a run that could not happen here (no root, no
/// namespaces), as automake's test drivers count a skip: apart from 2,
/// which is any other error.
pub const SKIPPED: u8 = 77;
/// Requests each load client sends at most (its ids span 4,096).
const REQUESTS_PER_CLIENT: u64 = 4000;
/// How often status files are read.
const POLL: Duration = Duration::from_millis(5);

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Three hosts as network namespaces on this machine, the primary
    /// SIGKILLed under load again and again, the clients' history judged.
    Local(LocalArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// SIGKILLs of the primary.
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// "emu" or "kvm".
    #[arg(long, default_value = "emu")]
    engine: String,
    /// Seed of the kill times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shortest and longest wait, ms, after re-protection before the next kill.
    #[arg(long, default_value_t = 200)]
    kill_after_min_ms: u64,
    #[arg(long, default_value_t = 1200)]
    kill_after_max_ms: u64,
    /// "ft" or "ha".
    #[arg(long, default_value = "ft")]
    level: String,
    /// Clients of the load.
    #[arg(long, default_value_t = 8)]
    clients: u16,
    /// A peer silent this long is suspected, ms.
    #[arg(long, default_value_t = 150)]
    suspect_after_ms: u64,
    /// After the kills, cut the link between a and b (nftables, both ways;
    /// the witness and the clients still reach both) this many times: both
    /// sides suspect each other, the witness lets one of them go on.
    #[arg(long, default_value_t = 0)]
    cuts: u32,
    /// How long each cut lasts, ms.
    #[arg(long, default_value_t = 600)]
    cut_ms: u64,
    /// Where configs, state, logs and the history go.
    #[arg(long, default_value = "lockstep-cluster")]
    out: PathBuf,
}

pub fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    let ClusterCommand::Local(args) = args.command;
    local(&args)
}

/// Whether this process runs as root (read from /proc, no unsafe).
pub(super) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

pub(super) fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{}: cannot run", args[0]))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces of one run; dropped, they are gone.
pub(super) struct Netns {
    prefix: String,
    made: Vec<String>,
}

impl Netns {
    pub(super) fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    /// The bridge namespace and one namespace per member, each with an
    /// `eth0` on the bridge at `SUBNET.<n>`.
    pub(super) fn build(prefix: String, members: &[(&str, u8)]) -> anyhow::Result<Netns> {
        let mut netns = Netns {
            prefix,
            made: Vec::new(),
        };
        let br = netns.name("net");
        sh(&["ip", "netns", "add", &br])?;
        netns.made.push(br.clone());
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"])?;
        for (role, n) in members {
            let ns = netns.name(role);
            sh(&["ip", "netns", "add", &ns])?;
            netns.made.push(ns.clone());
            let outer = format!("v{role}");
            sh(&[
                "ip", "-n", &br, "link", "add", &outer, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            sh(&[
                "ip", "-n", &br, "link", "set", &outer, "master", "br0", "up",
            ])?;
            let cidr = format!("{SUBNET}.{n}/24");
            sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        // A client's ARP entry for the service address follows every
        // gratuitous ARP, however soon after the last (the demo moves the
        // address more often than a neighbour's lock time allows).
        let clients = netns.name("c");
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &clients,
            "sysctl",
            "-qw",
            "net.ipv4.neigh.eth0.locktime=0",
        ]);
        Ok(netns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in self.made.drain(..).rev() {
            let _ = sh(&["ip", "netns", "del", &ns]);
        }
    }
}

/// Children of a run (the daemons, the load), each slot emptied when the
/// run takes its child out (to kill or stop it); dropped, the rest are
/// killed.
pub(super) struct Nodes(pub(super) [Option<Child>; 2]);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub(super) struct Layout {
    pub(super) out: PathBuf,
    pub(super) exe: PathBuf,
}

impl Layout {
    pub(super) fn state(&self, host: &str) -> PathBuf {
        self.out.join(format!("state-{host}"))
    }

    pub(super) fn spawn(
        &self,
        netns: &Netns,
        role: &str,
        args: &[&str],
        log: &str,
    ) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.out.join(log))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns.name(role)])
            .arg(&self.exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(child)
    }

    pub(super) fn status(&self, host: &str) -> Option<Status> {
        let text = std::fs::read(self.state(host).join("status.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

pub(super) fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the generated configurations say.
pub(super) struct Shape<'a> {
    pub(super) engine: &'a str,
    pub(super) level: &'a str,
    pub(super) suspect_after_ms: u64,
    pub(super) memory_mib: u64,
    /// MiB of that memory holding data at boot (`[guest] data_mib`).
    pub(super) data_mib: u64,
}

/// Writes a fresh secret from the OS (this is a real cluster) to `path`,
/// readable by its owner only.
fn write_key(path: &Path) -> anyhow::Result<()> {
    let mut secret = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
    let text: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

pub(super) fn write_configs(args: &Shape<'_>, layout: &Layout) -> anyhow::Result<()> {
    // A key per pair of nodes: a-b for the replication link, a-w and b-w
    // for each host's link to the witness.
    let key = |pair: &str| layout.out.join(format!("{pair}.key"));
    for pair in ["a-b", "a-w", "b-w"] {
        write_key(&key(pair))?;
    }
    for (n, host) in ["a", "b"].into_iter().enumerate() {
        let peer = 1 - n;
        let bootstrap = if n == 0 { "primary" } else { "backup" };
        let config = format!(
            r#"[node]
id = {n}
peer_id = {peer}
witness_id = 2
bootstrap = "{bootstrap}"
state_dir = "{state}"
peer_key_file = "{peer_key}"
witness_key_file = "{witness_key}"
engine = "{engine}"

[net]
listen = "{SUBNET}.{me}:{FRAME_PORT}"
peer = "{SUBNET}.{other}:{FRAME_PORT}"
witness = "{SUBNET}.3:{FRAME_PORT}"
service = "{SUBNET}.100:{SERVICE_PORT}"
service_address = "{SUBNET}.100/24"
service_interface = "eth0"

[guest]
memory_mib = {memory}
data_mib = {data}

[protocol]
level = "{level}"
epoch_ms = 20
heartbeat_ms = 20
suspect_after_ms = {suspect}
"#,
            state = layout.state(host).display(),
            peer_key = key("a-b").display(),
            witness_key = key(&format!("{host}-w")).display(),
            engine = args.engine,
            me = n + 1,
            other = peer + 1,
            level = args.level,
            suspect = args.suspect_after_ms,
            memory = args.memory_mib,
            data = args.data_mib,
        );
        std::fs::write(layout.out.join(format!("node-{host}.toml")), config)?;
    }
    let witness = format!(
        r#"[witness]
id = 2
listen = "{SUBNET}.3:{FRAME_PORT}"
state_dir = "{state}"
bootstrap_primary = 0

[[members]]
id = 0
address = "{SUBNET}.1:{FRAME_PORT}"
key_file = "{a_key}"

[[members]]
id = 1
address = "{SUBNET}.2:{FRAME_PORT}"
key_file = "{b_key}"
"#,
        state = layout.state("witness").display(),
        a_key = key("a-w").display(),
        b_key = key("b-w").display(),
    );
    std::fs::write(layout.out.join("witness.toml"), witness)?;
    Ok(())
}

/// Waits until `ok` holds, polling; `Err` on timeout or interruption.
pub(super) fn wait_for(
    stop: &AtomicBool,
    what: &str,
    mut ok: impl FnMut() -> bool,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while !ok() {
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted while waiting for {what}");
        }
        if started.elapsed() > PHASE_TIMEOUT {
            bail!("{what}: not within {} s", PHASE_TIMEOUT.as_secs());
        }
        std::thread::sleep(POLL);
    }
    Ok(started.elapsed())
}

pub(super) fn protected(layout: &Layout, primary: &str, backup: &str) -> bool {
    let p = layout.status(primary);
    let b = layout.status(backup);
    matches!((p, b), (Some(p), Some(b))
        if p.role == "primary" && p.running && p.protection.as_deref() == Some("protected")
            && b.role == "backup" && b.generation == p.generation)
}

fn local(args: &LocalArgs) -> anyhow::Result<ExitCode> {
    if !is_root() {
        println!("cluster local: SKIPPED: needs root (network namespaces); run it as root");
        return Ok(ExitCode::from(SKIPPED));
    }
    if !["emu", "kvm"].contains(&args.engine.as_str()) {
        bail!("--engine is emu or kvm, not {}", args.engine);
    }
    if args.kill_after_min_ms > args.kill_after_max_ms {
        bail!("--kill-after-min-ms exceeds --kill-after-max-ms");
    }
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watch(Arc::clone(&stop))?;
    let _ = std::fs::remove_dir_all(&args.out);
    std::fs::create_dir_all(&args.out)?;
    let layout = Layout {
        out: std::fs::canonicalize(&args.out)?,
        exe: std::env::current_exe()?,
    };
    let shape = Shape {
        engine: &args.engine,
        level: &args.level,
        suspect_after_ms: args.suspect_after_ms,
        memory_mib: 4,
        data_mib: 0,
    };
    write_configs(&shape, &layout)?;
    let prefix = format!("ls{}", std::process::id());
    let netns = match Netns::build(prefix, &[("a", 1), ("b", 2), ("w", 3), ("c", 4)]) {
        Ok(n) => n,
        Err(e) => {
            println!("cluster local: SKIPPED: network namespaces do not work here: {e:#}");
            return Ok(ExitCode::from(SKIPPED));
        }
    };
    let outcome = drive(args, &layout, &netns, &stop);
    drop(netns);
    outcome
}

pub(super) fn spawn_signal_watch(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(runtime::daemon::stop_signal());
        stop.store(true, Ordering::SeqCst);
    });
    Ok(())
}

/// Cuts (or repairs) every packet between a and b, both ways, by an
/// nftables table in a's namespace.
fn cut(netns: &Netns, on: bool) -> anyhow::Result<()> {
    let ns = netns.name("a");
    let nft = |rest: &[&str]| {
        let mut args = vec!["ip", "netns", "exec", &ns, "nft"];
        args.extend_from_slice(rest);
        sh(&args)
    };
    if !on {
        return nft(&["delete", "table", "inet", "lockstep_cut"]);
    }
    nft(&["add", "table", "inet", "lockstep_cut"])?;
    for (chain, hook, dir) in [("in", "input", "saddr"), ("out", "output", "daddr")] {
        nft(&[
            "add",
            "chain",
            "inet",
            "lockstep_cut",
            chain,
            &format!("{{ type filter hook {hook} priority 0; }}"),
        ])?;
        nft(&[
            "add",
            "rule",
            "inet",
            "lockstep_cut",
            chain,
            "ip",
            dir,
            &format!("{SUBNET}.2"),
            "drop",
        ])?;
    }
    Ok(())
}

/// SIGKILLs the primary (`nodes.0[primary]`), waits until the survivor
/// runs as primary, restarts the victim with `respawn` and waits until the
/// pair is protected again.
pub(super) fn kill_and_recover(
    layout: &Layout,
    netns: &Netns,
    stop: &AtomicBool,
    nodes: &mut Nodes,
    primary: usize,
    respawn: impl FnOnce(&str) -> anyhow::Result<Child>,
) -> anyhow::Result<KillFigures> {
    let names = ["a", "b"];
    let (victim, survivor) = (names[primary], names[1 - primary]);
    let mut child = nodes.0[primary].take().context("the primary runs")?;
    let at_unix_ns = unix_ns();
    child.kill().context("SIGKILL the primary")?;
    let _ = child.wait();
    // A dead machine answers no ARP: the killed daemon's namespace keeps
    // the address its kernel had, so take it off.
    let address = format!("{SUBNET}.100/24");
    let _ = sh(&[
        "ip",
        "-n",
        &netns.name(victim),
        "addr",
        "del",
        &address,
        "dev",
        "eth0",
    ]);
    wait_for(stop, "the failover", || {
        layout
            .status(survivor)
            .is_some_and(|s| s.role == "primary" && s.running)
    })?;
    // When the survivor began to run the guest, as it says: the status
    // file trails that by up to its interval and our polling.
    let took_over_unix_ns = layout
        .status(survivor)
        .and_then(|s| s.primary_since_unix_ns)
        .unwrap_or_else(unix_ns);
    nodes.0[primary] = Some(respawn(victim)?);
    let restarted = Instant::now();
    wait_for(stop, "re-protection", || {
        protected(layout, survivor, victim)
    })?;
    Ok(KillFigures {
        at_unix_ns,
        took_over_unix_ns,
        reprotect: restarted.elapsed(),
    })
}

/// Figures of one kill.
pub(super) struct KillFigures {
    pub(super) at_unix_ns: u64,
    /// When the survivor began to run the guest as primary: replies
    /// before it were still in flight from the killed one.
    pub(super) took_over_unix_ns: u64,
    pub(super) reprotect: Duration,
}

fn drive(
    args: &LocalArgs,
    layout: &Layout,
    netns: &Netns,
    stop: &AtomicBool,
) -> anyhow::Result<ExitCode> {
    let node_args = |host: &str| {
        let config = layout.out.join(format!("node-{host}.toml"));
        vec![
            "node".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ]
    };
    let spawn_node = |host: &str| -> anyhow::Result<Child> {
        let a = node_args(host);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        layout.spawn(netns, host, &a, &format!("node-{host}.log"))
    };
    let witness_config = layout.out.join("witness.toml").display().to_string();
    let witness = layout.spawn(
        netns,
        "w",
        &["witness", "--config", &witness_config],
        "witness.log",
    )?;
    let witness = Nodes([Some(witness), None]);
    let mut nodes = Nodes([Some(spawn_node("a")?), Some(spawn_node("b")?)]);
    wait_for(stop, "the first protection", || protected(layout, "a", "b"))?;
    println!("cluster local: a primary, b backup, protected; load starts");
    let history = layout.out.join("history.jsonl");
    // Each client has ids for `REQUESTS_PER_CLIENT` requests: spread them
    // over the time the kills will take (the longest wait and about half
    // a second of failover and re-protection each), so that every kill
    // strikes under load.
    let expected_s = f64::from(args.kills) * (args.kill_after_max_ms as f64 / 1000.0 + 0.8)
        + f64::from(args.cuts) * (args.cut_ms as f64 / 1000.0 + 2.0)
        + 10.0;
    let think_ms = ((expected_s * 1000.0) / REQUESTS_PER_CLIENT as f64)
        .ceil()
        .max(5.0) as u64;
    let load_s = expected_s * 3.0;
    let load_args = [
        "load".to_string(),
        "--target".to_string(),
        format!("{SUBNET}.100:{SERVICE_PORT}"),
        "--clients".to_string(),
        args.clients.to_string(),
        "--requests".to_string(),
        REQUESTS_PER_CLIENT.to_string(),
        "--think-ms".to_string(),
        think_ms.to_string(),
        "--duration-s".to_string(),
        load_s.to_string(),
        "--history".to_string(),
        history.display().to_string(),
        "--seed".to_string(),
        args.seed.to_string(),
    ];
    let load_args: Vec<&str> = load_args.iter().map(String::as_str).collect();
    let load = layout.spawn(netns, "c", &load_args, "load.log")?;
    let mut load = Nodes([Some(load), None]);
    let mut rng = SplitMix64::new(args.seed);
    let mut kills = Vec::new();
    let mut primary = 0usize;
    let names = ["a", "b"];
    std::thread::sleep(Duration::from_millis(500));
    for k in 0..args.kills {
        let wait = rng.range(args.kill_after_min_ms, args.kill_after_max_ms);
        std::thread::sleep(Duration::from_millis(wait));
        let (victim, survivor) = (names[primary], names[1 - primary]);
        let figures = kill_and_recover(layout, netns, stop, &mut nodes, primary, spawn_node)?;
        let reprotect = figures.reprotect;
        println!(
            "kill {}/{}: {victim} killed, {survivor} took over, {victim} re-protected in {:.0} ms",
            k + 1,
            args.kills,
            reprotect.as_secs_f64() * 1000.0
        );
        kills.push(figures);
        primary = 1 - primary;
    }
    for c in 0..args.cuts {
        std::thread::sleep(Duration::from_millis(rng.range(200, 800)));
        cut(netns, true)?;
        std::thread::sleep(Duration::from_millis(args.cut_ms));
        cut(netns, false)?;
        let healed = Instant::now();
        wait_for(stop, "re-protection after the cut", || {
            protected(layout, "a", "b") || protected(layout, "b", "a")
        })?;
        let now_primary = usize::from(!protected(layout, "a", "b"));
        println!(
            "cut {}/{}: a and b apart for {} ms; {} went on, {} re-protected {:.0} ms after the repair",
            c + 1,
            args.cuts,
            args.cut_ms,
            names[now_primary],
            names[1 - now_primary],
            healed.elapsed().as_secs_f64() * 1000.0
        );
        primary = now_primary;
    }
    // The load stops sending, drains what is outstanding, and writes.
    let mut load = load.0[0].take().context("the load runs")?;
    let _ = sh(&["kill", "-TERM", &load.id().to_string()]);
    let loaded = load.wait()?;
    let survivor = names[primary];
    let mut survivor_child = nodes.0[primary].take().context("the primary runs")?;
    sh(&["kill", "-TERM", &survivor_child.id().to_string()])?;
    survivor_child.wait()?;
    for child in nodes.0.iter_mut().flatten() {
        let _ = sh(&["kill", "-TERM", &child.id().to_string()]);
        let _ = child.wait();
    }
    drop(witness);
    judge(args, layout, survivor, &kills, loaded.success())
}

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn judge(
    args: &LocalArgs,
    layout: &Layout,
    survivor: &str,
    kills: &[KillFigures],
    load_ok: bool,
) -> anyhow::Result<ExitCode> {
    let history_path = layout.out.join("history.jsonl");
    let file = std::fs::File::open(&history_path)?;
    let history = History::read(std::io::BufReader::new(file))?;
    let start = history
        .start_unix_ns
        .context("the history has no start line")?;
    let by_kill: Vec<(usize, f64)> = kills
        .iter()
        .enumerate()
        .filter_map(|(i, k)| {
            let at = k.at_unix_ns.checked_sub(start)?;
            let took_over = k.took_over_unix_ns.checked_sub(start)?;
            let first = history.first_reply_after(took_over)?;
            Some((i + 1, (first - at) as f64 / 1e6))
        })
        .collect();
    let mut slowest = by_kill.clone();
    slowest.sort_by(|a, b| b.1.total_cmp(&a.1));
    let slowest: Vec<String> = slowest
        .iter()
        .take(3)
        .map(|(k, ms)| format!("kill {k} {ms:.0} ms"))
        .collect();
    println!("slowest failovers: {}", slowest.join(", "));
    let mut failover_ms: Vec<f64> = by_kill.iter().map(|(_, ms)| *ms).collect();
    let unanswered_kills = kills.len() - failover_ms.len();
    if unanswered_kills > 0 {
        println!("{unanswered_kills} kills were followed by no reply at all");
    }
    failover_ms.sort_by(f64::total_cmp);
    let mut reprotect_ms: Vec<f64> = kills
        .iter()
        .map(|k| k.reprotect.as_secs_f64() * 1000.0)
        .collect();
    reprotect_ms.sort_by(f64::total_cmp);
    println!(
        "{} kills: failover (SIGKILL to the new primary's first reply) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; re-protection p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        kills.len(),
        percentile(&failover_ms, 0.5),
        percentile(&failover_ms, 0.99),
        failover_ms.last().copied().unwrap_or(f64::NAN),
        percentile(&reprotect_ms, 0.5),
        percentile(&reprotect_ms, 0.99),
        reprotect_ms.last().copied().unwrap_or(f64::NAN),
    );
    let checkpoint = layout.state(survivor).join("final.ckpt");
    let check = super::load::check_files(&history_path, &checkpoint)?;
    let passed = check && load_ok && kills.len() == args.kills as usize && unanswered_kills == 0;
    if !load_ok {
        println!("the load left requests unanswered (see load.log)");
    }
    println!(
        "cluster local: {} (out: {})",
        if passed { "PASSED" } else { "FAILED" },
        layout.out.display()
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
