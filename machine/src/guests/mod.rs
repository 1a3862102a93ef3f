//! Guest images, assembled from the source in this module with iced-x86's
//! `code_asm`, so the same source always gives the same bytes. Every vCPU
//! enters at [`GUEST_CODE`] in long mode with rdi = its index and rsi = the
//! boot info page (see [`crate::boot`]).

pub mod compute;
pub mod dirtier;
pub mod echo;
pub mod ledger;
pub mod ledger_load;

use iced_x86::code_asm::{dx, eax, edx, CodeAssembler, CodeLabel};

use crate::devices::PORT_NIC_RX_POP;
use iced_x86::IcedError;

use crate::boot::{write_boot_state, BOOT_INFO_PARAMS, BOOT_PARAMS};
use crate::layout::{Shape, GUEST_CODE, GUEST_CODE_BYTES_MAX};

/// Error building a guest image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuestError {
    /// The assembler rejected the source.
    #[error("assembler: {0}")]
    Assemble(String),
    /// The image is too large for its region.
    #[error("image of {0} bytes exceeds the code region")]
    TooLarge(usize),
    /// No guest of that name.
    #[error("unknown guest {0:?} (known: ledger, dirtier, echo, compute)")]
    Unknown(String),
}

impl From<IcedError> for GuestError {
    fn from(error: IcedError) -> GuestError {
        GuestError::Assemble(error.to_string())
    }
}

/// The guest programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// Multi-vCPU bank ledger serving transfer requests from the NIC.
    Ledger,
    /// Writes K pages per millisecond of guest time.
    Dirtier,
    /// Sends every received packet back.
    Echo,
    /// CPU-bound loop with a checkable result.
    Compute,
}

impl std::str::FromStr for Guest {
    type Err = GuestError;

    fn from_str(name: &str) -> Result<Guest, GuestError> {
        match name {
            "ledger" => Ok(Guest::Ledger),
            "dirtier" => Ok(Guest::Dirtier),
            "echo" => Ok(Guest::Echo),
            "compute" => Ok(Guest::Compute),
            other => Err(GuestError::Unknown(other.to_string())),
        }
    }
}

/// A guest's code and the parameters it reads from the boot info page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    /// Machine code, loaded at [`GUEST_CODE`].
    pub code: Vec<u8>,
    /// The boot info parameters.
    pub params: [u64; BOOT_PARAMS],
}

impl Guest {
    /// Assembles this guest with its parameters.
    pub fn image(self, params: [u64; BOOT_PARAMS]) -> Result<GuestImage, GuestError> {
        let mut a = CodeAssembler::new(64)?;
        match self {
            Guest::Ledger => ledger::assemble(&mut a)?,
            Guest::Dirtier => dirtier::assemble(&mut a)?,
            Guest::Echo => echo::assemble(&mut a)?,
            Guest::Compute => compute::assemble(&mut a)?,
        }
        let code = a.assemble(GUEST_CODE.0)?;
        if code.len() as u64 > GUEST_CODE_BYTES_MAX {
            return Err(GuestError::TooLarge(code.len()));
        }
        Ok(GuestImage { code, params })
    }
}

impl GuestImage {
    /// The machine's memory at boot: boot structures plus this image.
    pub fn boot_memory(&self, shape: &Shape) -> Vec<u8> {
        let mut memory = vec![0u8; usize::try_from(shape.memory_bytes()).expect("fits host")];
        write_boot_state(&mut memory, shape, &self.params);
        let start = usize::try_from(GUEST_CODE.0).expect("small");
        memory[start..start + self.code.len()].copy_from_slice(&self.code);
        memory
    }
}

/// Emits the receive loop head: at `top`, pop a packet; if there is none,
/// `hlt` and retry; with one, go on at `got` with its length in eax.
pub(crate) fn poll_nic_or_halt(
    a: &mut CodeAssembler,
    top: &mut CodeLabel,
    got: &mut CodeLabel,
) -> Result<(), IcedError> {
    a.set_label(top)?;
    a.mov(edx, u32::from(PORT_NIC_RX_POP))?;
    a.in_(eax, dx)?;
    a.test(eax, eax)?;
    a.jnz(*got)?;
    a.hlt()?;
    a.jmp(*top)?;
    a.set_label(got)?;
    Ok(())
}

/// The memory operand offset of boot parameter `i` from rsi.
pub(crate) fn param_offset(i: usize) -> i32 {
    assert!(i < BOOT_PARAMS);
    i32::try_from(BOOT_INFO_PARAMS).expect("small") + 8 * i32::try_from(i).expect("small")
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    #[test]
    fn images_are_reproducible_and_decode() {
        for guest in [Guest::Ledger, Guest::Dirtier, Guest::Echo, Guest::Compute] {
            let one = guest.image([1; BOOT_PARAMS]).expect("assembles");
            let two = guest.image([1; BOOT_PARAMS]).expect("assembles");
            assert_eq!(one, two);
            let mut decoder = Decoder::with_ip(64, &one.code, GUEST_CODE.0, DecoderOptions::NONE);
            for instruction in &mut decoder {
                assert_ne!(instruction.mnemonic(), Mnemonic::INVALID, "{guest:?}");
            }
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!("ledger".parse::<Guest>(), Ok(Guest::Ledger));
        assert!("nope".parse::<Guest>().is_err());
    }
}

#[cfg(test)]
mod pinned {
    use super::*;

    /// The images' checksums. Assembling is reproducible, so these only
    /// change when a guest's source (or the assembler's output) does;
    /// update them deliberately.
    #[test]
    fn images_match_their_pinned_checksums() {
        let pins = [
            (Guest::Ledger, 0x4640_604f_u32),
            (Guest::Dirtier, 0xf752_eec0),
            (Guest::Echo, 0xa1d4_74f1),
            (Guest::Compute, 0x26e0_5b1a),
        ];
        let mut actual = Vec::new();
        for (guest, _) in pins {
            let image = guest.image([0; BOOT_PARAMS]).expect("assembles");
            actual.push((guest, crc32c::crc32c(&image.code)));
        }
        assert_eq!(actual, pins.to_vec());
    }
}
