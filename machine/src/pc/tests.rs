//! The platform through its engine-facing interface: MMIO of the APIC
//! pages, MSRs, time, interrupts, the UART's ports, save and restore.

use super::lapic::{esr, reg, MSR_APIC_BASE, MSR_TSC_DEADLINE};
use super::*;
use quickcheck::{QuickCheck, TestResult};

fn ctx(vcpu: u16, now: u64) -> IoContext {
    IoContext {
        vcpu: VcpuId(vcpu),
        now: GuestNs(now),
    }
}

fn write(pc: &mut Pc, vcpu: u16, now: u64, offset: u32, value: u32) {
    let gpa = Gpa(APIC_BASE_DEFAULT + u64::from(offset));
    assert!(pc.mmio_write(ctx(vcpu, now), gpa, &value.to_le_bytes()));
}

fn read(pc: &mut Pc, vcpu: u16, now: u64, offset: u32) -> u32 {
    let mut data = [0u8; 4];
    let gpa = Gpa(APIC_BASE_DEFAULT + u64::from(offset));
    assert!(pc.mmio_read(ctx(vcpu, now), gpa, &mut data));
    u32::from_le_bytes(data)
}

fn enable(pc: &mut Pc, vcpu: u16) {
    write(pc, vcpu, 0, reg::SVR, 0x1ff);
}

/// Sends an IPI from `vcpu`: ICR high, then low.
fn ipi(pc: &mut Pc, vcpu: u16, low: u32, dest: u8) {
    write(pc, vcpu, 0, reg::ICR_HIGH, u32::from(dest) << 24);
    write(pc, vcpu, 0, reg::ICR_LOW, low);
}

fn ioapic_write(pc: &mut Pc, index: u32, value: u32) {
    let window = |offset: u64| Gpa(IOAPIC_BASE + offset);
    assert!(pc.mmio_write(ctx(0, 0), window(0), &index.to_le_bytes()));
    assert!(pc.mmio_write(ctx(0, 0), window(0x10), &value.to_le_bytes()));
}

fn route(pc: &mut Pc, pin: u32, low: u32, dest: u8) {
    ioapic_write(pc, 0x11 + 2 * pin, u32::from(dest) << 24);
    ioapic_write(pc, 0x10 + 2 * pin, low);
}

fn irr(pc: &Pc, vcpu: u16, vector: u8) -> bool {
    pc.lapic(VcpuId(vcpu)).irr().contains(Vector(vector))
}

fn actions(pc: &mut Pc) -> Vec<PcAction> {
    std::iter::from_fn(|| pc.poll_action()).collect()
}

#[test]
fn power_up_registers_read_as_the_sdm_gives_them() {
    let mut pc = Pc::new(2, Startup::Running);
    assert_eq!(read(&mut pc, 1, 0, reg::ID), 1 << 24);
    assert_eq!(read(&mut pc, 0, 0, reg::VERSION), 0x0005_0014);
    assert_eq!(read(&mut pc, 0, 0, reg::SVR), 0xff, "software-disabled");
    assert_eq!(read(&mut pc, 0, 0, reg::DFR), u32::MAX, "flat model");
    for lvt in (reg::LVT_TIMER..=reg::LVT_ERROR).step_by(16) {
        assert_eq!(read(&mut pc, 0, 0, lvt), 0x1_0000, "LVT {lvt:#x} masked");
    }
    assert_eq!(read(&mut pc, 0, 0, reg::TPR), 0);
    let base = |pc: &mut Pc, v| pc.msr_read(ctx(v, 0), MSR_APIC_BASE);
    assert_eq!(base(&mut pc, 0), Some(0xfee0_0900), "enabled, BSP");
    assert_eq!(base(&mut pc, 1), Some(0xfee0_0800), "enabled, AP");
}

#[test]
fn writable_bits_stick_and_read_only_registers_ignore_writes() {
    let mut pc = Pc::new(1, Startup::Running);
    write(&mut pc, 0, 0, reg::ID, 0x0700_0000);
    assert_eq!(read(&mut pc, 0, 0, reg::ID), 0x0700_0000);
    write(&mut pc, 0, 0, reg::TPR, 0xffff_ff35);
    assert_eq!(read(&mut pc, 0, 0, reg::TPR), 0x35);
    write(&mut pc, 0, 0, reg::LDR, 0xffff_ffff);
    assert_eq!(read(&mut pc, 0, 0, reg::LDR), 0xff00_0000);
    write(&mut pc, 0, 0, reg::DFR, 0);
    assert_eq!(read(&mut pc, 0, 0, reg::DFR), 0x0fff_ffff, "cluster model");
    write(&mut pc, 0, 0, reg::SVR, 0xffff_ffff);
    assert_eq!(
        read(&mut pc, 0, 0, reg::SVR),
        0x3ff,
        "no EOI-broadcast suppression bit"
    );
    write(&mut pc, 0, 0, reg::LVT_LINT0, 0xffff_ffff);
    assert_eq!(
        read(&mut pc, 0, 0, reg::LVT_LINT0),
        0x0001_a7ff,
        "remote IRR, status RO"
    );
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0xffff_ffff);
    assert_eq!(read(&mut pc, 0, 0, reg::LVT_TIMER), 0x0007_00ff);
    for ro in [
        reg::VERSION,
        reg::PPR,
        reg::IRR,
        reg::ISR + 0x70,
        reg::TIMER_CURRENT,
    ] {
        write(&mut pc, 0, 0, ro, 0xffff_ffff);
    }
    assert_eq!(read(&mut pc, 0, 0, reg::VERSION), 0x0005_0014);
    assert_eq!(read(&mut pc, 0, 0, reg::IRR), 0);
    assert_eq!(read(&mut pc, 0, 0, reg::ISR + 0x70), 0);
    assert_eq!(read(&mut pc, 0, 0, reg::ESR), 0, "no error yet");
}

#[test]
fn a_reserved_register_sets_esr_once_latched_by_a_write() {
    let mut pc = Pc::new(1, Startup::Running);
    assert_eq!(
        read(&mut pc, 0, 0, 0x2f0),
        0,
        "no CMCI entry (six LVT entries)"
    );
    assert_eq!(read(&mut pc, 0, 0, reg::ESR), 0, "latched only by a write");
    write(&mut pc, 0, 0, reg::ESR, 0);
    assert_eq!(read(&mut pc, 0, 0, reg::ESR), esr::ILLEGAL_REGISTER);
    write(&mut pc, 0, 0, reg::ESR, 0);
    assert_eq!(
        read(&mut pc, 0, 0, reg::ESR),
        0,
        "the next write latches no new error"
    );
}

#[test]
fn a_software_disabled_apic_keeps_its_lvt_masked_and_drops_fixed_interrupts() {
    let mut pc = Pc::new(1, Startup::Running);
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x40);
    assert_eq!(
        read(&mut pc, 0, 0, reg::LVT_TIMER),
        0x1_0040,
        "mask stays set"
    );
    ipi(&mut pc, 0, 0x4_0050, 0); // self
    assert!(!irr(&pc, 0, 0x50));
    enable(&mut pc, 0);
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x40);
    assert_eq!(read(&mut pc, 0, 0, reg::LVT_TIMER), 0x40);
    ipi(&mut pc, 0, 0x4_0050, 0);
    assert!(irr(&pc, 0, 0x50));
    write(&mut pc, 0, 0, reg::SVR, 0xff);
    assert_eq!(
        read(&mut pc, 0, 0, reg::LVT_TIMER),
        0x1_0040,
        "disabling masks"
    );
    assert_eq!(pc.pending(VcpuId(0)), None, "held, not offered");
}

#[test]
fn the_highest_request_above_the_processor_priority_is_pending() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    let v0 = VcpuId(0);
    for vector in [0x31, 0x45] {
        ipi(&mut pc, 0, 0x4_0000 | vector, 0);
    }
    assert_eq!(pc.pending(v0), Some(Vector(0x45)));
    assert_eq!(pc.acknowledge(v0), Some(Vector(0x45)));
    assert!(pc.lapic(v0).isr().contains(Vector(0x45)));
    assert!(!irr(&pc, 0, 0x45), "IRR to ISR");
    assert_eq!(read(&mut pc, 0, 0, reg::PPR), 0x40);
    assert_eq!(
        pc.pending(v0),
        None,
        "0x31's class is below the one in service"
    );
    ipi(&mut pc, 0, 0x4_0052, 0);
    assert_eq!(
        pc.pending(v0),
        Some(Vector(0x52)),
        "a higher class preempts"
    );
    write(&mut pc, 0, 0, reg::TPR, 0x60);
    assert_eq!(read(&mut pc, 0, 0, reg::PPR), 0x60, "TPR above ISR's class");
    assert_eq!(pc.pending(v0), None);
    assert_eq!(pc.acknowledge(v0), None, "nothing to take");
    write(&mut pc, 0, 0, reg::TPR, 0x50);
    assert_eq!(pc.pending(v0), None, "a class equal to PPR's is held");
    write(&mut pc, 0, 0, reg::TPR, 0x4c);
    assert_eq!(
        read(&mut pc, 0, 0, reg::PPR),
        0x4c,
        "TPR's class equals ISR's: PPR is TPR"
    );
    write(&mut pc, 0, 0, reg::TPR, 0x3f);
    assert_eq!(
        read(&mut pc, 0, 0, reg::PPR),
        0x40,
        "below ISR's class: ISR's class"
    );
    assert_eq!(
        read(&mut pc, 0, 0, reg::APR),
        0x50,
        "arbitration: the highest request's class"
    );
    write(&mut pc, 0, 0, reg::TPR, 0);
    assert_eq!(pc.acknowledge(v0), Some(Vector(0x52)));
    // EOI ends the highest in service first.
    write(&mut pc, 0, 0, reg::EOI, 0);
    assert!(!pc.lapic(v0).isr().contains(Vector(0x52)));
    assert!(pc.lapic(v0).isr().contains(Vector(0x45)));
    assert_eq!(pc.pending(v0), None, "0x31 still below 0x45");
    write(&mut pc, 0, 0, reg::EOI, 0);
    assert_eq!(pc.pending(v0), Some(Vector(0x31)));
    assert_eq!(read(&mut pc, 0, 0, reg::ISR + 0x40), 0);
    assert_eq!(
        read(&mut pc, 0, 0, reg::IRR + 0x10),
        1 << 17,
        "0x31 in IRR 1"
    );
}

#[test]
fn a_vector_taken_moves_to_isr_even_after_a_higher_one_arrives() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    ipi(&mut pc, 0, 0x4_0030, 0);
    let offered = pc.pending(VcpuId(0)).expect("pending");
    ipi(&mut pc, 0, 0x4_0050, 0); // arrives while the engine's slice runs
    assert!(pc.taken(VcpuId(0), offered));
    assert!(pc.lapic(VcpuId(0)).isr().contains(Vector(0x30)));
    assert!(irr(&pc, 0, 0x50), "the higher one still waits");
    assert!(!pc.taken(VcpuId(0), Vector(0x60)), "never requested");
    assert!(!pc.lapic(VcpuId(0)).isr().contains(Vector(0x60)));
}

#[test]
fn illegal_vectors_set_esr_and_raise_the_error_interrupt() {
    let mut pc = Pc::new(2, Startup::Running);
    enable(&mut pc, 0);
    enable(&mut pc, 1);
    write(&mut pc, 0, 0, reg::LVT_ERROR, 0x33);
    ipi(&mut pc, 0, 0x0005, 1); // fixed, vector 5
    assert!(!irr(&pc, 1, 5), "not sent");
    assert!(irr(&pc, 0, 0x33), "the sender's error interrupt");
    write(&mut pc, 0, 0, reg::ESR, 0);
    assert_eq!(read(&mut pc, 0, 0, reg::ESR), esr::SEND_ILLEGAL_VECTOR);
    // An I/O APIC entry with vector 7: the receiver refuses it.
    route(&mut pc, 3, 0x0007, 1);
    pc.set_irq(3, Line::High);
    write(&mut pc, 1, 0, reg::ESR, 0);
    assert_eq!(read(&mut pc, 1, 0, reg::ESR), esr::RECEIVE_ILLEGAL_VECTOR);
    assert!(!irr(&pc, 1, 7));
}

#[test]
fn a_one_shot_timer_counts_down_in_guest_time_and_fires_once() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    write(&mut pc, 0, 0, reg::TIMER_DIVIDE, 0b1011); // by 1
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x40);
    write(&mut pc, 0, 1000, reg::TIMER_INITIAL, 5000);
    assert_eq!(read(&mut pc, 0, 1300, reg::TIMER_CURRENT), 4700);
    assert_eq!(read(&mut pc, 0, 1300, reg::TIMER_INITIAL), 5000);
    assert_eq!(pc.next_deadline(), Some(GuestNs(6000)));
    pc.advance(GuestNs(5999));
    assert!(!irr(&pc, 0, 0x40));
    pc.advance(GuestNs(6000));
    assert!(irr(&pc, 0, 0x40));
    assert_eq!(pc.next_deadline(), None);
    assert_eq!(read(&mut pc, 0, 7000, reg::TIMER_CURRENT), 0);
    assert_eq!(pc.pending(VcpuId(0)), Some(Vector(0x40)));
}

#[test]
fn a_register_access_after_the_deadline_fires_the_timer_first() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    write(&mut pc, 0, 0, reg::TIMER_DIVIDE, 0b1011);
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x40);
    write(&mut pc, 0, 0, reg::TIMER_INITIAL, 100);
    // The engine ran past the deadline without calling advance.
    assert_eq!(read(&mut pc, 0, 150, reg::TIMER_CURRENT), 0);
    assert!(irr(&pc, 0, 0x40));
}

#[test]
fn a_periodic_timer_fires_every_period_and_a_masked_one_counts_silently() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    write(&mut pc, 0, 0, reg::TIMER_DIVIDE, 0b0000); // by 2
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x2_0041);
    write(&mut pc, 0, 0, reg::TIMER_INITIAL, 50); // 100 ns
    let mut fired = Vec::new();
    for now in (0..=450).step_by(10) {
        pc.advance(GuestNs(now));
        if pc.acknowledge(VcpuId(0)) == Some(Vector(0x41)) {
            fired.push(now);
            write(&mut pc, 0, now, reg::EOI, 0);
        }
    }
    assert_eq!(fired, vec![100, 200, 300, 400]);
    assert_eq!(
        read(&mut pc, 0, 425, reg::TIMER_CURRENT),
        38,
        "(500 - 425) / 2"
    );
    write(&mut pc, 0, 450, reg::LVT_TIMER, 0x3_0041); // masked
    pc.advance(GuestNs(700));
    assert!(!irr(&pc, 0, 0x41), "masked: no interrupt");
    assert_eq!(
        pc.next_deadline(),
        Some(GuestNs(800)),
        "but the count went on"
    );
}

#[test]
fn the_tsc_deadline_timer_fires_at_its_msr_and_rearms_by_it() {
    let mut pc = Pc::new(2, Startup::Running);
    enable(&mut pc, 1);
    write(&mut pc, 1, 0, reg::LVT_TIMER, 0x4_00ec);
    let at = |now| ctx(1, now);
    assert_eq!(pc.next_deadline(), None);
    assert_eq!(
        pc.msr_write(at(10), MSR_TSC_DEADLINE, 2_000),
        MsrWrite::Done
    );
    assert_eq!(pc.msr_read(at(10), MSR_TSC_DEADLINE), Some(2_000));
    assert_eq!(pc.next_deadline(), Some(GuestNs(2_000)));
    write(&mut pc, 1, 20, reg::TIMER_INITIAL, 99);
    assert_eq!(
        read(&mut pc, 1, 20, reg::TIMER_INITIAL),
        0,
        "ignored in this mode"
    );
    assert_eq!(read(&mut pc, 1, 20, reg::TIMER_CURRENT), 0);
    pc.advance(GuestNs(1_999));
    assert!(!irr(&pc, 1, 0xec));
    pc.advance(GuestNs(2_000));
    assert!(irr(&pc, 1, 0xec));
    assert_eq!(pc.msr_read(at(2_001), MSR_TSC_DEADLINE), Some(0), "spent");
    assert_eq!(pc.next_deadline(), None);
    pc.msr_write(at(3_000), MSR_TSC_DEADLINE, 3_500);
    pc.msr_write(at(3_100), MSR_TSC_DEADLINE, 0);
    assert_eq!(pc.next_deadline(), None, "0 disarms");
    write(&mut pc, 1, 3_200, reg::LVT_TIMER, 0x00ec); // one-shot again
    pc.msr_write(at(3_300), MSR_TSC_DEADLINE, 3_500);
    assert_eq!(
        pc.msr_read(at(3_300), MSR_TSC_DEADLINE),
        Some(0),
        "outside the mode"
    );
    assert_eq!(pc.next_deadline(), None);
}

#[test]
fn the_current_count_is_a_function_of_guest_time_alone() {
    // One platform read often, one read once: the same count at the same
    // guest time, and so on a replay.
    let arm = |pc: &mut Pc| {
        enable(pc, 0);
        write(pc, 0, 0, reg::TIMER_DIVIDE, 0b0011); // by 16
        write(pc, 0, 0, reg::LVT_TIMER, 0x2_0030);
        write(pc, 0, 7, reg::TIMER_INITIAL, 1_000);
    };
    let (mut often, mut once) = (Pc::new(1, Startup::Running), Pc::new(1, Startup::Running));
    arm(&mut often);
    arm(&mut once);
    for now in (7..40_000).step_by(997) {
        read(&mut often, 0, now, reg::TIMER_CURRENT);
    }
    let counts = |pc: &mut Pc| read(pc, 0, 40_000, reg::TIMER_CURRENT);
    assert_eq!(counts(&mut often), counts(&mut once));
    assert_eq!(counts(&mut once), 1_000 - ((40_000 - 7) / 16) % 1_000);
}

#[test]
fn fixed_ipis_reach_physical_and_logical_destinations() {
    let mut pc = Pc::new(4, Startup::Running);
    for v in 0..4 {
        enable(&mut pc, v);
        write(&mut pc, v, 0, reg::LDR, 1 << (24 + v));
    }
    ipi(&mut pc, 0, 0x0000_0040, 2); // physical 2
    assert_eq!(
        (0..4).map(|v| irr(&pc, v, 0x40)).collect::<Vec<_>>(),
        [false, false, true, false]
    );
    ipi(&mut pc, 0, 0x0000_0041, 0xff); // physical broadcast
    assert!((0..4).all(|v| irr(&pc, v, 0x41)));
    ipi(&mut pc, 0, 0x0000_0842, 0b1010); // logical flat: vCPUs 1 and 3
    assert_eq!(
        (0..4).map(|v| irr(&pc, v, 0x42)).collect::<Vec<_>>(),
        [false, true, false, true]
    );
    ipi(&mut pc, 0, 0x0000_0043, 9); // no such APIC ID
    assert!((0..4).all(|v| !irr(&pc, v, 0x43)));
    // The cluster model: cluster in the high nibble, members in the low.
    for v in 0..4 {
        write(&mut pc, v, 0, reg::DFR, 0x0fff_ffff);
    }
    write(&mut pc, 2, 0, reg::LDR, 0x2100_0000); // cluster 2, member 1
    write(&mut pc, 3, 0, reg::LDR, 0x1100_0000); // cluster 1, member 1
    ipi(&mut pc, 0, 0x0000_0844, 0x21);
    assert_eq!(
        (0..4).map(|v| irr(&pc, v, 0x44)).collect::<Vec<_>>(),
        [false, false, true, false]
    );
}

#[test]
fn shorthands_name_self_all_and_all_but_self() {
    let mut pc = Pc::new(3, Startup::Running);
    for v in 0..3 {
        enable(&mut pc, v);
    }
    ipi(&mut pc, 1, 0x0004_0050, 2); // self: the destination field is ignored
    ipi(&mut pc, 1, 0x0008_0051, 0);
    ipi(&mut pc, 1, 0x000c_0052, 0);
    let seen = |pc: &Pc, vector| (0..3).map(|v| irr(pc, v, vector)).collect::<Vec<_>>();
    assert_eq!(seen(&pc, 0x50), [false, true, false]);
    assert_eq!(seen(&pc, 0x51), [true, true, true]);
    assert_eq!(seen(&pc, 0x52), [true, false, true]);
}

#[test]
fn lowest_priority_picks_the_lowest_arbitration_priority() {
    let mut pc = Pc::new(3, Startup::Running);
    for v in 0..3 {
        enable(&mut pc, v);
        write(&mut pc, v, 0, reg::LDR, 0x0100_0000); // all in logical group 1
    }
    write(&mut pc, 0, 0, reg::TPR, 0x30);
    write(&mut pc, 1, 0, reg::TPR, 0x20);
    write(&mut pc, 2, 0, reg::TPR, 0x50);
    ipi(&mut pc, 0, 0x0000_0960, 0x01);
    assert_eq!(
        (0..3).map(|v| irr(&pc, v, 0x60)).collect::<Vec<_>>(),
        [false, true, false]
    );
    write(&mut pc, 1, 0, reg::TPR, 0x30);
    ipi(&mut pc, 0, 0x0000_0961, 0x01);
    assert!(irr(&pc, 0, 0x61), "a tie goes to the lowest vCPU");
}

#[test]
fn init_and_startup_ipis_start_a_waiting_processor_once() {
    let mut pc = Pc::new(3, Startup::WaitingForSipi);
    enable(&mut pc, 0);
    enable(&mut pc, 1);
    write(&mut pc, 1, 0, reg::TPR, 0x40);
    assert_eq!(pc.lapic(VcpuId(1)).startup(), Startup::WaitingForSipi);
    ipi(&mut pc, 0, 0x0000_c500, 1); // INIT assert, level
    ipi(&mut pc, 0, 0x0000_8500, 1); // INIT de-assert: nothing
    ipi(&mut pc, 0, 0x0000_069a, 1); // SIPI
    ipi(&mut pc, 0, 0x0000_069a, 1); // the second SIPI Linux sends
    let vcpu = VcpuId(1);
    let sent = actions(&mut pc);
    assert_eq!(
        sent,
        [
            PcAction::Init { vcpu },
            PcAction::Startup { vcpu, vector: 0x9a }
        ]
    );
    assert_eq!(sent[1].start_gpa(), Some(Gpa(0x9_a000)));
    assert_eq!(pc.stats().messages_ignored, 1, "the second SIPI");
    assert_eq!(pc.lapic(vcpu).startup(), Startup::Running);
    assert_eq!(read(&mut pc, 1, 0, reg::TPR), 0, "INIT reset the registers");
    assert_eq!(read(&mut pc, 1, 0, reg::SVR), 0xff);
    assert_eq!(read(&mut pc, 1, 0, reg::ID), 1 << 24, "but not the ID");
    // Power-up left vCPU 2 waiting: a SIPI alone starts it.
    ipi(&mut pc, 0, 0x000c_0610, 0); // all but self
    assert_eq!(
        actions(&mut pc),
        [PcAction::Startup {
            vcpu: VcpuId(2),
            vector: 0x10
        }]
    );
    assert_eq!(pc.stats().messages_ignored, 2, "vCPU 1 runs");
}

#[test]
fn nmis_are_actions_and_a_pending_one_is_one_latch() {
    let mut pc = Pc::new(2, Startup::Running);
    ipi(&mut pc, 0, 0x0000_0400, 1);
    ipi(&mut pc, 0, 0x0000_0400, 1);
    ipi(&mut pc, 1, 0x0004_0400, 0); // self
    assert_eq!(actions(&mut pc), [PcAction::Nmi { vcpu: VcpuId(1) }]);
    ipi(&mut pc, 0, 0x0000_0400, 1);
    assert_eq!(
        actions(&mut pc),
        [PcAction::Nmi { vcpu: VcpuId(1) }],
        "taken: a new one"
    );
    ipi(&mut pc, 0, 0x0000_0200, 1); // SMI: not modelled
    assert_eq!(pc.poll_action(), None);
    assert_eq!(pc.stats().messages_ignored, 1);
}

#[test]
fn a_processor_waiting_for_its_startup_ipi_hears_no_nmi() {
    let mut pc = Pc::new(2, Startup::WaitingForSipi);
    assert!(pc.waits_for_startup(VcpuId(1)));
    assert!(!pc.waits_for_startup(VcpuId(0)), "the BSP runs");
    ipi(&mut pc, 0, 0x0000_0400, 1);
    assert_eq!(pc.poll_action(), None);
    assert_eq!(pc.stats().messages_ignored, 1);
    ipi(&mut pc, 0, 0x0000_0610, 1); // SIPI
    ipi(&mut pc, 0, 0x0000_0400, 1);
    assert_eq!(
        actions(&mut pc),
        [
            PcAction::Startup {
                vcpu: VcpuId(1),
                vector: 0x10
            },
            PcAction::Nmi { vcpu: VcpuId(1) }
        ]
    );
    assert!(!pc.waits_for_startup(VcpuId(1)));
}

#[test]
fn the_action_queue_is_bounded() {
    let mut pc = Pc::new(2, Startup::WaitingForSipi);
    for _ in 0..ACTIONS_MAX {
        ipi(&mut pc, 0, 0x0000_c500, 1);
        ipi(&mut pc, 0, 0x0000_0610, 1);
    }
    assert_eq!(actions(&mut pc).len(), ACTIONS_MAX);
    assert_eq!(pc.stats().actions_dropped, ACTIONS_MAX as u64);
}

#[test]
fn the_ioapic_routes_edge_pins_and_drops_masked_ones() {
    let mut pc = Pc::new(2, Startup::Running);
    enable(&mut pc, 1);
    route(&mut pc, 1, 0x0000_0031, 1);
    pc.set_irq(1, Line::High);
    assert!(irr(&pc, 1, 0x31));
    assert!(!pc.lapic(VcpuId(1)).tmr().contains(Vector(0x31)), "edge");
    route(&mut pc, 1, 0x0001_0032, 1); // masked
    pc.set_irq(1, Line::Low);
    pc.set_irq(1, Line::High);
    assert!(!irr(&pc, 1, 0x32));
}

#[test]
fn a_level_pin_holds_remote_irr_until_the_lapic_eoi_broadcast() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    route(&mut pc, 10, 0x0000_803a, 0); // level, physical 0
    pc.set_irq(10, Line::High);
    let v0 = VcpuId(0);
    assert!(pc.lapic(v0).tmr().contains(Vector(0x3a)), "TMR marks level");
    assert_eq!(pc.acknowledge(v0), Some(Vector(0x3a)));
    let remote_irr = |pc: &Pc| pc.ioapic().entry(10).expect("pin") & (1 << 14) != 0;
    assert!(remote_irr(&pc));
    pc.set_irq(10, Line::High);
    assert!(!irr(&pc, 0, 0x3a), "held by remote IRR");
    write(&mut pc, 0, 0, reg::EOI, 0);
    assert!(
        irr(&pc, 0, 0x3a),
        "the EOI reached the I/O APIC; still asserted: again"
    );
    assert!(remote_irr(&pc));
    assert_eq!(pc.acknowledge(v0), Some(Vector(0x3a)));
    pc.set_irq(10, Line::Low);
    write(&mut pc, 0, 0, reg::EOI, 0);
    assert!(!remote_irr(&pc));
    assert_eq!(pc.pending(v0), None, "deasserted: done");
}

#[test]
fn an_edge_vectors_eoi_is_not_broadcast() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    route(&mut pc, 11, 0x0000_8040, 0); // level pin, vector 0x40
    pc.set_irq(11, Line::High);
    assert_eq!(pc.acknowledge(VcpuId(0)), Some(Vector(0x40)));
    ipi(&mut pc, 0, 0x0004_0050, 0); // an edge self-IPI on top
    assert_eq!(pc.acknowledge(VcpuId(0)), Some(Vector(0x50)));
    write(&mut pc, 0, 0, reg::EOI, 0); // ends 0x50: edge, no broadcast
    assert_ne!(
        pc.ioapic().entry(11).expect("pin") & (1 << 14),
        0,
        "remote IRR stays"
    );
}

#[test]
fn com1_output_is_console_bytes_and_its_interrupt_reaches_pin_4() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    route(&mut pc, 4, 0x0000_0024, 0);
    assert_eq!(
        pc.port_out(ctx(0, 0), 0x3f8, u32::from(b'L')),
        Some(b"L".to_vec())
    );
    assert_eq!(pc.port_out(ctx(0, 0), 0x3f7, 0), None, "not COM1");
    assert_eq!(pc.port_in(ctx(0, 0), 0x400, 1), None);
    assert!(!irr(&pc, 0, 0x24), "interrupts off");
    assert_eq!(
        pc.port_out(ctx(0, 0), 0x3f9, 0x02),
        Some(vec![]),
        "IER: THR empty"
    );
    assert!(irr(&pc, 0, 0x24));
    assert_eq!(pc.acknowledge(VcpuId(0)), Some(Vector(0x24)));
    assert_eq!(
        pc.port_in(ctx(0, 0), 0x3fa, 1),
        Some(0xc2),
        "IIR: FIFOs, THR empty"
    );
    write(&mut pc, 0, 0, reg::EOI, 0);
    pc.port_out(ctx(0, 0), 0x3f9, 0x01); // receive only
    assert_eq!(pc.uart_receive(b"hi"), 2);
    assert!(irr(&pc, 0, 0x24), "received data interrupt");
    assert_eq!(pc.port_in(ctx(0, 0), 0x3f8, 1), Some(u32::from(b'h')));
    assert_eq!(
        pc.port_in(ctx(0, 0), 0x3fd, 2),
        Some(0xff00 | 0x61),
        "LSR: data ready, THR empty, idle"
    );
}

#[test]
fn apic_base_refuses_x2apic_and_a_disabled_apic_comes_back_reset() {
    let mut pc = Pc::new(1, Startup::Running);
    enable(&mut pc, 0);
    write(&mut pc, 0, 0, reg::TPR, 0x20);
    let c = ctx(0, 0);
    assert_eq!(
        pc.msr_write(c, MSR_APIC_BASE, 0xfee0_0d00),
        MsrWrite::GeneralProtection
    );
    assert_eq!(
        pc.msr_write(c, MSR_APIC_BASE, 1 << 63),
        MsrWrite::GeneralProtection
    );
    assert_eq!(pc.msr_write(c, MSR_APIC_BASE, 0xfee0_0100), MsrWrite::Done);
    assert_eq!(
        pc.msr_read(c, MSR_APIC_BASE),
        Some(0xfee0_0100),
        "BSP stays, disabled"
    );
    assert_eq!(read(&mut pc, 0, 0, reg::ID), u32::MAX, "the page is gone");
    write(&mut pc, 0, 0, reg::TPR, 0x30);
    pc.msr_write(c, MSR_APIC_BASE, 0xfee0_0900);
    assert_eq!(
        read(&mut pc, 0, 0, reg::TPR),
        0,
        "reset, and the write went nowhere"
    );
    assert_eq!(read(&mut pc, 0, 0, reg::SVR), 0xff);
    assert_eq!(pc.msr_read(c, 0x10), None, "the TSC is not the platform's");
    assert_eq!(pc.msr_write(c, 0x10, 0), MsrWrite::NotMine);
    pc.msr_write(c, MSR_APIC_BASE, 0x1234_5000_0900);
    assert_eq!(
        pc.msr_read(c, MSR_APIC_BASE),
        Some(0xfee0_0900),
        "the base does not move"
    );
}

#[test]
fn cpuid_leaf_1_offers_the_apic_and_tsc_deadline_not_x2apic() {
    let pc = Pc::new(3, Startup::Running);
    let host = CpuidRegs {
        eax: 0x806e9,
        ebx: 0xff00_0800,
        ecx: CPUID_1_ECX_X2APIC,
        edx: 0,
    };
    let regs = pc.cpuid(VcpuId(2), 1, host);
    assert_eq!(regs.eax, host.eax);
    assert_eq!(regs.ebx, 0x0200_0800, "initial APIC ID 2");
    assert_eq!(regs.ecx, CPUID_1_ECX_TSC_DEADLINE);
    assert_eq!(regs.edx, CPUID_1_EDX_APIC);
    assert_eq!(pc.cpuid(VcpuId(2), 7, host), host);
}

#[test]
fn narrow_reads_see_part_of_a_register_and_narrow_writes_are_ignored() {
    let mut pc = Pc::new(2, Startup::Running);
    let mut byte = [0u8; 1];
    assert!(pc.mmio_read(ctx(1, 0), Gpa(APIC_BASE_DEFAULT + 0x23), &mut byte));
    assert_eq!(byte, [1], "the ID's top byte");
    let mut wide = [0xaau8; 8];
    assert!(pc.mmio_read(ctx(1, 0), Gpa(APIC_BASE_DEFAULT + 0x30), &mut wide));
    assert_eq!(wide, [0x14, 0, 5, 0, 0, 0, 0, 0], "the slot's rest reads 0");
    assert!(pc.mmio_write(ctx(1, 0), Gpa(APIC_BASE_DEFAULT + 0x80), &[0x70]));
    assert!(pc.mmio_write(ctx(1, 0), Gpa(APIC_BASE_DEFAULT + 0x84), &[1, 2, 3, 4]));
    assert_eq!(read(&mut pc, 1, 0, reg::TPR), 0);
    assert_eq!(pc.stats().writes_ignored, 2);
    assert!(
        !pc.mmio_read(ctx(1, 0), Gpa(0xfee0_1000), &mut byte),
        "not decoded"
    );
    assert!(!pc.mmio_write(ctx(1, 0), Gpa(0xfec0_1000), &[0; 4]));
    assert!(Pc::decodes(Gpa(0xfec0_0010)));
    assert!(!Pc::decodes(Gpa(0xfed0_0000)));
    // IOREGSEL takes a byte write.
    assert!(pc.mmio_write(ctx(0, 0), Gpa(IOAPIC_BASE), &[0x01]));
    let mut version = [0u8; 4];
    pc.mmio_read(ctx(0, 0), Gpa(IOAPIC_BASE + 0x10), &mut version);
    assert_eq!(u32::from_le_bytes(version), 0x0017_0020);
}

/// A platform in the middle of things: a periodic timer counting, vectors
/// requested and in service, a level pin waiting for its EOI, received
/// bytes in the UART, an action queued.
fn busy() -> Pc {
    let mut pc = Pc::new(2, Startup::WaitingForSipi);
    for v in 0..2 {
        enable(&mut pc, v);
    }
    write(&mut pc, 0, 0, reg::TIMER_DIVIDE, 0b0001);
    write(&mut pc, 0, 0, reg::LVT_TIMER, 0x2_0030);
    write(&mut pc, 0, 100, reg::TIMER_INITIAL, 250); // 1000 ns periods
    route(&mut pc, 9, 0x0000_8039, 1);
    pc.set_irq(9, Line::High);
    pc.acknowledge(VcpuId(1));
    ipi(&mut pc, 0, 0x0000_0045, 1);
    write(&mut pc, 1, 0, reg::LVT_TIMER, 0x4_0031);
    pc.msr_write(ctx(1, 0), MSR_TSC_DEADLINE, 7_777);
    pc.port_out(ctx(0, 0), 0x3f9, 0x01);
    pc.uart_receive(b"abc");
    rtc_write(&mut pc, 1_000, rtc::reg::B, rtc::B_BINARY | rtc::B_24_HOUR);
    rtc_write(&mut pc, 1_000, 0x40, 0x99);
    ipi(&mut pc, 0, 0x0000_0400, 0); // an NMI to the BSP (vCPU 1 waits)
    pc.advance(GuestNs(1_500));
    pc
}

fn saved(pc: &Pc) -> Vec<u8> {
    let mut w = Writer::new();
    pc.save(&mut w);
    w.into_bytes()
}

fn rtc_write(pc: &mut Pc, now: u64, index: u8, value: u8) {
    assert_eq!(
        pc.port_out(ctx(0, now), 0x70, u32::from(index)),
        Some(vec![])
    );
    assert_eq!(
        pc.port_out(ctx(0, now), 0x71, u32::from(value)),
        Some(vec![])
    );
}

fn rtc_read(pc: &mut Pc, now: u64, index: u8) -> u8 {
    pc.port_out(ctx(0, now), 0x70, u32::from(index));
    let value = pc.port_in(ctx(0, now), 0x71, 1).expect("the RTC's port");
    u8::try_from(value).expect("a byte read")
}

/// The length of `busy()`'s state without its tagged parts: the layout
/// before the RTC.
fn first_layout_len(bytes: &[u8]) -> usize {
    let mut w = Writer::new();
    Rtc::new(DEFAULT_EPOCH).save(&mut w);
    bytes.len() - 1 - 4 - w.into_bytes().len()
}

#[test]
fn the_rtc_answers_on_ports_0x70_and_0x71_in_guest_time() {
    let mut pc = Pc::new(1, Startup::Running).with_rtc_epoch(UnixSeconds(1_000_000_000));
    assert_eq!(rtc_read(&mut pc, 0, rtc::reg::SECONDS), 0x40, "BCD");
    assert_eq!(rtc_read(&mut pc, 2_000_000_000, rtc::reg::SECONDS), 0x42);
    assert_eq!(
        rtc_read(&mut pc, 0, 0x80 | rtc::reg::MINUTES),
        0x46,
        "NMI mask bit"
    );
    assert_eq!(
        pc.port_in(ctx(0, 0), 0x71, 2),
        Some(0xff00 | 0x46),
        "8 bits wide"
    );
    assert_eq!(
        pc.port_in(ctx(0, 0), 0x70, 1),
        Some(0xff),
        "write-only index"
    );
    assert_eq!(pc.port_in(ctx(0, 0), 0x72, 1), None, "not the RTC's");
    assert_eq!(pc.rtc().epoch(), UnixSeconds(1_000_000_000));
}

#[test]
fn a_platform_state_from_before_the_rtc_restores_with_a_power_up_rtc() {
    let pc = busy();
    let bytes = saved(&pc);
    let old = &bytes[..first_layout_len(&bytes)];
    let epoch = UnixSeconds(1_000_000_000);
    let back = Pc::restore(&mut Reader::new(old), 2, epoch).expect("the older layout decodes");
    assert_eq!(back.rtc(), &Rtc::new(epoch));
    assert_eq!(back.lapics, pc.lapics);
    assert_eq!(back.uart, pc.uart);
    // The RTC's part twice, or a part nobody knows, is corrupt.
    let part = &bytes[old.len()..];
    let twice = [&bytes[..], part].concat();
    let error = Pc::restore(&mut Reader::new(&twice), 2, epoch).unwrap_err();
    assert!(error.to_string().contains("part 1"), "{error}");
    let mut unknown = bytes.clone();
    unknown[old.len()] = 0xee;
    assert!(Pc::restore(&mut Reader::new(&unknown), 2, epoch).is_err());
}

#[test]
fn a_restored_platform_goes_on_exactly_as_the_original_mid_timer() {
    let mut pc = busy();
    let bytes = saved(&pc);
    let mut back = Pc::restore(&mut Reader::new(&bytes), 2, DEFAULT_EPOCH).expect("decodes");
    assert_eq!(back, pc);
    assert_eq!(saved(&back), bytes);
    assert_eq!(back.next_deadline(), pc.next_deadline());
    assert_eq!(pc.next_deadline(), Some(GuestNs(2_100)));
    for now in [1_600, 2_099, 2_100, 5_000, 7_777, 9_000] {
        pc.advance(GuestNs(now));
        back.advance(GuestNs(now));
        assert_eq!(
            read(&mut back, 0, now, reg::TIMER_CURRENT),
            read(&mut pc, 0, now, reg::TIMER_CURRENT),
            "at {now}"
        );
        for v in 0..2 {
            assert_eq!(
                back.acknowledge(VcpuId(v)),
                pc.acknowledge(VcpuId(v)),
                "at {now}"
            );
        }
    }
    for pc in [&mut pc, &mut back] {
        assert_eq!(pc.poll_action(), Some(PcAction::Nmi { vcpu: VcpuId(0) }));
        assert_eq!(pc.port_in(ctx(0, 0), 0x3f8, 1), Some(u32::from(b'a')));
        write(pc, 1, 9_000, reg::EOI, 0);
    }
    assert_eq!(saved(&back), saved(&pc));
}

#[test]
fn a_truncated_or_overlong_platform_state_is_an_error() {
    let bytes = saved(&busy());
    let older_layout = first_layout_len(&bytes);
    for len in (0..bytes.len()).filter(|len| *len != older_layout) {
        assert!(
            Pc::restore(&mut Reader::new(&bytes[..len]), 2, DEFAULT_EPOCH).is_err(),
            "cut at {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Pc::restore(&mut Reader::new(&longer), 2, DEFAULT_EPOCH).is_err());
    let error = Pc::restore(&mut Reader::new(&bytes), 3, DEFAULT_EPOCH).unwrap_err();
    assert!(error.to_string().contains("vCPUs"), "{error}");
}

#[test]
fn corrupt_platform_states_never_panic() {
    fn prop(flips: Vec<(u16, u8)>) -> TestResult {
        let mut bytes = saved(&busy());
        for (at, mask) in flips {
            let at = usize::from(at) % bytes.len();
            bytes[at] ^= mask;
        }
        if let Ok(mut pc) = Pc::restore(&mut Reader::new(&bytes), 2, DEFAULT_EPOCH) {
            // Whatever decodes runs.
            pc.advance(GuestNs(u64::MAX / 2));
            pc.next_deadline();
            pc.acknowledge(VcpuId(1));
            read(&mut pc, 0, u64::MAX, reg::TIMER_CURRENT);
        }
        TestResult::passed()
    }
    QuickCheck::new()
        .tests(1000)
        .quickcheck(prop as fn(Vec<(u16, u8)>) -> TestResult);
}

#[test]
fn guest_nonsense_on_the_apic_pages_and_msrs_never_panics() {
    fn prop(accesses: Vec<(u16, u32, u8, u32)>) -> TestResult {
        let mut pc = Pc::new(2, Startup::WaitingForSipi);
        let mut now = 0u64;
        for (offset, value, kind, step) in accesses {
            now += u64::from(step);
            let vcpu = u16::from(kind & 1);
            let c = ctx(vcpu, now);
            let base = if kind & 2 == 0 {
                APIC_BASE_DEFAULT
            } else {
                IOAPIC_BASE
            };
            let gpa = Gpa(base + u64::from(offset & 0xfff));
            let len = usize::from(kind >> 4) % 9;
            match (kind >> 2) & 3 {
                0 => {
                    let mut data = vec![0; len];
                    pc.mmio_read(c, gpa, &mut data);
                }
                1 => {
                    let bytes = u64::from(value).to_le_bytes();
                    pc.mmio_write(c, gpa, &bytes[..len]);
                }
                2 => {
                    let msr = [MSR_APIC_BASE, MSR_TSC_DEADLINE][usize::from(kind >> 7)];
                    pc.msr_write(c, msr, u64::from(value) << (offset % 33));
                    pc.msr_read(c, msr);
                }
                _ => {
                    pc.set_irq(
                        usize::from(offset % 30),
                        [Line::Low, Line::High][usize::from(kind >> 7)],
                    );
                    pc.port_out(c, 0x3f8 + offset % 8, value);
                    pc.port_in(c, 0x3f8 + (offset >> 3) % 8, 1);
                    pc.port_out(c, 0x70 + offset % 2, value);
                    pc.port_in(c, 0x70 + (offset >> 1) % 2, 4);
                }
            }
            pc.advance(GuestNs(now));
            for v in 0..2 {
                pc.acknowledge(VcpuId(v));
            }
            while pc.poll_action().is_some() {}
        }
        // Whatever the guest did, the state saves and restores.
        let bytes = saved(&pc);
        let back = Pc::restore(&mut Reader::new(&bytes), 2, DEFAULT_EPOCH);
        TestResult::from_bool(back.as_ref() == Ok(&pc))
    }
    QuickCheck::new()
        .tests(500)
        .quickcheck(prop as fn(Vec<(u16, u32, u8, u32)>) -> TestResult);
}
