//! `ledger`: a bank. Every vCPU takes transfer requests from the NIC and,
//! under one `lock cmpxchg` spinlock in shared memory, looks the request id
//! up in a reply table; a repeated id gets its recorded reply again. A new
//! request is decided (applied, rejected for lack of funds, or invalid),
//! appended to the journal on disk, recorded in the table, and only then
//! answered.
//!
//! Packets (little-endian):
//! request 32 bytes `id u64 | from u32 | to u32 | amount u64 | 0 u64`,
//! reply 24 bytes `id u64 | seq u64 | status u64`.
//! Journal record `seq - 1` (32 bytes) lives in block `(seq - 1) / 16` at
//! offset `((seq - 1) % 16) * 32`:
//! `seq u64 | id u64 | from u16 | to u16 | status u32 | amount u64`.
//! Balances are kept as signed offsets from `params[1]`, the initial
//! balance, so the guest needs no initialisation; `params[0]` accounts.

use iced_x86::code_asm::*;

use super::{param_offset, poll_nic_or_halt};
use crate::devices::{
    DISK_CMD_READ, DISK_CMD_WRITE, PORT_DISK_BLOCK, PORT_DISK_CMD, PORT_DISK_DATA,
    PORT_DISK_OFFSET, PORT_NIC_RX_DATA, PORT_NIC_TX_DATA, PORT_NIC_TX_SEND,
};
use crate::layout::GUEST_DATA;

/// The spinlock word: 0 free, else holder's vCPU index + 1.
pub const LOCK: u64 = GUEST_DATA.0;
/// The number of journal records written.
pub const SEQ: u64 = GUEST_DATA.0 + 8;
/// Per-vCPU count of lock acquisitions that found the lock taken.
pub const CONTENDED: u64 = GUEST_DATA.0 + 0x40;
/// Balance offsets, one i64 per account.
pub const BALANCES: u64 = GUEST_DATA.0 + 0x1000;
/// The reply table: `TABLE_ENTRIES` of `id u64 | seq u32 | status u32`,
/// indexed by `id % TABLE_ENTRIES`.
pub const TABLE: u64 = GUEST_DATA.0 + 0x10_0000;
/// Reply table entries; request ids must stay below this.
pub const TABLE_ENTRIES: u64 = 1 << 16;
/// Most accounts.
pub const ACCOUNTS_MAX: u64 = 512;
/// Request packet length.
pub const REQUEST_BYTES: usize = 32;
/// Reply packet length.
pub const REPLY_BYTES: usize = 24;
/// Journal records per disk block.
pub const RECORDS_PER_BLOCK: u64 = 16;
/// Journal record length.
pub const RECORD_BYTES: usize = 32;

/// A transfer was applied.
pub const STATUS_APPLIED: u32 = 1;
/// The source account lacked the funds.
pub const STATUS_REJECTED: u32 = 2;
/// An account number was out of range.
pub const STATUS_INVALID: u32 = 3;

fn off(address: u64) -> i32 {
    i32::try_from(address - GUEST_DATA.0).expect("ledger data is within 2 GiB")
}

/// Emits the guest. Registers: r8 data base, r9 accounts, r10 initial
/// balance, r12 id, r13 from, r14 to, r11 amount, r15 status, rbp seq
/// (with status in its high half once decided), rbx table entry offset.
pub fn assemble(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut got = a.create_label();
    a.mov(r8, GUEST_DATA.0)?;
    a.mov(r9, qword_ptr(rsi + param_offset(0)))?;
    a.mov(r10, qword_ptr(rsi + param_offset(1)))?;
    poll_nic_or_halt(a, &mut top, &mut got)?;
    a.cmp(eax, REQUEST_BYTES as u32)?;
    a.jb(top)?;
    read_request(a)?;
    a.test(r12, r12)?;
    a.jz(top)?;
    acquire(a)?;
    let mut fresh = a.create_label();
    let mut unlock = a.create_label();
    a.mov(rbx, r12)?;
    a.and(rbx, (TABLE_ENTRIES - 1) as i32)?;
    a.shl(rbx, 4)?;
    a.add(rbx, off(TABLE))?;
    a.cmp(qword_ptr(r8 + rbx), r12)?;
    a.jne(fresh)?;
    a.mov(rbp, qword_ptr(r8 + rbx + 8))?;
    a.jmp(unlock)?;
    a.set_label(&mut fresh)?;
    decide(a)?;
    a.mov(rbp, qword_ptr(r8 + off(SEQ)))?;
    a.inc(rbp)?;
    a.mov(qword_ptr(r8 + off(SEQ)), rbp)?;
    journal(a)?;
    a.mov(rax, r15)?;
    a.shl(rax, 32)?;
    a.or(rbp, rax)?;
    a.mov(qword_ptr(r8 + rbx), r12)?;
    a.mov(qword_ptr(r8 + rbx + 8), rbp)?;
    a.set_label(&mut unlock)?;
    a.mov(qword_ptr(r8 + off(LOCK)), 0)?;
    reply(a)?;
    a.jmp(top)?;
    Ok(())
}

/// Reads two dwords from the rx data port into `dst` (low, then high).
fn in_u64(
    a: &mut CodeAssembler,
    dst: AsmRegister64,
    dst32: AsmRegister32,
) -> Result<(), IcedError> {
    a.in_(eax, dx)?;
    a.mov(dst32, eax)?;
    a.in_(eax, dx)?;
    a.shl(rax, 32)?;
    a.or(dst, rax)?;
    Ok(())
}

fn read_request(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(edx, u32::from(PORT_NIC_RX_DATA))?;
    in_u64(a, r12, r12d)?;
    a.in_(eax, dx)?;
    a.mov(r13d, eax)?;
    a.in_(eax, dx)?;
    a.mov(r14d, eax)?;
    in_u64(a, r11, r11d)?;
    a.in_(eax, dx)?;
    a.in_(eax, dx)?;
    Ok(())
}

fn acquire(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut again = a.create_label();
    let mut spin = a.create_label();
    let mut locked = a.create_label();
    a.set_label(&mut again)?;
    a.xor(eax, eax)?;
    a.lea(rcx, qword_ptr(rdi + 1))?;
    a.lock().cmpxchg(qword_ptr(r8 + off(LOCK)), rcx)?;
    a.je(locked)?;
    a.inc(qword_ptr(r8 + rdi * 8 + off(CONTENDED)))?;
    a.set_label(&mut spin)?;
    a.pause()?;
    a.cmp(qword_ptr(r8 + off(LOCK)), 0)?;
    a.jne(spin)?;
    a.jmp(again)?;
    a.set_label(&mut locked)?;
    Ok(())
}

/// Sets r15 to the decision and applies an accepted transfer.
fn decide(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut decided = a.create_label();
    a.mov(r15d, STATUS_INVALID)?;
    a.cmp(r13, r9)?;
    a.jae(decided)?;
    a.cmp(r14, r9)?;
    a.jae(decided)?;
    a.mov(r15d, STATUS_REJECTED)?;
    a.mov(rax, qword_ptr(r8 + r13 * 8 + off(BALANCES)))?;
    a.add(rax, r10)?;
    a.cmp(rax, r11)?;
    a.jb(decided)?;
    a.sub(qword_ptr(r8 + r13 * 8 + off(BALANCES)), r11)?;
    a.add(qword_ptr(r8 + r14 * 8 + off(BALANCES)), r11)?;
    a.mov(r15d, STATUS_APPLIED)?;
    a.set_label(&mut decided)?;
    Ok(())
}

fn out_port(a: &mut CodeAssembler, port: u16) -> Result<(), IcedError> {
    a.mov(edx, u32::from(port))?;
    a.out(dx, eax)?;
    Ok(())
}

/// Writes journal record rbp - 1: read its block, patch 32 bytes, write.
fn journal(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.lea(rcx, qword_ptr(rbp - 1))?;
    a.mov(rax, rcx)?;
    a.shr(rax, 4)?;
    out_port(a, PORT_DISK_BLOCK)?;
    a.mov(eax, DISK_CMD_READ)?;
    out_port(a, PORT_DISK_CMD)?;
    a.mov(eax, ecx)?;
    a.and(eax, (RECORDS_PER_BLOCK - 1) as u32)?;
    a.shl(eax, 5)?;
    out_port(a, PORT_DISK_OFFSET)?;
    a.mov(edx, u32::from(PORT_DISK_DATA))?;
    out_low_half(a, ebp)?;
    out_u64(a, r12, r12d)?;
    a.movzx(eax, r14w)?;
    a.shl(eax, 16)?;
    a.movzx(ecx, r13w)?;
    a.or(eax, ecx)?;
    a.out(dx, eax)?;
    a.mov(eax, r15d)?;
    a.out(dx, eax)?;
    out_u64(a, r11, r11d)?;
    a.mov(eax, DISK_CMD_WRITE)?;
    out_port(a, PORT_DISK_CMD)?;
    Ok(())
}

/// Writes `src` to port dx as two dwords, low then high.
fn out_u64(
    a: &mut CodeAssembler,
    src: AsmRegister64,
    src32: AsmRegister32,
) -> Result<(), IcedError> {
    a.mov(eax, src32)?;
    a.out(dx, eax)?;
    a.mov(rax, src)?;
    a.shr(rax, 32)?;
    a.out(dx, eax)?;
    Ok(())
}

/// Writes `src32` zero-extended to 64 bits to port dx as two dwords.
fn out_low_half(a: &mut CodeAssembler, src32: AsmRegister32) -> Result<(), IcedError> {
    a.mov(eax, src32)?;
    a.out(dx, eax)?;
    a.xor(eax, eax)?;
    a.out(dx, eax)?;
    Ok(())
}

/// Sends `id | seq | status` from r12 and rbp.
fn reply(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(edx, u32::from(PORT_NIC_TX_DATA))?;
    out_u64(a, r12, r12d)?;
    out_low_half(a, ebp)?;
    a.mov(rax, rbp)?;
    a.shr(rax, 32)?;
    out_low_half(a, eax)?;
    a.mov(eax, REPLY_BYTES as u32)?;
    out_port(a, PORT_NIC_TX_SEND)?;
    Ok(())
}
