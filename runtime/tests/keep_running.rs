//! vCPUs kept running between runs (a real host's daemon): on KVM they go
//! on computing after `run` returns, stop when the machine settles, end in
//! the state an uninterrupted run ends in, and a run ends early when its
//! waker is called.

mod common;

use std::time::{Duration, Instant};

use common::*;
use machine::guests::{compute, Guest};
use machine::layout::MEMORY_BYTES_MIN;
use machine::{Engine, Instructions, RunExit, Shape, VcpuId};

fn one_vcpu() -> Shape {
    Shape::new(1, MEMORY_BYTES_MIN).expect("valid")
}

/// Longest the test waits for a vCPU computing outside any run.
const PATIENCE: Duration = Duration::from_secs(120);

#[test]
fn kept_running_vcpus_compute_between_runs_and_end_as_an_uninterrupted_run() {
    if !kvm_or_skip("kept_running_vcpus_compute_between_runs_and_end_as_an_uninterrupted_run") {
        return;
    }
    // Milliseconds of work on a host core, seconds under an emulating
    // nested KVM: either way far more than the first run's microsecond.
    let iterations = 1_000_000;
    let image = Guest::Compute
        .image([iterations, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let mut machine = kvm(one_vcpu(), &image);
    machine.keep_running(true).expect("keeps running");
    assert_eq!(
        machine.run(Instructions(1_000)).expect("runs"),
        RunExit::BudgetSpent
    );
    assert!(
        machine.engine().vcpu_state(VcpuId(0)).is_err(),
        "a running vCPU's state is refused, not waited for"
    );

    // No run is under way: only a vCPU still in the guest writes the result.
    let mut result = [0u8; 8];
    let started = Instant::now();
    loop {
        machine
            .engine()
            .read_memory(machine::Gpa(compute::RESULTS), &mut result)
            .expect("in range");
        if result != [0; 8] {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the vCPU stopped when the run returned"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let expected = compute::expected(0, iterations);
    assert_eq!(u64::from_le_bytes(result), expected);
    // Its report on the done port waits for a run (or the settle) to serve it.
    assert_eq!(machine.bus().done()[0], None);
    machine.settle().expect("settles");
    assert_eq!(machine.bus().done()[0], Some(expected as u32));
    machine.keep_running(false).expect("stops keeping");
    run_to_idle(&mut machine, KVM_SLICE);

    let mut reference = kvm(one_vcpu(), &image);
    run_to_idle(&mut reference, KVM_SLICE);
    assert_same(
        &final_state(&mut machine),
        &final_state(&mut reference),
        "kept running",
    );
}

#[test]
fn a_waker_ends_the_run_under_way_and_a_wake_before_a_run_ends_it_at_once() {
    if !kvm_or_skip("a_waker_ends_the_run_under_way_and_a_wake_before_a_run_ends_it_at_once") {
        return;
    }
    // Zero iterations: the guest computes for ever.
    let image = Guest::Compute
        .image([0, 0, 0, 0, 0, 0, 0, 0])
        .expect("assembles");
    let mut machine = kvm(one_vcpu(), &image);
    machine.keep_running(true).expect("keeps running");
    let waker = machine.engine().waker().expect("KVM has a waker");
    // A budget the test would not outlive: only the waker ends this run.
    let forever = Instructions(PATIENCE.as_nanos() as u64 * 10);
    let wake_later = {
        let waker = waker.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
        })
    };
    assert_eq!(machine.run(forever).expect("runs"), RunExit::Woken);
    wake_later.join().expect("the waking thread ends");

    waker.wake();
    waker.wake();
    assert_eq!(
        machine.run(forever).expect("runs"),
        RunExit::Woken,
        "a wake while no run was under way ends the next one"
    );
    // Two wakes are one: the run after them goes its whole budget.
    assert_eq!(
        machine.run(Instructions(2_000_000)).expect("runs"),
        RunExit::BudgetSpent
    );
    machine.settle().expect("settles");
    let state = machine
        .engine()
        .vcpu_state(VcpuId(0))
        .expect("a settled vCPU");
    assert_eq!(state.run_state, machine::RunState::Running);
}
