//! The console: a bounded byte sink the host drains.

use crate::codec::{DecodeError, Reader, Writer};

/// Most bytes held before the host drains them; more are dropped and counted.
pub const CONSOLE_BYTES_MAX: usize = 64 * 1024;

/// Console output device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Console {
    held: Vec<u8>,
    dropped_bytes: u64,
}

impl Console {
    /// The guest wrote a byte.
    pub fn write(&mut self, byte: u8) {
        if self.held.len() < CONSOLE_BYTES_MAX {
            self.held.push(byte);
        } else {
            self.dropped_bytes += 1;
        }
        assert!(self.held.len() <= CONSOLE_BYTES_MAX);
    }

    /// Takes the bytes written since the last call.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Bytes dropped because the host did not drain in time.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        w.blob(&self.held);
        w.u64(self.dropped_bytes);
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<Console, DecodeError> {
        let held = r.blob()?.to_vec();
        if held.len() > CONSOLE_BYTES_MAX {
            return Err(DecodeError::Invalid("console overfull".into()));
        }
        Ok(Console {
            held,
            dropped_bytes: r.u64()?,
        })
    }
}
