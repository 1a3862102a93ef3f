//! `dirtier`: each vCPU writes `params[0]` pages per period of `params[2]`
//! ns of guest time (1 ms if 0), cycling through its own region of
//! `params[1]` pages at `GUEST_DATA + vcpu * params[1] * 4096`, then halts
//! until the clock wakes it for the next period.

use iced_x86::code_asm::*;

use super::param_offset;
use crate::devices::PORT_CLOCK_WAKE;
use crate::layout::GUEST_DATA;

/// The default period: one millisecond.
pub const PERIOD_NS_DEFAULT: u64 = 1_000_000;

/// Emits the guest.
pub fn assemble(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut period = a.create_label();
    let mut write = a.create_label();
    let mut no_wrap = a.create_label();
    let mut sleep = a.create_label();
    let mut has_period = a.create_label();
    a.mov(r12, qword_ptr(rsi + param_offset(0)))?;
    a.mov(r13, qword_ptr(rsi + param_offset(1)))?;
    a.mov(r14, qword_ptr(rsi + param_offset(2)))?;
    a.test(r14, r14)?;
    a.jnz(has_period)?;
    a.mov(r14, PERIOD_NS_DEFAULT)?;
    a.set_label(&mut has_period)?;
    a.mov(rax, rdi)?;
    a.imul_2(rax, r13)?;
    a.shl(rax, 12)?;
    a.mov(r15, GUEST_DATA.0)?;
    a.add(r15, rax)?;
    a.xor(ebx, ebx)?;
    a.xor(ebp, ebp)?;
    a.set_label(&mut period)?;
    a.mov(rcx, r12)?;
    a.set_label(&mut write)?;
    a.test(rcx, rcx)?;
    a.jz(sleep)?;
    a.inc(rbp)?;
    a.mov(rax, rbx)?;
    a.shl(rax, 12)?;
    a.mov(qword_ptr(r15 + rax), rbp)?;
    a.inc(rbx)?;
    a.cmp(rbx, r13)?;
    a.jb(no_wrap)?;
    a.xor(ebx, ebx)?;
    a.set_label(&mut no_wrap)?;
    a.dec(rcx)?;
    a.jmp(write)?;
    a.set_label(&mut sleep)?;
    a.mov(eax, r14d)?;
    a.mov(edx, u32::from(PORT_CLOCK_WAKE))?;
    a.out(dx, eax)?;
    a.hlt()?;
    a.jmp(period)?;
    Ok(())
}
