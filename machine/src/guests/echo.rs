//! `echo`: every vCPU takes packets from the NIC and sends them back
//! unchanged; with nothing to do it halts until a packet arrives.

use iced_x86::code_asm::*;

use super::poll_nic_or_halt;
use crate::devices::{PORT_NIC_RX_DATA, PORT_NIC_TX_DATA, PORT_NIC_TX_SEND};

/// Emits the guest.
pub fn assemble(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut got = a.create_label();
    let mut copy = a.create_label();
    let mut send = a.create_label();
    poll_nic_or_halt(a, &mut top, &mut got)?;
    a.mov(ebx, eax)?;
    a.lea(ecx, dword_ptr(rax + 3))?;
    a.shr(ecx, 2)?;
    a.set_label(&mut copy)?;
    a.test(ecx, ecx)?;
    a.jz(send)?;
    a.mov(edx, u32::from(PORT_NIC_RX_DATA))?;
    a.in_(eax, dx)?;
    a.mov(edx, u32::from(PORT_NIC_TX_DATA))?;
    a.out(dx, eax)?;
    a.dec(ecx)?;
    a.jmp(copy)?;
    a.set_label(&mut send)?;
    a.mov(eax, ebx)?;
    a.mov(edx, u32::from(PORT_NIC_TX_SEND))?;
    a.out(dx, eax)?;
    a.jmp(top)?;
    Ok(())
}
