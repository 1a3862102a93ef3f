//! Faults as the scenario wrote them: each end reaches the host its
//! beginning struck, client-link faults strike requests and replies, and a
//! run that panics is judged, not lost.

use faults::load_dir;
use sim::trace::{Kind, Side};
use sim::{run, run_catching, Endpoint, Event, HostRef, LinkFaultKind, RunSpec};
use std::collections::BTreeMap;
use std::path::Path;

/// The hosts each numbered fault's beginning and end were traced on, by
/// fault number.
type FaultHosts = BTreeMap<u32, Vec<String>>;

fn fault_hosts(outcome: &sim::RunOutcome) -> (FaultHosts, FaultHosts) {
    let (mut began, mut ended) = (BTreeMap::new(), BTreeMap::new());
    for event in &outcome.trace {
        if let Kind::Fault {
            fault: Some(id),
            side,
            on,
        } = &event.kind
        {
            let side = match side {
                Side::Begins => &mut began,
                Side::Ends => &mut ended,
            };
            side.insert(*id, on.clone());
        }
    }
    (began, ended)
}

#[test]
fn a_fault_s_end_reaches_the_host_its_beginning_struck_under_overlapping_faults() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let catalogue = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let scenario = &catalogue.scenarios["overlapping-host-faults"];
    for seed in 0..4 {
        let spec = sim::scenario::resolve(scenario, seed, None).unwrap();
        let outcome = run(&spec, true);
        assert!(outcome.passed(), "seed {seed}: {:#?}", outcome.violations);
        let (began, ended) = fault_hosts(&outcome);
        // The pause struck the first primary, the NIC failure the one that
        // promoted meanwhile: two hosts, overlapping.
        assert_eq!(began.len(), 2, "seed {seed}: {began:?}");
        assert_ne!(began[&0], began[&1], "seed {seed}: {began:?}");
        assert_eq!(ended, began, "seed {seed}: every end on its own host");
    }
}

#[test]
fn a_repair_and_a_link_heal_are_traced_on_the_hosts_their_faults_began_on() {
    let mut spec = RunSpec::baseline("repairs", 2);
    spec.events = vec![
        (
            150,
            Event::Partition {
                id: 0,
                from: Endpoint::Host(HostRef::Backup),
                to: Endpoint::Witness,
                oneway: false,
            },
        ),
        (
            160,
            Event::Link {
                id: 1,
                from: Endpoint::Client(1),
                to: Endpoint::Host(HostRef::Primary),
                fault: LinkFaultKind::Loss(0.3),
            },
        ),
        (
            170,
            Event::Isolate {
                endpoint: Endpoint::Client(0),
                id: 2,
            },
        ),
        (300, Event::Repair { id: 0 }),
        (310, Event::LinkHeal { id: 1 }),
        (320, Event::Repair { id: 2 }),
    ];
    let outcome = run(&spec, true);
    assert!(outcome.passed(), "{:#?}", outcome.violations);
    let (began, ended) = fault_hosts(&outcome);
    let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(began[&0], names(&["b", "witness"]));
    assert_eq!(began[&1], names(&["client1", "a"]));
    assert_eq!(began[&2], names(&["client0"]));
    assert_eq!(ended, began, "every end names the hosts its fault began on");
}

fn client_replies(outcome: &sim::RunOutcome, client: &str) -> Vec<u64> {
    outcome
        .trace
        .iter()
        .filter(|e| e.host == client && e.kind == Kind::Reply)
        .map(|e| e.at_ns / 1_000_000)
        .collect()
}

#[test]
fn a_lossy_client_link_loses_requests_and_replies() {
    let mut spec = RunSpec::baseline("client-link-loss", 1);
    spec.events = vec![
        // Acks take 10 ms each way: every reply waits at least 20 ms for
        // its release, so replies to requests that came before the cut
        // leave during it (a guest idle between requests would otherwise
        // have its replies out within a millisecond or two).
        (
            0,
            Event::Link {
                id: 1,
                from: Endpoint::Host(HostRef::A),
                to: Endpoint::Host(HostRef::B),
                fault: LinkFaultKind::Delay { ms: 10 },
            },
        ),
        (
            150,
            Event::Link {
                id: 0,
                from: Endpoint::Client(0),
                to: Endpoint::Host(HostRef::Primary),
                fault: LinkFaultKind::Loss(1.0),
            },
        ),
        (450, Event::LinkHeal { id: 0 }),
    ];
    let outcome = run(&spec, true);
    assert!(outcome.passed(), "{:#?}", outcome.violations);
    let cut = |ms: &u64| (152..450).contains(ms);
    let client0 = client_replies(&outcome, "client0");
    let client1 = client_replies(&outcome, "client1");
    assert!(
        !client0.iter().any(cut),
        "client 0 got replies through a dead link: {client0:?}"
    );
    assert!(
        client1.iter().any(cut),
        "client 1 is served meanwhile: {client1:?}"
    );
    assert!(
        client0.iter().any(|ms| *ms >= 450),
        "client 0 is served after the heal"
    );
    // Both ways: the client's requests and the primary's replies are lost,
    // each traced when it was lost.
    for from in ["client0", "a"] {
        let lost: Vec<u64> = outcome
            .trace
            .iter()
            .filter(|e| e.kind == Kind::Lost && e.host == from)
            .map(|e| e.at_ns / 1_000_000)
            .collect();
        assert!(!lost.is_empty(), "{from} lost nothing");
        assert!(
            lost.iter().all(|ms| (150..450).contains(ms)),
            "{from}: {lost:?}"
        );
    }
}

#[test]
fn a_panicking_run_is_a_violation_with_its_replay_line_and_the_reports_are_written() {
    // More requests than the reply table holds: the validator refuses such
    // a file, so only a hand-made spec gets here, and the run's world
    // asserts (outside any simulated host, which turmoil would catch).
    let mut broken = RunSpec::baseline("baseline", 7);
    broken.requests_per_client = 1_000_000;
    let fine = RunSpec::baseline("baseline", 8);
    // As a suite worker does: one run after another on one thread.
    let outcomes: Vec<_> = [&broken, &fine]
        .iter()
        .map(|spec| run_catching(spec, false))
        .collect();
    assert_eq!(
        outcomes[0].violations.len(),
        1,
        "{:?}",
        outcomes[0].violations
    );
    let violation = &outcomes[0].violations[0];
    assert_eq!(violation.kind, sim::ViolationKind::RunPanicked);
    assert!(
        violation
            .message
            .contains("the run panicked: every id has its own slot in the reply table"),
        "{violation:?}"
    );
    assert!(
        outcomes[1].passed(),
        "the next run on the thread is unharmed: {:?}",
        outcomes[1].violations
    );
    let results: Vec<_> = outcomes
        .iter()
        .map(|o| sim::report::to_result(o, 1))
        .collect();
    assert!(!results[0].passed);
    assert_eq!(results[0].seed, 7);
    assert!(results[0]
        .replay_command
        .contains("--scenario baseline --seed 7"));
    let dir = std::env::temp_dir().join(format!("lockstep-panic-{}", std::process::id()));
    let (summary, paths) = reports::write_all(&dir, &results, 10).expect("reports written");
    assert_eq!((summary.runs, summary.failed), (2, 1));
    let jsonl = std::fs::read_to_string(&paths.jsonl).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    assert!(jsonl.contains("the run panicked"), "{jsonl}");
    let read = reports::read_jsonl(jsonl.as_bytes()).expect("results read back");
    assert_eq!(read[0].violations[0].kind, sim::ViolationKind::RunPanicked);
    assert!(std::fs::read_to_string(&paths.junit)
        .unwrap()
        .contains("the run panicked"));
    assert!(paths.html.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_lost_vm_is_kept_in_the_results_with_its_reason() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let catalogue = load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let scenario = &catalogue.scenarios["lone-primary-dies"];
    let spec = sim::scenario::resolve(scenario, 0, None).unwrap();
    let outcome = run(&spec, false);
    assert!(outcome.passed(), "{:#?}", outcome.violations);
    let reason = outcome
        .vm_lost
        .clone()
        .expect("the lone primary's death loses the VM");
    let result = sim::report::to_result(&outcome, 1);
    assert!(result.vm_lost);
    assert_eq!(result.vm_lost_reason.as_deref(), Some(reason.as_str()));
    assert!(reason.starts_with("no host holds the VM"), "{reason}");
    let line = serde_json::to_string(&result).unwrap();
    let back: reports::RunResult = serde_json::from_str(&line).unwrap();
    assert_eq!(back.vm_lost_reason, Some(reason));
    // A run that kept its VM writes no reason at all.
    let kept = sim::report::to_result(&run(&RunSpec::baseline("baseline", 1), false), 1);
    assert_eq!(kept.vm_lost_reason, None);
    assert!(!serde_json::to_string(&kept)
        .unwrap()
        .contains("vm_lost_reason"));
}
