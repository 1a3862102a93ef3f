//! The scenario directory as the simulator reads it, and what a person sees
//! when a file is wrong.

use std::path::{Path, PathBuf};

use faults::scenario::{parse_scenario, suite::parse_suite, Origin, Seeds};
use faults::{load_dir, FaultKind, FaultPlan, Target};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

#[test]
fn every_file_in_scenarios_loads() {
    let catalogue = load_dir(&dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        catalogue.scenarios.len() >= 17,
        "{}",
        catalogue.scenarios.len()
    );
    for name in ["smoke", "ci", "nightly"] {
        assert!(catalogue.suites.contains_key(name), "suite {name}");
    }
    for regression in &catalogue.regressions {
        assert!(
            catalogue.scenarios.contains_key(&regression.scenario),
            "regression names {}",
            regression.scenario
        );
    }
    let swarm = &catalogue.scenarios["swarm"];
    assert!(matches!(swarm.faults, FaultPlan::Swarm(_)));
    let baseline = &catalogue.scenarios["baseline"];
    assert_eq!(baseline.faults, FaultPlan::Scripted(vec![]));
}

#[test]
fn the_issue_s_named_scenarios_are_there() {
    let catalogue = load_dir(&dir()).unwrap();
    for name in [
        "primary-crash-mid-epoch",
        "primary-crash-delta-in-flight",
        "backup-crash-reprotect",
        "witness-crash",
        "partition-witness-with-primary",
        "partition-witness-with-backup",
        "oneway-partition",
        "primary-isolated",
        "flapping-link",
        "disk-eio-primary",
        "torn-write-backup",
        "nic-failure-primary",
        "primary-paused-past-timeout",
        "backup-dies-during-resync",
        "two-faults-in-a-row",
        "baseline",
        "swarm",
    ] {
        assert!(catalogue.scenarios.contains_key(name), "{name}");
    }
    let pause = &catalogue.scenarios["primary-paused-past-timeout"];
    let faults = pause.fault_schedule(0);
    assert!(matches!(
        faults[0].fault,
        FaultKind::Pause {
            target: Target::Primary
        }
    ));
    assert!(faults[0].duration_ms.unwrap() > pause.protection.suspect_after_ms);
    assert_eq!(pause.workload.think_ms, 3);
}

#[test]
fn suites_have_the_sizes_the_issue_asks() {
    let catalogue = load_dir(&dir()).unwrap();
    let ci = &catalogue.suites["ci"];
    assert!(ci.run_count(&catalogue).unwrap() >= 1_000);
    assert_eq!(
        ci.runs(&catalogue).count() as u64,
        ci.run_count(&catalogue).unwrap()
    );
    let smoke = &catalogue.suites["smoke"];
    assert!(smoke.run_count(&catalogue).unwrap() <= 30);
    let nightly = &catalogue.suites["nightly"];
    assert_eq!(nightly.seeds, Seeds::Unbounded);
    assert_eq!(nightly.run_count(&catalogue), None);
    assert_eq!(nightly.runs(&catalogue).take(5_000).count(), 5_000);
}

#[test]
fn nightly_starts_where_ci_s_seeds_stop() {
    let catalogue = load_dir(&dir()).unwrap();
    let ci = &catalogue.suites["ci"];
    let Seeds::Count(ci_seeds) = ci.seeds else {
        panic!("ci is bounded: {:?}", ci.seeds)
    };
    let nightly = &catalogue.suites["nightly"];
    assert_eq!(nightly.first_seed, ci.first_seed + ci_seeds);
    let ci_max = ci
        .runs(&catalogue)
        .filter(|r| r.origin == Origin::Suite)
        .map(|r| r.seed)
        .max()
        .unwrap();
    let nightly_min = nightly
        .runs(&catalogue)
        .take(10_000)
        .filter(|r| r.origin == Origin::Suite)
        .map(|r| r.seed)
        .min()
        .unwrap();
    assert!(
        nightly_min > ci_max,
        "nightly from {nightly_min}, ci to {ci_max}"
    );
}

#[test]
fn regressions_run_first() {
    let mut catalogue = load_dir(&dir()).unwrap();
    catalogue.regressions.push(faults::Regression {
        scenario: "witness-crash".into(),
        seed: 99_999,
        note: "test".into(),
    });
    let kept = catalogue.regressions.len();
    let smoke = &catalogue.suites["smoke"];
    let runs: Vec<_> = smoke.runs(&catalogue).collect();
    assert!(runs[..kept].iter().all(|r| r.origin == Origin::Regression));
    let last = &runs[kept - 1];
    assert_eq!(
        (last.seed, last.scenario.name.as_str()),
        (99_999, "witness-crash")
    );
    assert!(runs[kept..].iter().all(|r| r.origin == Origin::Suite));
}

const GOOD: &str = r#"name = "x"
description = "d"
duration_ms = 1000
liveness_ms = 1000

[guest]
kind = "ledger"
vcpus = 2
accounts = 16

[workload]
clients = 2
requests = 10
window = 4
retry_after_ms = 100

[protection]
level = "ft"
epoch_ms = 20
heartbeat_ms = 10
suspect_after_ms = 50

[[faults]]
at_ms = 500
kind = "crash"
target = "primary"
"#;

fn error_of(text: &str) -> String {
    match parse_scenario(Path::new("x.toml"), text, Some("x")) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_good_text_is_good() {
    parse_scenario(Path::new("x.toml"), GOOD, Some("x")).unwrap();
}

#[test]
fn broken_files_name_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("vcpus = 2", "vcpus = 0", "x.toml:8:9: guest.vcpus: must be 1..=8, got 0"),
        ("vcpus = 2", "vcpuz = 2", "x.toml:8:9: guest.vcpuz: unknown field `vcpuz`, expected one of `kind`, `vcpus`, `accounts`"),
        ("vcpus = 2", "vcpus = \"two\"", "x.toml:8:9: guest.vcpus: invalid type: string \"two\""),
        ("accounts = 16\n", "", "guest.accounts: missing field `accounts`"),
        ("[guest]\nkind = \"ledger\"\nvcpus = 2\naccounts = 16\n", "", "x.toml:1:1: guest: missing field `guest`"),
        ("liveness_ms = 1000\n", "", "x.toml:1:1: liveness_ms: missing field `liveness_ms`"),
        ("at_ms = 500", "at_ms = 5000", "x.toml:24:9: faults[0].at_ms: 5000 is not within the safety phase"),
        ("target = \"primary\"", "target = \"c\"", "x.toml:26:10: faults[0].target: unknown host \"c\""),
        ("target = \"primary\"", "target = \"client:7\"", "x.toml:26:10: faults[0].target: client:7 does not exist"),
        ("kind = \"crash\"", "kind = \"crush\"", "x.toml:25:8: faults[0].kind: unknown variant `crush`"),
        ("level = \"ft\"", "level = \"max\"", "x.toml:18:9: protection.level: unknown variant `max`, expected `ft` or `ha`"),
        ("suspect_after_ms = 50", "suspect_after_ms = 5", "x.toml:21:20: protection.suspect_after_ms: must be more than heartbeat_ms"),
        ("name = \"x\"", "name = \"y\"", "x.toml:1:8: name: \"y\" must match the file name \"x\""),
        ("duration_ms = 1000\n", "duration_ms = 1000\nduration_ms = 2\n", "x.toml:4:1: duplicate key `duration_ms`"),
        ("[workload]", "[workload", "x.toml:11:10: "),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "{from}");
        let text = GOOD.replacen(from, to, 1);
        let error = error_of(&text);
        assert!(
            error.contains(expected),
            "{from} -> {to}:\n  got      {error}\n  expected {expected}"
        );
    }
}

#[test]
fn broken_faults_name_their_field() {
    let fault = |body: &str| format!("{GOOD}\n[[faults]]\nat_ms = 10\n{body}\n");
    let cases: &[(&str, &str)] = &[
        (
            "kind = \"loss\"\nbetween = [\"primary\", \"backup\"]\nrate = 1.5",
            "x.toml:32:8: faults[1].rate: rate 1.5 is not within 0.0..=1.0",
        ),
        (
            "kind = \"loss\"\nbetween = [\"primary\", \"primary\"]\nrate = 0.5",
            "x.toml:31:11: faults[1].between: a link joins two different ends",
        ),
        (
            "kind = \"partition\"\nbetween = [\"primary\", \"z\"]",
            "x.toml:31:23: faults[1].between[1]: unknown host \"z\"",
        ),
        (
            "kind = \"disk_eio\"\ntarget = \"primary\"",
            "faults[1].rate: disk_eio needs exactly one of rate and after_writes",
        ),
        (
            "kind = \"disk_eio\"\ntarget = \"witness\"\nrate = 0.1",
            "x.toml:31:10: faults[1].target: witness has no disk",
        ),
        (
            "kind = \"vcpu_stall\"\ntarget = \"a\"\nvcpu = 2\nms = 5",
            "x.toml:32:8: faults[1].vcpu: vCPU 2 does not exist",
        ),
        (
            "kind = \"pause\"\ntarget = \"backup\"",
            "faults[1].duration_ms: a pause needs duration_ms",
        ),
        (
            "duration_ms = 5\nkind = \"crash\"\ntarget = \"a\"",
            "x.toml:30:15: faults[1].duration_ms: crash lasts its restart_after_ms: drop duration_ms",
        ),
        (
            "kind = \"isolate\"\ntarget = \"Primary\"",
            "x.toml:31:10: faults[1].target: target: host name \"Primary\" must be",
        ),
        (
            "kind = \"crash\"\ntarget = \"backup\"\nrestart = 5",
            "x.toml:32:11: faults[1].restart: unknown field `restart`",
        ),
    ];
    for (body, expected) in cases {
        let error = error_of(&fault(body));
        assert!(
            error.contains(expected),
            "{body}:\n  got      {error}\n  expected {expected}"
        );
    }
}

#[test]
fn broken_suites_name_their_field() {
    let suite = |text: &str| {
        parse_suite(Path::new("s.toml"), text, Some("s"))
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let good = "name = \"s\"\ndescription = \"d\"\nscenarios = \"all\"\nseeds = 3\n";
    parse_suite(Path::new("s.toml"), good, Some("s")).unwrap();
    let error = suite(&good.replace("seeds = 3", "seeds = 0"));
    assert!(
        error.starts_with("s.toml:4:9: seeds: expected a count"),
        "{error}"
    );
    let error = suite(&good.replace("\"all\"", "\"some\""));
    assert!(
        error.starts_with("s.toml:3:13: scenarios: expected \"all\""),
        "{error}"
    );
    let error = suite(&good.replace("seeds = 3", "seed = 3"));
    assert!(
        error.starts_with("s.toml:4:8: seed: unknown field `seed`"),
        "{error}"
    );
}

/// Applies byte-level edits (insert, delete, replace, duplicate a line) at
/// positions chosen by the test's input.
fn mutate(text: &str, edits: &[(u16, u8, u8)]) -> String {
    let alphabet = b"=[]{}\"'#.,:-_ \n0123456789aekmnprstuvxz\\";
    let mut bytes = text.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        let at = usize::from(pos) % (bytes.len() + 1);
        let b = alphabet[usize::from(byte) % alphabet.len()];
        match op % 4 {
            0 => bytes.insert(at, b),
            1 if at < bytes.len() => {
                bytes.remove(at);
            }
            2 if at < bytes.len() => bytes[at] = b,
            _ => {
                let start = bytes[..at]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let end = bytes[at..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |i| at + i);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, [b"\n".as_slice(), &line].concat());
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn judged_without_panic(text: &str) -> bool {
    let lines = text.lines().count() + 1;
    match parse_scenario(Path::new("q.toml"), text, Some("x")) {
        Ok(scenario) => {
            // Whatever was accepted must draw its faults without panicking.
            let _ = scenario.fault_schedule(1);
            true
        }
        Err(e) => e.line >= 1 && e.line <= lines && e.column >= 1,
    }
}

#[test]
fn no_input_panics_the_parser() {
    fn mutated(edits: Vec<(u16, u8, u8)>) -> bool {
        judged_without_panic(&mutate(GOOD, &edits))
    }
    fn swarm_mutated(edits: Vec<(u16, u8, u8)>) -> bool {
        let text = std::fs::read_to_string(dir().join("swarm.toml"))
            .unwrap()
            .replace("\"swarm\"", "\"x\"");
        judged_without_panic(&mutate(&text, &edits))
    }
    fn arbitrary(text: String) -> bool {
        judged_without_panic(&text)
    }
    let mut qc = quickcheck::QuickCheck::new().tests(2_000);
    qc.quickcheck(mutated as fn(Vec<(u16, u8, u8)>) -> bool);
    qc.quickcheck(swarm_mutated as fn(Vec<(u16, u8, u8)>) -> bool);
    qc.quickcheck(arbitrary as fn(String) -> bool);
}

#[test]
fn a_mutation_reports_a_line_within_the_file() {
    // One edit that makes the file wrong, whose line we know.
    let text = mutate(GOOD, &[(GOOD.find("10\n").unwrap() as u16, 2, 5)]);
    assert!(text.contains("requests = \"0"), "{text}");
    let error = error_of(&text);
    assert!(error.starts_with("x.toml:13:"), "{error}");
}

#[test]
fn a_directory_with_a_wrong_reference_names_the_suite_file() {
    let dir = std::env::temp_dir().join(format!("lockstep-scenarios-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("suites")).unwrap();
    std::fs::write(dir.join("x.toml"), GOOD).unwrap();
    let suite = "name = \"s\"\ndescription = \"d\"\nscenarios = [\"x\", \"y\"]\nseeds = 2\n";
    std::fs::write(dir.join("suites/s.toml"), suite).unwrap();
    let error = load_dir(&dir).unwrap_err().to_string();
    assert!(
        error.ends_with("suites/s.toml:3:19: scenarios[1]: no scenario \"y\" in the directory"),
        "{error}"
    );
    std::fs::write(dir.join("suites/s.toml"), suite.replace(", \"y\"", "")).unwrap();
    let regressions = "[[regressions]]\nscenario = \"z\"\nseed = 1\nnote = \"n\"\n";
    std::fs::write(dir.join("regressions.toml"), regressions).unwrap();
    let error = load_dir(&dir).unwrap_err().to_string();
    assert!(
        error.ends_with("regressions.toml:2:12: regressions[0].scenario: no scenario \"z\""),
        "{error}"
    );
    std::fs::write(
        dir.join("regressions.toml"),
        regressions.replace("\"z\"", "\"x\""),
    )
    .unwrap();
    let catalogue = load_dir(&dir).unwrap();
    let runs: Vec<(String, u64)> = catalogue.suites["s"]
        .runs(&catalogue)
        .map(|r| (r.scenario.name.clone(), r.seed))
        .collect();
    assert_eq!(
        runs,
        vec![("x".into(), 1), ("x".into(), 0), ("x".into(), 1)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn no_input_panics_the_suite_and_regression_parsers() {
    fn suite(edits: Vec<(u16, u8, u8)>) -> bool {
        let text = std::fs::read_to_string(dir().join("suites/smoke.toml")).unwrap();
        let text = mutate(&text, &edits);
        match parse_suite(Path::new("s.toml"), &text, None) {
            Ok(_) => true,
            Err(e) => e.line >= 1 && e.line <= text.lines().count() + 1,
        }
    }
    fn regressions(edits: Vec<(u16, u8, u8)>) -> bool {
        let good = "[[regressions]]\nscenario = \"x\"\nseed = 12\nnote = \"n\"\n";
        let text = mutate(good, &edits);
        match faults::scenario::suite::parse_regressions(Path::new("r.toml"), &text) {
            Ok(_) => true,
            Err(e) => e.line >= 1 && e.line <= text.lines().count() + 1,
        }
    }
    let mut qc = quickcheck::QuickCheck::new().tests(1_000);
    qc.quickcheck(suite as fn(Vec<(u16, u8, u8)>) -> bool);
    qc.quickcheck(regressions as fn(Vec<(u16, u8, u8)>) -> bool);
}

#[test]
fn a_missing_file_is_named() {
    let error = faults::load_scenario(Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/x.toml: cannot read:"),
        "{error}"
    );
}

/// What the simulator cannot run, the validator refuses, naming the file,
/// line and field (the limits are the constants the simulator uses).
#[test]
fn what_the_simulator_cannot_run_is_refused() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "requests = 10",
            "requests = 9000",
            "x.toml:13:12: workload.requests: clients × requests must be at most 16384",
        ),
        (
            "accounts = 16",
            "accounts = 513",
            "x.toml:9:12: guest.accounts: must be 2..=512, got 513",
        ),
        (
            "at_ms = 500",
            "at_ms = [600, 400]",
            "x.toml:24:9: faults[0].at_ms: the window [600, 400] ends before it begins",
        ),
        (
            "at_ms = 500",
            "at_ms = [500, 1000]",
            "x.toml:24:9: faults[0].at_ms: 1000 is not within the safety phase",
        ),
        (
            "kind = \"crash\"\ntarget = \"primary\"",
            "kind = \"vcpu_stall\"\ntarget = \"primary\"\nvcpu = 0\nms = 501",
            "x.toml:28:6: faults[0].ms: a stall from 500 ms for 501 ms outlives the safety phase",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD.contains(from), "{from}");
        let error = error_of(&GOOD.replacen(from, to, 1));
        assert!(
            error.contains(expected),
            "{from} -> {to}:\n  got      {error}\n  expected {expected}"
        );
    }
    // At the limits, files are accepted.
    for (from, to) in [
        ("requests = 10", "requests = 8192"),
        ("accounts = 16", "accounts = 512"),
        ("at_ms = 500", "at_ms = [400, 999]"),
        (
            "kind = \"crash\"\ntarget = \"primary\"",
            "kind = \"vcpu_stall\"\ntarget = \"primary\"\nvcpu = 0\nms = 500",
        ),
    ] {
        let text = GOOD.replacen(from, to, 1);
        parse_scenario(Path::new("x.toml"), &text, Some("x"))
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    }
}

/// A window lets each seed place the fault anywhere in it, and only there.
#[test]
fn seeds_move_a_windowed_fault_within_its_window() {
    let text = GOOD.replacen("at_ms = 500", "at_ms = [200, 260]", 1);
    let scenario = parse_scenario(Path::new("x.toml"), &text, Some("x")).unwrap();
    let moments: std::collections::BTreeSet<u64> = (0..65)
        .map(|seed| {
            let faults = scenario.fault_schedule(seed);
            assert_eq!(faults.len(), 1);
            assert_eq!(faults[0].at_latest_ms, None, "resolved");
            assert_eq!(
                scenario.fault_schedule(seed),
                faults,
                "same seed, same moment"
            );
            faults[0].at_ms
        })
        .collect();
    assert!(
        moments.iter().all(|ms| (200..=260).contains(ms)),
        "{moments:?}"
    );
    assert!(moments.len() > 30, "65 seeds, many moments: {moments:?}");
}
