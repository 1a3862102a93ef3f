//! The three report files, read back by parsers.

use std::path::PathBuf;

use faults::Level;
use quick_xml::events::Event;
use reports::{
    read_jsonl, replay_command, write_all, RunResult, Summary, TraceHash, Violation, ViolationKind,
};

fn run(scenario: &str, seed: u64, violations: Vec<Violation>) -> RunResult {
    RunResult {
        scenario: scenario.to_string(),
        seed,
        level: Level::Ft,
        passed: violations.is_empty(),
        violations,
        trace_hash: TraceHash(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        replay_command: replay_command(scenario, seed, Level::Ft),
        sim_ms: 5_000,
        wall_ms: 300 + seed,
        failovers: 1,
        failover_ms: vec![40.0 + seed as f64],
        epochs: 250,
        pause_ns_p50: 120_000 + seed * 1000,
        pause_ns_p99: 900_000,
        delta_bytes: 3 << 20,
        requests_sent: 80,
        replies_received: 80,
        vm_lost: false,
        vm_lost_reason: None,
        disk: reports::DiskFigures::default(),
    }
}

fn sample() -> Vec<RunResult> {
    let mut results = Vec::new();
    for seed in [3, 1, 2] {
        results.push(run("primary-crash-mid-epoch", seed, vec![]));
        results.push(run("baseline", seed, vec![]));
    }
    results.push(run(
        "oneway-partition",
        7,
        vec![
            Violation::new(
                ViolationKind::TwoReleasers,
                "hosts a and b both released output in generation 4 <&\"'>",
            ),
            Violation::new(
                ViolationKind::ReplyContradictsJournal,
                "reply to request 12 changed\u{0}\u{7} after failover",
            ),
        ],
    ));
    results
}

fn out_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockstep-reports-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn jsonl_reads_back_equal() {
    let dir = out_dir("jsonl");
    let results = sample();
    let (_, paths) = write_all(&dir, &results, 1_000).unwrap();
    let text = std::fs::read_to_string(&paths.jsonl).unwrap();
    assert_eq!(text.lines().count(), results.len());
    let back = read_jsonl(text.as_bytes()).unwrap();
    assert_eq!(back, results);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(
        first["trace_hash"],
        serde_json::json!(results[0].trace_hash.to_string())
    );
    assert_eq!(first["level"], "ft");
    let broken = format!("{text}{{\"scenario\": 1}}\n");
    let error = read_jsonl(broken.as_bytes()).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!("results line {}", results.len() + 1)),
        "{error}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_line_that_disagrees_with_itself_is_refused_with_its_number() {
    let lines: Vec<String> = sample()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    let last = lines.len() - 1;
    let mut value: serde_json::Value = serde_json::from_str(&lines[last]).unwrap();
    // The kind says oracle 2, the line says 3.
    value["violations"][0]["oracle"] = serde_json::json!(3);
    let mut edited = lines.clone();
    edited[last] = value.to_string();
    let error = read_jsonl(edited.join("\n").as_bytes()).unwrap_err();
    assert!(
        matches!(error, reports::ReportError::Inconsistent { line } if line == last as u64 + 1),
        "{error}"
    );
    // Passed, yet with violations.
    let mut value: serde_json::Value = serde_json::from_str(&lines[last]).unwrap();
    value["passed"] = serde_json::json!(true);
    edited[last] = value.to_string();
    assert!(read_jsonl(edited.join("\n").as_bytes()).is_err());
    // Unedited, the same lines read.
    assert_eq!(read_jsonl(lines.join("\n").as_bytes()).unwrap(), sample());
}

#[test]
fn junit_is_well_formed_with_one_testcase_per_run() {
    let dir = out_dir("junit");
    let results = sample();
    let (_, paths) = write_all(&dir, &results, 1_000).unwrap();
    let xml = std::fs::read_to_string(&paths.junit).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut failures, mut suites) = (0, 0, Vec::new());
    let mut failure_text = String::new();
    let mut in_failure = false;
    loop {
        match reader
            .read_event()
            .unwrap_or_else(|e| panic!("not well-formed: {e}\n{xml}"))
        {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testcase" => cases += 1,
                b"failure" => {
                    failures += 1;
                    in_failure = true;
                }
                b"testsuite" => {
                    let name = e.try_get_attribute("name").unwrap().unwrap();
                    suites.push(name.unescape_value().unwrap().into_owned());
                }
                _ => {}
            },
            Event::Text(t) if in_failure => failure_text.push_str(&t.unescape().unwrap()),
            Event::End(e) if e.name().as_ref() == b"failure" => in_failure = false,
            _ => {}
        }
    }
    assert_eq!(cases, results.len());
    assert_eq!(failures, 1);
    assert_eq!(
        suites,
        vec!["baseline", "oneway-partition", "primary-crash-mid-epoch"]
    );
    assert!(failure_text.contains("lockstep replay --scenario oneway-partition --seed 7"));
    assert!(
        failure_text.contains("generation 4 <&\"'>"),
        "{failure_text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn html_has_a_cell_per_run_and_an_svg_per_plot() {
    let dir = out_dir("html");
    let results = sample();
    let (_, paths) = write_all(&dir, &results, 1_000).unwrap();
    let html = std::fs::read_to_string(&paths.html).unwrap();
    assert_eq!(html.matches("class=\"run ").count(), results.len());
    assert_eq!(html.matches("class=\"run fail\"").count(), 1);
    assert_eq!(html.matches("<svg").count(), 4);
    assert_eq!(html.matches("</svg>").count(), 4);
    assert!(html.contains("lockstep replay --scenario oneway-partition --seed 7"));
    assert!(!html.contains("<&\"'>"), "messages are escaped");
    for outside in ["<script", "<link", "src=", "href=\"http"] {
        assert!(!html.contains(outside), "self-contained: {outside}");
    }
    // 3 scenarios × 4 seeds: one empty cell per seed a scenario did not run.
    assert_eq!(
        html.matches("class=\"none\"").count(),
        3 * 4 - results.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn summary_counts_rates_and_replays() {
    let results = sample();
    let summary = Summary::of(&results, 30_000);
    assert_eq!((summary.runs, summary.passed, summary.failed), (7, 6, 1));
    assert!((summary.runs_per_minute - 14.0).abs() < 1e-9);
    assert!((summary.sim_to_wall - 35_000.0 / 30_000.0).abs() < 1e-9);
    assert!(!summary.all_passed());
    let text = summary.to_string();
    assert!(
        text.starts_with("7 runs: 6 passed, 1 failed in 30.0 s wall (14.0 runs/min)"),
        "{text}"
    );
    assert!(text.contains(
        "FAILED, replay with: lockstep replay --scenario oneway-partition --seed 7 --level ft"
    ));
    assert_eq!(summary.violations, [1, 1, 0, 0, 0]);
    assert!(
        text.contains("1 violations of oracle 2 (one-releaser)\n"),
        "{text}"
    );
    assert!(!text.contains("disk faults"), "no disk faults, no line");
    assert!(Summary::of(&[], 0).to_string().starts_with("0 runs"));
    let mut with_disk = sample();
    for (k, r) in with_disk.iter_mut().enumerate().take(2) {
        r.disk = reports::DiskFigures {
            injected: 3 + k as u64,
            repaired: 2,
            corrupt: 0,
            block_resyncs: 1,
        };
    }
    let text = Summary::of(&with_disk, 30_000).to_string();
    assert!(
        text.contains("disk faults: 7 injected, 4 repaired by checksum, 0 blocks given up as corrupt; 2 block-level resyncs\n"),
        "{text}"
    );
}

#[test]
fn any_message_makes_well_formed_xml() {
    fn prop(message: String) -> bool {
        let results = vec![run(
            "s",
            1,
            vec![Violation::new(ViolationKind::WrongDecision, message)],
        )];
        let mut xml = Vec::new();
        reports::write_junit(&mut xml, &results).unwrap();
        let mut reader = quick_xml::Reader::from_reader(xml.as_slice());
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Eof) => return true,
                Ok(Event::Text(t)) => {
                    if t.unescape().is_err() {
                        return false;
                    }
                }
                Ok(_) => {}
                Err(_) => return false,
            }
            buf.clear();
        }
    }
    quickcheck::QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(String) -> bool);
}
