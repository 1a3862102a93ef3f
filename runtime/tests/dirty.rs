//! Dirty tracking on KVM: pages the guest writes (KVM's dirty log) and
//! pages the host writes into guest memory both show up, once.

mod common;

use common::*;
use machine::guests::Guest;
use machine::layout::{GUEST_DATA, MEMORY_BYTES_MIN};
use machine::{Engine, Gpa, Instructions, PageIndex, RunState, Shape, VcpuId, PAGE_SIZE};

/// The dirtier's period: long against how late a vCPU may stop.
const PERIOD_NS: u64 = 100_000_000;

#[test]
fn guest_and_host_writes_are_dirty() {
    if !kvm_or_skip("guest_and_host_writes_are_dirty") {
        return;
    }
    let (pages_per_period, region_pages) = (12, 40);
    let image = Guest::Dirtier
        .image([pages_per_period, region_pages, PERIOD_NS, 0, 0, 0, 0, 0])
        .expect("assembles");
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let mut machine = kvm(shape, &image);
    let first = GUEST_DATA.page().0;
    assert!(machine
        .engine_mut()
        .take_dirty_pages()
        .expect("log")
        .is_empty());

    // One period: the guest writes its first 12 pages, then sleeps.
    for _ in 0..RUNS_MAX {
        machine.run(Instructions(500_000)).expect("runs");
        let state = machine.engine().vcpu_state(VcpuId(0)).expect("state");
        if state.run_state == RunState::Halted {
            break;
        }
    }
    let host_page = PageIndex(first + 200);
    machine
        .engine_mut()
        .write_memory(host_page.gpa(), &[0xab; 3])
        .expect("in range");
    let straddling = Gpa(u64::from(first + 300) * PAGE_SIZE + PAGE_SIZE - 2);
    machine
        .engine_mut()
        .write_memory(straddling, &[1, 2, 3, 4])
        .expect("in range");
    let dirty = machine.engine_mut().take_dirty_pages().expect("log");
    for k in 0..pages_per_period as u32 {
        assert!(
            dirty.contains(&PageIndex(first + k)),
            "guest page {k} missing"
        );
    }
    assert!(!dirty.contains(&PageIndex(first + pages_per_period as u32)));
    for page in [host_page, PageIndex(first + 300), PageIndex(first + 301)] {
        assert!(dirty.contains(&page), "host page {} missing", page.0);
    }
    assert!(dirty.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");

    // Nothing ran: nothing new is dirty.
    assert!(machine
        .engine_mut()
        .take_dirty_pages()
        .expect("log")
        .is_empty());

    // Later periods write the next pages of the region. Stopping a vCPU
    // can overshoot a run by milliseconds on a loaded host, so run until
    // the guest got there, within a bound.
    let next = PageIndex(first + pages_per_period as u32);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..RUNS_MAX {
        machine.run(Instructions(PERIOD_NS)).expect("runs");
        seen.extend(machine.engine_mut().take_dirty_pages().expect("log"));
        if seen.contains(&next) {
            break;
        }
    }
    assert!(seen.contains(&next), "second period's first page: {seen:?}");
    let now = machine.engine().now().0;
    assert!(
        now >= PERIOD_NS,
        "the guest slept a period of guest time: {now}"
    );
    assert!(!seen.contains(&host_page), "host page dirty only once");
}
