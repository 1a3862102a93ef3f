//! `lockstep vm run` and `lockstep bench emu` as a user runs them.

mod support;

use support::lockstep;

fn line<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {out}"))
}

#[test]
fn vm_run_ledger_reports_and_replays() {
    let args = [
        "vm",
        "run",
        "--engine",
        "emu",
        "--guest",
        "ledger",
        "--vcpus",
        "4",
        "--seed",
        "7",
        "--requests",
        "500",
    ];
    let (code, out, err) = lockstep(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(line(&out, "requests served:"), "requests served:    500");
    assert!(
        line(&out, "ledger invariant:").contains("ok (money conserved"),
        "{out}"
    );
    assert!(line(&out, "guest MIPS:").len() > "guest MIPS:".len());
    let (_, again, _) = lockstep(&args);
    let hash = line(&out, "machine state hash:");
    assert_eq!(
        hash,
        line(&again, "machine state hash:"),
        "same seed, same hash"
    );
    let mut other = args;
    other[9] = "8";
    let (_, different, _) = lockstep(&other);
    assert_ne!(hash, line(&different, "machine state hash:"));
}

#[test]
fn vm_run_checks_the_other_guests() {
    let (code, out, _) = lockstep(&[
        "vm",
        "run",
        "--guest",
        "compute",
        "--vcpus",
        "2",
        "--iterations",
        "1000",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("(ok)").count(), 2, "{out}");
    let (code, out, _) = lockstep(&[
        "vm",
        "run",
        "--guest",
        "echo",
        "--vcpus",
        "2",
        "--requests",
        "50",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("packets echoed:     50"), "{out}");
    let (code, out, _) = lockstep(&[
        "vm",
        "run",
        "--guest",
        "dirtier",
        "--vcpus",
        "1",
        "--pages-per-ms",
        "8",
        "--duration-ms",
        "3",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dirty pages per ms: [8, 8, 8]"), "{out}");
}

#[test]
fn vm_run_rejects_bad_shapes_and_guests() {
    let (code, _, err) = lockstep(&["vm", "run", "--vcpus", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("vcpus must be 1..=8"), "{err}");
    let (code, _, err) = lockstep(&["vm", "run", "--guest", "nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown guest"), "{err}");
}

#[test]
fn bench_emu_prints_a_ratio_per_vcpu_count() {
    let (code, out, err) = lockstep(&[
        "bench",
        "emu",
        "--instructions",
        "2000000",
        "--vcpus",
        "1,2",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    for vcpus in ["1", "2"] {
        let row = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(vcpus))
            .unwrap_or_else(|| panic!("no row for {vcpus}: {out}"));
        let ratio: f64 = row
            .split_whitespace()
            .last()
            .and_then(|r| r.parse().ok())
            .expect("a ratio");
        assert!(ratio > 0.0, "{row}");
    }
}

#[test]
fn vm_run_on_kvm_serves_the_ledger_and_checks_it() {
    if std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIPPED: no usable /dev/kvm: vm_run_on_kvm_serves_the_ledger_and_checks_it did not run");
        return;
    }
    let (code, out, err) = lockstep(&[
        "vm",
        "run",
        "--engine",
        "kvm",
        "--guest",
        "ledger",
        "--vcpus",
        "2",
        "--requests",
        "200",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(line(&out, "requests served").contains("200"), "{out}");
    assert!(line(&out, "ledger invariant").contains("ok"), "{out}");
    assert!(line(&out, "KVM exits").contains("port I/O"), "{out}");
    let (code, out, err) = lockstep(&[
        "vm",
        "run",
        "--engine",
        "kvm",
        "--guest",
        "compute",
        "--vcpus",
        "2",
        "--iterations",
        "20000",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out.matches("(ok)").count(), 2, "{out}");
}
