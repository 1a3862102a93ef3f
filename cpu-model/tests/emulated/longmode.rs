//! A raw unicorn instance in long mode with 4-level page tables of 4 KiB
//! pages and a GDT with ring-3 segments: the ground on which
//! `exceptions.rs` establishes what unicorn reports, shared with the
//! delivery probe of the proposed engine (`cpu-model/proto/`).

use iced_x86::code_asm::{CodeAssembler, CodeAssemblerResult, IcedError};
use iced_x86::BlockEncoderOptions;
use unicorn_engine::unicorn_const::{Arch, Mode, Prot, X86CpuModel};
use unicorn_engine::{RegisterX86, Unicorn};

pub const RAM_BYTES: u64 = 4 << 20;
pub const PML4: u64 = 0x1000;
pub const PDPT: u64 = 0x2000;
pub const PD: u64 = 0x3000;
/// Two page tables: 0..2 MiB and 2..4 MiB, 4 KiB pages.
pub const PT: u64 = 0x4000;
pub const GDT: u64 = 0x6000;
pub const KERNEL_STACK_TOP: u64 = 0x9_0000;
pub const KERNEL_CODE: u64 = 0x10_0000;
pub const USER_CODE: u64 = 0x20_0000;
/// The user pages run from USER_CODE up to this; the user stack is the
/// page below it.
pub const USER_STACK_TOP: u64 = 0x21_1000;
/// Supervisor, writable.
pub const DATA: u64 = 0x30_0000;
/// Not present in every guest; DATA is the page below it.
pub const ABSENT: u64 = 0x30_1000;
/// Present, supervisor, read-only.
pub const READ_ONLY: u64 = 0x30_2000;

const PRESENT: u64 = 0x1;
const WRITABLE: u64 = 0x2;
const USER: u64 = 0x4;
/// Accessed and dirty, so the walker never writes the tables.
const ACCESSED_DIRTY: u64 = 0x60;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_SS: u16 = 0x10;
pub const USER_SS: u16 = 0x2b;
pub const USER_CS: u16 = 0x33;
/// null, kernel code, kernel data, unused, unused, user data, user code.
pub const GDT_ENTRIES: [u64; 7] = [
    0,
    0x00AF_9A00_0000_FFFF,
    0x00CF_9200_0000_FFFF,
    0,
    0,
    0x00CF_F200_0000_FFFF,
    0x00AF_FA00_0000_FFFF,
];

pub fn put(memory: &mut [u8], at: u64, value: u64) {
    let at = usize::try_from(at).expect("in memory");
    memory[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Guest memory with the page tables and the GDT; the pages of `absent`
/// (and ABSENT) are not present.
pub fn memory(absent: &[u64]) -> Vec<u8> {
    let mut memory = vec![0u8; RAM_BYTES as usize];
    let upper = PRESENT | WRITABLE | USER | ACCESSED_DIRTY;
    put(&mut memory, PML4, PDPT | upper);
    put(&mut memory, PDPT, PD | upper);
    put(&mut memory, PD, PT | upper);
    put(&mut memory, PD + 8, (PT + 0x1000) | upper);
    for page in 0..RAM_BYTES / 0x1000 {
        let gpa = page * 0x1000;
        let user = (USER_CODE..USER_STACK_TOP).contains(&gpa);
        let entry = match gpa {
            _ if gpa == ABSENT || absent.contains(&gpa) => 0,
            READ_ONLY => gpa | PRESENT | ACCESSED_DIRTY,
            _ if user => gpa | PRESENT | WRITABLE | USER | ACCESSED_DIRTY,
            _ => gpa | PRESENT | WRITABLE | ACCESSED_DIRTY,
        };
        put(&mut memory, PT + 8 * page, entry);
    }
    for (i, entry) in GDT_ENTRIES.iter().enumerate() {
        put(&mut memory, GDT + 8 * i as u64, *entry);
    }
    memory
}

/// Assembles `a` at `ip` into `memory`, keeping label addresses.
pub fn assemble_into(memory: &mut [u8], ip: u64, mut a: CodeAssembler) -> CodeAssemblerResult {
    let result = a
        .assemble_options(ip, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)
        .expect("assembles");
    let code = &result.inner.code_buffer;
    let at = usize::try_from(ip).expect("in memory");
    memory[at..at + code.len()].copy_from_slice(code);
    result
}

/// uc_x86_mmr: selector u16, base u64 at 8, limit u32 at 16, flags u32.
pub fn mmr(selector: u16, base: u64, limit: u32, flags: u32) -> [u8; 24] {
    let mut bytes = [0u8; 24];
    bytes[0..2].copy_from_slice(&selector.to_le_bytes());
    bytes[8..16].copy_from_slice(&base.to_le_bytes());
    bytes[16..20].copy_from_slice(&limit.to_le_bytes());
    bytes[20..24].copy_from_slice(&flags.to_le_bytes());
    bytes
}

/// uc_x86_msr: rid u32, value u64 at 8.
pub fn msr(id: u32, value: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&id.to_le_bytes());
    bytes[8..16].copy_from_slice(&value.to_le_bytes());
    bytes
}

/// An instance on `memory`, in ring 0 at KERNEL_CODE: paging on, GDTR
/// loaded, CS and SS holding the kernel's selectors (unicorn's boot
/// descriptor caches already are flat ring-0 64-bit ones; only the
/// selectors are written, which is all `uc_reg_write` does in 64-bit mode).
pub fn instance(memory: &[u8]) -> Unicorn<'static, ()> {
    let mut uc = Unicorn::new(Arch::X86, Mode::MODE_64).expect("instance");
    uc.ctl_set_cpu_model(X86CpuModel::QEMU64 as i32)
        .expect("cpu model");
    uc.mem_map(0, RAM_BYTES, Prot::ALL).expect("maps");
    uc.mem_write(0, memory).expect("writes");
    let gdt_limit = u32::try_from(8 * GDT_ENTRIES.len() - 1).expect("small");
    uc.reg_write_long(RegisterX86::GDTR, &mmr(0, GDT, gdt_limit, 0))
        .expect("gdtr");
    uc.reg_write(RegisterX86::CR3, PML4).expect("cr3");
    uc.reg_write(RegisterX86::CR4, 0x620).expect("cr4");
    uc.reg_write(RegisterX86::CR0, 0x8001_0033).expect("cr0");
    uc.reg_write(RegisterX86::CS, u64::from(KERNEL_CS))
        .expect("cs");
    uc.reg_write(RegisterX86::SS, u64::from(KERNEL_SS))
        .expect("ss");
    uc.reg_write(RegisterX86::RSP, KERNEL_STACK_TOP)
        .expect("rsp");
    uc.reg_write(RegisterX86::RIP, KERNEL_CODE).expect("rip");
    uc
}

/// iretq to USER_CODE in ring 3, interrupts off.
pub fn enter_user(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.push(i32::from(USER_SS))?;
    a.push(USER_STACK_TOP as i32)?;
    a.push(0x2)?;
    a.push(i32::from(USER_CS))?;
    a.push(USER_CODE as i32)?;
    a.iretq()
}
