//! A guest that cannot go on ends the run with an error naming the vCPU,
//! its rip and the code there, not a panic; the engine stays usable.

mod common;

use common::*;
use machine::guests::GuestImage;
use machine::layout::{GUEST_CODE, MEMORY_BYTES_MIN};
use machine::{EngineError, Instructions, Shape};

#[test]
fn an_invalid_opcode_is_a_guest_fault() {
    if !kvm_or_skip("an_invalid_opcode_is_a_guest_fault") {
        return;
    }
    // nop; ud2: no IDT, so #UD becomes a triple fault.
    let image = GuestImage {
        code: vec![0x90, 0x0f, 0x0b],
        params: [0; 8],
    };
    let shape = Shape::new(1, MEMORY_BYTES_MIN).expect("valid");
    let mut machine = kvm(shape, &image);
    let error = machine.run(Instructions(5_000_000)).expect_err("faults");
    let machine::MachineError::Engine(EngineError::GuestFault {
        vcpu,
        rip,
        disassembly,
        ..
    }) = &error
    else {
        panic!("not a guest fault: {error}");
    };
    assert_eq!(vcpu.0, 0);
    assert_eq!(*rip, GUEST_CODE.0 + 1, "at the ud2");
    assert!(disassembly.contains("ud2"), "{disassembly}");
    let states = machine.vcpu_states().expect("state still reads");
    assert_eq!(states[0].rip, *rip);
}
