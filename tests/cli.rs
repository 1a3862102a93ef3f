//! The `lockstep` binary as a user runs it.

mod support;

use support::lockstep;

#[test]
fn model_check_ft_passes_and_reports_states() {
    let (code, out, err) = lockstep(&["model-check", "--depth", "8", "--threads", "1"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("unique states explored:"), "{out}");
    assert!(out.contains("all properties hold"), "{out}");
    assert!(!out.contains("VIOLATED"), "{out}");
}

#[test]
fn model_check_ha_prints_the_s2_counterexample_and_fails() {
    let (code, out, _) = lockstep(&[
        "model-check",
        "--level",
        "ha",
        "--depth",
        "9",
        "--no-liveness",
    ]);
    assert_eq!(code, 1, "{out}");
    let s2 = out
        .lines()
        .find(|l| l.contains("S2:"))
        .expect("S2 reported");
    assert!(s2.contains("VIOLATED"), "{s2}");
    assert!(out.contains("counterexample"), "{out}");
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let (code, _, err) = lockstep(&["model-check", "--level", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown protection level"), "{err}");
    let (code, _, err) = lockstep(&["model-check", "--depth", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--depth must be at least 1"), "{err}");
}

fn scenarios_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios").to_string()
}

#[test]
fn smoke_suite_passes_writes_reports_and_replays_to_the_same_hash() {
    let out = std::env::temp_dir().join(format!("lockstep-smoke-{}", std::process::id()));
    let out_arg = out.display().to_string();
    let dir = scenarios_dir();
    let (code, stdout, stderr) = lockstep(&[
        "run",
        "--suite",
        "smoke",
        "--scenarios",
        &dir,
        "--out",
        &out_arg,
        "--jobs",
        "2",
    ]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // 15 suite runs plus the regressions kept in scenarios/regressions.toml.
    let planned: usize = stdout
        .split("suite smoke: ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the plan is printed");
    assert!(planned >= 15, "{stdout}");
    assert!(
        stdout.contains(&format!("{planned} runs: {planned} passed, 0 failed")),
        "{stdout}"
    );
    let jsonl = std::fs::read_to_string(out.join("results.jsonl")).expect("results.jsonl");
    assert_eq!(jsonl.lines().count(), planned);
    assert!(std::fs::read_to_string(out.join("junit.xml"))
        .expect("junit")
        .contains("<testcase"));
    assert!(std::fs::read_to_string(out.join("report.html"))
        .expect("html")
        .contains("<svg"));
    // Replaying a recorded seed gives the trace hash the suite recorded.
    let line = jsonl
        .lines()
        .find(|l| l.contains("primary-crash-mid-epoch"))
        .expect("a crash run");
    let hash = line
        .split("\"trace_hash\":\"0x")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("hash field");
    let seed = line
        .split("\"seed\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .expect("seed field");
    let trace = out.join("trace.jsonl").display().to_string();
    let (code, stdout, _) = lockstep(&[
        "replay",
        "--scenario",
        "primary-crash-mid-epoch",
        "--seed",
        seed,
        "--scenarios",
        &dir,
        "--trace",
        &trace,
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!("trace hash {hash}")),
        "suite recorded {hash}: {stdout}"
    );
    let events = std::fs::read_to_string(&trace).expect("trace written");
    assert!(events.lines().count() > 100 && events.contains("Crash { host: Primary"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn at_ha_the_smoke_suite_loses_replies_and_fails() {
    let out = std::env::temp_dir().join(format!("lockstep-smoke-ha-{}", std::process::id()));
    let out_arg = out.display().to_string();
    let dir = scenarios_dir();
    let (code, stdout, _) = lockstep(&[
        "run",
        "--suite",
        "smoke",
        "--level",
        "ha",
        "--scenarios",
        &dir,
        "--out",
        &out_arg,
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("violations of oracle 1 (replies)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("replay with: lockstep replay --scenario"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_broken_scenario_file_is_named_with_its_line() {
    let dir = std::env::temp_dir().join(format!("lockstep-broken-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("suites")).expect("mkdir");
    std::fs::write(
        dir.join("bad.toml"),
        "name = \"bad\"\ndescription = \"x\"\nduration_ms = \"soon\"\n",
    )
    .expect("write");
    let dir_arg = dir.display().to_string();
    let (code, _, stderr) = lockstep(&["run", "--suite", "smoke", "--scenarios", &dir_arg]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad.toml:3"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failing_seeds_are_recorded_and_then_run_first() {
    let dir = std::env::temp_dir().join(format!("lockstep-record-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("suites")).expect("mkdir");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for name in [
        "primary-crash-mid-epoch.toml",
        "baseline.toml",
        "regressions.toml",
    ] {
        std::fs::copy(source.join(name), dir.join(name)).expect("copy scenario");
    }
    std::fs::write(
        dir.join("suites/tiny.toml"),
        "name = \"tiny\"\ndescription = \"two scenarios\"\nscenarios = [\"baseline\", \"primary-crash-mid-epoch\"]\nseeds = 2\n",
    )
    .expect("suite");
    // The regression shipped in the repository names a scenario this
    // directory lacks: keep only the header.
    std::fs::write(dir.join("regressions.toml"), "# none yet\n").expect("regressions");
    let (d, out) = (
        dir.display().to_string(),
        dir.join("out").display().to_string(),
    );
    let (code, stdout, _) = lockstep(&[
        "run",
        "--suite",
        "tiny",
        "--level",
        "ha",
        "--scenarios",
        &d,
        "--out",
        &out,
        "--record-failures",
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("2 failing seeds added"), "{stdout}");
    let (code, stdout, _) = lockstep(&["run", "--suite", "tiny", "--scenarios", &d, "--out", &out]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("6 runs (2 regressions first)"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The results of a suite's directory, wall times set aside (they are the
/// only figures a rerun changes).
fn results_without_wall(dir: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("results.jsonl")).expect("results.jsonl");
    text.lines()
        .map(|line| {
            let mut value: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            value["wall_ms"] = serde_json::Value::from(0);
            value.to_string()
        })
        .collect()
}

fn junit_without_times(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("junit.xml")).expect("junit.xml");
    text.split(" time=\"")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once('"').map_or(part, |(_, rest)| rest)
            }
        })
        .collect()
}

#[test]
fn four_shards_merged_equal_the_unsharded_suite() {
    let root = std::env::temp_dir().join(format!("lockstep-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let dir = scenarios_dir();
    let run = |out: &std::path::Path, shard: Option<&str>| {
        let out_arg = out.display().to_string();
        let mut args = vec![
            "run",
            "--suite",
            "smoke",
            "--seeds",
            "2",
            "--scenarios",
            &dir,
            "--out",
            &out_arg,
        ];
        if let Some(shard) = shard {
            args.extend(["--shard", shard]);
        }
        let (code, stdout, stderr) = lockstep(&args);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        stdout
    };
    let whole = root.join("whole");
    run(&whole, None);
    let mut shard_dirs = Vec::new();
    let mut runs = 0;
    for k in 0..4 {
        let out = root.join(format!("shard-{k}"));
        let stdout = run(&out, Some(&format!("{k}/4")));
        assert!(stdout.contains(&format!("(shard {k}/4)")), "{stdout}");
        runs += std::fs::read_to_string(out.join("results.jsonl"))
            .unwrap()
            .lines()
            .count();
        shard_dirs.push(out.display().to_string());
    }
    let merged = root.join("merged");
    let merged_arg = merged.display().to_string();
    // Any order of the directories.
    let mut args = vec!["report", "merge", "--out", &merged_arg];
    args.extend(shard_dirs.iter().rev().map(String::as_str));
    let (code, stdout, stderr) = lockstep(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let expected = results_without_wall(&whole);
    assert_eq!(runs, expected.len(), "the shards split the runs");
    assert_eq!(results_without_wall(&merged), expected);
    assert_eq!(junit_without_times(&merged), junit_without_times(&whole));
    // A missing shard is refused, not merged into a smaller suite.
    let (code, _, stderr) = lockstep(&["report", "merge", "--out", &merged_arg, &shard_dirs[0]]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("give every shard of one suite once"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}
