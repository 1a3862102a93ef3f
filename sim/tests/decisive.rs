//! The events a failed run's replay shows as decisive: chosen by their
//! kind, they include the faults (a pause among them) and fail-stops.

use sim::trace::{decisive, Kind, Side};
use sim::{run, DiskFault, Event, HostRef, RunSpec};

#[test]
fn a_pause_and_its_resume_are_decisive_and_name_the_host_they_struck() {
    let mut spec = RunSpec::baseline("pause", 2);
    spec.events = vec![
        (
            150,
            Event::Pause {
                host: HostRef::Primary,
                id: 0,
            },
        ),
        (400, Event::Resume(HostRef::Struck(0))),
    ];
    let outcome = run(&spec, true);
    let faults: Vec<(Side, Vec<String>)> = decisive(&outcome.trace, usize::MAX)
        .into_iter()
        .filter_map(|e| match &e.kind {
            Kind::Fault {
                fault: Some(0),
                side,
                on,
            } => Some((*side, on.clone())),
            _ => None,
        })
        .collect();
    let a = vec!["a".to_string()];
    assert_eq!(faults, [(Side::Begins, a.clone()), (Side::Ends, a)]);
    // The backup promoted meanwhile: a role change, decisive too.
    assert!(
        decisive(&outcome.trace, usize::MAX)
            .iter()
            .any(|e| e.host == "b" && e.kind == Kind::Role && e.at_ns > 150_000_000),
        "b's promotion is among the decisive events"
    );
}

#[test]
fn a_fail_stop_is_decisive() {
    let mut spec = RunSpec::baseline("fail-stop", 3);
    spec.events = vec![(
        150,
        Event::Disk {
            host: HostRef::Primary,
            fault: DiskFault::Eio {
                rate: Some(1.0),
                after_writes: None,
            },
            id: 0,
        },
    )];
    let outcome = run(&spec, true);
    let stops: Vec<_> = decisive(&outcome.trace, usize::MAX)
        .into_iter()
        .filter(|e| e.kind == Kind::FailStop)
        .collect();
    assert!(
        !stops.is_empty(),
        "a primary whose disk fails every I/O stops"
    );
    assert!(stops.iter().all(|e| e.host == "a"), "{stops:?}");
    // Frames and replies are not decisive.
    assert!(decisive(&outcome.trace, usize::MAX)
        .iter()
        .all(|e| !matches!(e.kind, Kind::Frame | Kind::Reply | Kind::Output)));
}
