//! `compute`: each vCPU runs an LCG for `params[0]` iterations (0: for
//! ever), folds it into an accumulator, stores the accumulator at
//! `RESULTS + 8 * vcpu`, reports its low half on the done port and halts.

use iced_x86::code_asm::*;

use super::param_offset;
use crate::devices::PORT_DONE;
use crate::layout::GUEST_DATA;

/// Where vCPU i stores its result (8 bytes each).
pub const RESULTS: u64 = GUEST_DATA.0;
const MULTIPLIER: u64 = 6_364_136_223_846_793_005;
const INCREMENT: u64 = 1_442_695_040_888_963_407;
const SEED_MULTIPLIER: u64 = 0x9E37_79B9;

/// Emits the guest.
pub fn assemble(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut halt = a.create_label();
    a.mov(rcx, qword_ptr(rsi + param_offset(0)))?;
    a.lea(rax, qword_ptr(rdi + 1))?;
    a.mov(r8, SEED_MULTIPLIER)?;
    a.imul_2(rax, r8)?;
    a.xor(ebx, ebx)?;
    a.mov(r9, MULTIPLIER)?;
    a.mov(r10, INCREMENT)?;
    a.set_label(&mut top)?;
    a.imul_2(rax, r9)?;
    a.add(rax, r10)?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 17)?;
    a.xor(rbx, rdx)?;
    a.rol(rbx, 5)?;
    a.dec(rcx)?;
    a.jnz(top)?;
    a.mov(rax, RESULTS)?;
    a.mov(qword_ptr(rax + rdi * 8), rbx)?;
    a.mov(eax, ebx)?;
    a.mov(edx, u32::from(PORT_DONE))?;
    a.out(dx, eax)?;
    a.set_label(&mut halt)?;
    a.hlt()?;
    a.jmp(halt)?;
    Ok(())
}

/// What vCPU `vcpu` computes for `iterations` (> 0): the host's check.
pub fn expected(vcpu: u16, iterations: u64) -> u64 {
    assert!(iterations > 0);
    let mut x = (u64::from(vcpu) + 1).wrapping_mul(SEED_MULTIPLIER);
    let mut acc = 0u64;
    for _ in 0..iterations {
        x = x.wrapping_mul(MULTIPLIER).wrapping_add(INCREMENT);
        acc = (acc ^ (x >> 17)).rotate_left(5);
    }
    acc
}

/// Guest instructions per loop iteration, for sizing budgets.
pub const INSTRUCTIONS_PER_ITERATION: u64 = 7;
