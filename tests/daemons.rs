//! The daemons as a user runs them: configuration errors that name file,
//! line and field; key files others can read refused; and a whole cluster
//! on loopback (witness, two nodes, a client fleet) whose primary is
//! SIGKILLed under load, judged by `lockstep check`.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::lockstep;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A key file; each file a different key (every link has its own).
fn write_key(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().unwrap().to_string_lossy();
    std::fs::write(path, format!("0123456789abcdef-{name}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The three link keys: `a-b.key`, `a-w.key`, `b-w.key`.
fn write_keys(dir: &Path, mode: u32) {
    for pair in ["a-b", "a-w", "b-w"] {
        write_key(&dir.join(format!("{pair}.key")), mode);
    }
}

/// A node's configuration on loopback, ports from `base`.
fn node_config(dir: &Path, me: u8, base: u16, extra: &str) -> String {
    let peer = 1 - me;
    let bootstrap = if me == 0 { "primary" } else { "backup" };
    format!(
        "[node]\nid = {me}\npeer_id = {peer}\nwitness_id = 2\nbootstrap = \"{bootstrap}\"\n\
         state_dir = \"{state}\"\npeer_key_file = \"{peer_key}\"\n\
         witness_key_file = \"{witness_key}\"\nengine = \"emu\"\n\n\
         [net]\nlisten = \"127.0.0.1:{listen}\"\npeer = \"127.0.0.1:{peer_port}\"\n\
         witness = \"127.0.0.1:{witness}\"\nservice = \"127.0.0.1:{service}\"\n{extra}",
        state = dir.join(format!("state{me}")).display(),
        peer_key = dir.join("a-b.key").display(),
        witness_key = dir.join(["a-w.key", "b-w.key"][usize::from(me)]).display(),
        listen = base + u16::from(me),
        peer_port = base + u16::from(peer),
        witness = base + 2,
        service = base + 10 + u16::from(me),
    )
}

#[test]
fn a_malformed_node_config_names_file_line_and_field() {
    let dir = temp_dir("badconfig");
    write_keys(&dir, 0o600);
    let text = node_config(&dir, 0, 40_000, "").replace("127.0.0.1:40000", "here");
    let file = dir.join("node.toml");
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("node.toml:12:"), "{stderr}");
    assert!(stderr.contains("net.listen"), "{stderr}");
    assert!(stderr.contains("not an address"), "{stderr}");

    let text = node_config(&dir, 0, 40_000, "") + "[guest]\nvcpuz = 2\n";
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("vcpuz"),
        "an unknown field is named: {stderr}"
    );

    let text = node_config(&dir, 0, 40_000, "") + "[protocol]\ntransfer_mib_per_s = 0\n";
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("protocol.transfer_mib_per_s") && stderr.contains("must be positive"),
        "{stderr}"
    );

    // The level is read as the protocol's one Level, with its message.
    let text = node_config(&dir, 0, 40_000, "") + "[protocol]\nlevel = \"fault-tolerant\"\n";
    std::fs::write(&file, text).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("protocol.level")
            && stderr.contains("unknown protection level `fault-tolerant` (expected ft or ha)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_key_file_others_can_read_is_refused_and_a_missing_one_named() {
    let dir = temp_dir("badkey");
    write_keys(&dir, 0o644);
    let file = dir.join("node.toml");
    std::fs::write(&file, node_config(&dir, 0, 40_100, "")).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("readable by others"), "{stderr}");
    assert!(stderr.contains("node.peer_key_file"), "{stderr}");
    assert!(
        !dir.join("state0").exists(),
        "nothing is created before the config is accepted"
    );
    write_keys(&dir, 0o600);
    write_key(&dir.join("a-w.key"), 0o640);
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("node.witness_key_file"), "{stderr}");
    std::fs::copy(dir.join("a-b.key"), dir.join("a-w.key")).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(stderr.contains("a key of its own"), "{stderr}");
    std::fs::remove_file(dir.join("a-b.key")).unwrap();
    let (code, _, stderr) = lockstep(&["node", "--config", &file.display().to_string()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("key") && stderr.contains("cannot read"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a failing test, the tails of the daemons' logs and status files in
/// `dir`: a failure on a loaded CI machine is then read from its output.
struct ShowLogsOnPanic(PathBuf);

impl Drop for ShowLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        files.extend((0..2).map(|me| self.0.join(format!("state{me}/status.json"))));
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last 60 of {} lines)", file.display(), lines.len());
            for line in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A daemon process, killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str], log: &Path) -> Daemon {
    let log = std::fs::File::create(log).unwrap();
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(args)
            // Role changes and grants are logged at info: what a failure's
            // logs need.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn status(dir: &Path, me: u8) -> serde_json::Value {
    std::fs::read(dir.join(format!("state{me}/status.json")))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn protected(dir: &Path, primary: u8) -> bool {
    let (p, b) = (status(dir, primary), status(dir, 1 - primary));
    p["role"] == "primary"
        && p["protection"] == "protected"
        && b["role"] == "backup"
        && p["generation"] == b["generation"]
}

/// A loopback cluster's ports: `base + k` for k below this.
const LOOPBACK_PORTS: u16 = 20;
/// Loopback clusters of one run of this file (each test its own).
const LOOPBACK_CLUSTERS: u16 = 2;
/// The lowest base the loopback cluster takes.
const LOOPBACK_FIRST_PORT: u16 = 10_000;

/// The first of loopback cluster `cluster`'s ports, below the kernel's
/// ephemeral range (`ip_local_port_range`): no socket bound to port 0 and
/// no outgoing connection on this machine (the load's clients, the peer
/// link reconnecting to a dead peer, other tests) is ever given one of
/// them. Inside the range, node b's reconnects to the killed a could be
/// given a's own listening port, connect to themselves and keep it from
/// the restarted a. Spread by process id and skipping slots in use, so
/// runs side by side do not meet.
fn loopback_base(cluster: u16) -> u16 {
    assert!(cluster < LOOPBACK_CLUSTERS);
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let low: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let run_ports = LOOPBACK_PORTS * LOOPBACK_CLUSTERS;
    let slots = low.saturating_sub(LOOPBACK_FIRST_PORT) / run_ports;
    assert!(
        slots > 0,
        "the ephemeral range starts at {low}: no room below it for the loopback cluster"
    );
    let first = std::process::id() % u32::from(slots);
    (0..u32::from(slots))
        .map(|k| u16::try_from((first + k) % u32::from(slots)).unwrap())
        .map(|slot| LOOPBACK_FIRST_PORT + slot * run_ports + cluster * LOOPBACK_PORTS)
        .find(|base| ports_free(*base))
        .expect("a free slot below the ephemeral range")
}

/// Whether the ports a loopback cluster at `base` binds are free now (a
/// run beside this one may hold a slot: the next is taken).
fn ports_free(base: u16) -> bool {
    [0, 1, 2, 10, 11].iter().all(|k| {
        let addr = ("127.0.0.1", base + k);
        std::net::UdpSocket::bind(addr).is_ok() && std::net::TcpListener::bind(addr).is_ok()
    })
}

#[test]
fn a_sigkilled_primary_loses_nothing_acknowledged() {
    sigkilled_primary_under_load("loopback", 0, AfterReprotection::Nothing);
}

/// A stall of the new primary longer than `suspect_after` once the pair is
/// protected again (a long step, a descheduled process, a slow fsync of
/// the certified generation on a loaded machine) hands the guest to the
/// re-joined host, as it should. With one service port per host, clients
/// that sent to the stalled host's only were never answered again (the
/// one CI failure: the load's 3 s and its whole 10 s drain); they send
/// each request to both hosts' ports and follow.
#[test]
fn a_stalled_primary_deposed_by_its_new_backup_is_followed_by_the_clients() {
    sigkilled_primary_under_load("deposed", 1, AfterReprotection::StopUntilDeposed);
}

/// What the test does to the new primary once the pair is protected again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterReprotection {
    /// Nothing.
    Nothing,
    /// SIGSTOP until the re-joined host has taken over, then SIGCONT.
    StopUntilDeposed,
}

/// Sends `signal` to the process whose status names `pid`.
fn signal(signal: &str, pid: &serde_json::Value) {
    let pid = pid.as_u64().unwrap().to_string();
    assert!(Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap()
        .success());
}

/// One loopback cluster at a time: two side by side on a loaded machine
/// stall each other's hosts into failovers of their own.
static CLUSTERS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Witness, a and b on loopback (cluster `cluster`'s ports); a load
/// against both service ports; the first primary SIGKILLed 0.5 s in, the
/// other takes over, the killed one restarts and is its backup again; then
/// `after`. Every request must be answered, and the history pass `lockstep
/// check` against the final checkpoint of the primary at the end.
fn sigkilled_primary_under_load(name: &str, cluster: u16, after: AfterReprotection) {
    let _one = CLUSTERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = temp_dir(name);
    let _logs = ShowLogsOnPanic(dir.clone());
    write_keys(&dir, 0o600);
    let base = loopback_base(cluster);
    for me in 0..2u8 {
        std::fs::write(
            dir.join(format!("node{me}.toml")),
            node_config(&dir, me, base, ""),
        )
        .unwrap();
    }
    let witness = format!(
        "[witness]\nid = 2\nlisten = \"127.0.0.1:{w}\"\nstate_dir = \"{s}\"\n\
         bootstrap_primary = 0\n[[members]]\nid = 0\naddress = \"127.0.0.1:{a}\"\nkey_file = \"{ka}\"\n\
         [[members]]\nid = 1\naddress = \"127.0.0.1:{b}\"\nkey_file = \"{kb}\"\n",
        w = base + 2,
        s = dir.join("wstate").display(),
        ka = dir.join("a-w.key").display(),
        kb = dir.join("b-w.key").display(),
        a = base,
        b = base + 1,
    );
    std::fs::write(dir.join("witness.toml"), witness).unwrap();
    let arg = |name: &str| dir.join(name).display().to_string();
    let _witness = start(
        &["witness", "--config", &arg("witness.toml")],
        &dir.join("w.log"),
    );
    let node = |me: u8, log: &str| {
        start(
            &["node", "--config", &arg(&format!("node{me}.toml"))],
            &dir.join(log),
        )
    };
    let mut nodes = [node(0, "a.log"), node(1, "b.log")];
    // A bootstrap backup that hears nothing from a slow-starting primary
    // for `suspect_after` takes over: either host may be primary first.
    wait_until("the first protection", || {
        protected(&dir, 0) || protected(&dir, 1)
    });
    let first = u8::from(protected(&dir, 1));
    let other = 1 - first;
    // Each host serves on its own port (there is no address that moves
    // with the primary on loopback): the clients send to both, and the
    // backup drops what it gets.
    let targets = [10, 11].map(|k| format!("127.0.0.1:{}", base + k));
    let history = arg("history.jsonl");
    let load = start(
        &[
            "load",
            "--target",
            &targets[0],
            "--target",
            &targets[1],
            "--clients",
            "2",
            "--duration-s",
            "3",
            "--history",
            &history,
        ],
        &dir.join("load.log"),
    );
    std::thread::sleep(Duration::from_millis(500));
    // A primary that went on alone meanwhile (it suspected a slow backup)
    // takes the guest with it when killed: the VM is lost, rightly, and
    // no takeover comes. Kill a protected one.
    wait_until("protection before the kill", || protected(&dir, first));
    let killed = &mut nodes[usize::from(first)].0;
    let _ = killed.kill();
    let _ = killed.wait();
    wait_until("the takeover", || status(&dir, other)["role"] == "primary");
    nodes[usize::from(first)] = node(first, &format!("{}2.log", ["a", "b"][usize::from(first)]));
    wait_until("re-protection", || protected(&dir, other));
    if after == AfterReprotection::StopUntilDeposed {
        let pid = status(&dir, other)["pid"].clone();
        signal("-STOP", &pid);
        wait_until("the re-joined host's takeover", || {
            status(&dir, first)["role"] == "primary"
        });
        signal("-CONT", &pid);
    }
    let mut load = load;
    assert!(load.0.wait().unwrap().success(), "every request answered");
    wait_until("a protected pair at the end", || {
        protected(&dir, 0) || protected(&dir, 1)
    });
    let survivor = u8::from(protected(&dir, 1));
    let state = dir.join(format!("state{survivor}"));
    signal("-TERM", &status(&dir, survivor)["pid"]);
    wait_until("the survivor's final checkpoint", || {
        state.join("final.ckpt").exists() && status(&dir, survivor)["pid"].is_u64()
    });
    std::thread::sleep(Duration::from_millis(200));
    let (code, stdout, stderr) = lockstep(&[
        "check",
        "--history",
        &history,
        "--checkpoint",
        &state.join("final.ckpt").display().to_string(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("check passed"), "{stdout}");
    drop(nodes);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs mounted at `path` (root only), unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(path: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| SmallFs(path.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_node_whose_state_disk_is_full_says_so_and_does_not_panic() {
    let dir = temp_dir("fulldisk");
    write_keys(&dir, 0o600);
    let Some(_fs) = SmallFs::mount(&dir.join("state0"), "256k") else {
        use std::io::Write;
        let _ = std::io::stderr().write_all(
            b"SKIPPED: a_node_whose_state_disk_is_full_says_so_and_does_not_panic needs root to mount a small tmpfs\n",
        );
        return;
    };
    // The guest disk (8192 blocks, 4.6 MiB) cannot fit in 256 KiB.
    let config = dir.join("node0.toml");
    std::fs::write(&config, node_config(&dir, 0, 40_900, "")).unwrap();
    let (code, stdout, stderr) = lockstep(&["node", "--config", &config.display().to_string()]);
    assert_ne!(code, 0, "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("No space left on device") && stderr.contains("disk.img"),
        "the error names the cause and the file: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.join("state0"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().contains(".creating")),
        "no half-made disk is left behind: {left:?}"
    );
    drop(_fs);
    let _ = std::fs::remove_dir_all(&dir);
}
