//! The `lockstep` binary as a user runs it.

use std::process::Command;

fn lockstep(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .output()
        .expect("run lockstep");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
