//! The 16550A UART on COM1 (ports 0x3f8..=0x3ff, IRQ 4): vm-superio's
//! `Serial` does the registers; this wraps it so its output lands in a
//! buffer the platform drains into the console, its interrupt becomes an
//! edge on the I/O APIC's pin, and its state is saved in the checkpoint.

use std::cell::Cell;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::codec::{DecodeError, Reader, Writer};

/// COM1's first port.
pub const COM1_BASE: u16 = 0x3f8;
/// COM1's ports.
pub const COM1_PORTS: u16 = 8;
/// The ISA IRQ (and I/O APIC pin) of COM1.
pub const COM1_IRQ: usize = 4;
/// The UART's receive FIFO (vm-superio's).
pub const RX_FIFO_BYTES: usize = 64;

/// vm-superio signals an interrupt by calling its trigger; this one only
/// counts, and the platform turns each count into an edge on the pin.
#[derive(Debug, Default)]
struct Edges(Cell<u32>);

impl Trigger for Edges {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.set(self.0.get().saturating_add(1));
        Ok(())
    }
}

/// The UART's transmitted bytes, until the platform drains them.
#[derive(Debug, Default)]
struct Sent(Vec<u8>);

impl std::io::Write for Sent {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The COM1 UART.
#[derive(Debug)]
pub struct Uart {
    serial: Serial<Edges, NoEvents, Sent>,
}

impl Default for Uart {
    fn default() -> Uart {
        Uart {
            serial: Serial::new(Edges::default(), Sent::default()),
        }
    }
}

impl PartialEq for Uart {
    fn eq(&self, other: &Uart) -> bool {
        self.serial.state() == other.serial.state()
    }
}

/// What an access did besides its value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UartEffect {
    /// Bytes transmitted (console output).
    pub sent: Vec<u8>,
    /// Whether the UART raised its interrupt (an edge on its pin).
    pub interrupt: bool,
}

impl Uart {
    /// A guest `in` of the register at `offset` (0..8).
    pub fn read(&mut self, offset: u8) -> (u8, UartEffect) {
        let value = self.serial.read(offset);
        (value, self.effect())
    }

    /// A guest `out` of `value` to the register at `offset` (0..8).
    pub fn write(&mut self, offset: u8, value: u8) -> UartEffect {
        self.serial
            .write(offset, value)
            .expect("the trigger only counts and the output is a Vec: neither fails");
        self.effect()
    }

    /// The host types `bytes` (as many as the receive FIFO takes): the
    /// number taken.
    pub fn receive(&mut self, bytes: &[u8]) -> (usize, UartEffect) {
        let room = self.serial.fifo_capacity().min(bytes.len());
        let taken = if room == 0 {
            0
        } else {
            self.serial.enqueue_raw_bytes(&bytes[..room]).unwrap_or(0)
        };
        (taken, self.effect())
    }

    fn effect(&mut self) -> UartEffect {
        let edges = self.serial.interrupt_evt().0.replace(0);
        UartEffect {
            sent: std::mem::take(&mut self.serial.writer_mut().0),
            interrupt: edges > 0,
        }
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        let state = self.serial.state();
        for byte in [
            state.baud_divisor_low,
            state.baud_divisor_high,
            state.interrupt_enable,
            state.interrupt_identification,
            state.line_control,
            state.line_status,
            state.modem_control,
            state.modem_status,
            state.scratch,
        ] {
            w.u8(byte);
        }
        w.blob(&state.in_buffer);
    }

    pub(crate) fn restore(r: &mut Reader<'_>) -> Result<Uart, DecodeError> {
        let mut regs = [0u8; 9];
        for byte in &mut regs {
            *byte = r.u8()?;
        }
        let in_buffer = r.blob()?;
        if in_buffer.len() > RX_FIFO_BYTES {
            return Err(DecodeError::Invalid(format!(
                "UART holds {} received bytes, its FIFO {RX_FIFO_BYTES}",
                in_buffer.len()
            )));
        }
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            regs;
        let state = SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: in_buffer.to_vec(),
        };
        let serial = Serial::from_state(&state, Edges::default(), NoEvents, Sent::default())
            .map_err(|e| DecodeError::Invalid(format!("UART state: {e:?}")))?;
        // `from_state` re-raises a pending interrupt; the checkpoint's
        // local APIC state already holds the one that was raised.
        serial.interrupt_evt().0.set(0);
        Ok(Uart { serial })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THR: u8 = 0;
    const IER: u8 = 1;
    const IIR: u8 = 2;
    const LCR: u8 = 3;
    const LSR: u8 = 5;
    const SCR: u8 = 7;

    #[test]
    fn transmitted_bytes_come_out_and_the_divisor_latch_hides_the_data_port() {
        let mut uart = Uart::default();
        assert_eq!(uart.write(THR, b'h').sent, b"h");
        uart.write(LCR, 0x80); // DLAB
        assert!(
            uart.write(THR, 0x01).sent.is_empty(),
            "divisor low, not data"
        );
        assert_eq!(uart.read(THR).0, 0x01);
        uart.write(LCR, 0x03);
        assert_eq!(uart.write(THR, b'i').sent, b"i");
        let (lsr, _) = uart.read(LSR);
        assert_eq!(lsr & 0x60, 0x60, "transmitter empty and idle");
        uart.write(SCR, 0x5a);
        assert_eq!(uart.read(SCR).0, 0x5a);
    }

    #[test]
    fn the_thr_empty_interrupt_is_raised_when_enabled() {
        let mut uart = Uart::default();
        assert!(!uart.write(THR, b'a').interrupt, "IER off");
        let enable = uart.write(IER, 0x02);
        assert!(
            enable.interrupt,
            "enabling THRE with the holding register empty raises it"
        );
        let (iir, _) = uart.read(IIR);
        assert_eq!(iir & 0x0f, 0x02, "THR empty identified");
        assert_eq!(uart.read(IIR).0 & 0x01, 0x01, "reading IIR cleared it");
        assert!(
            uart.write(THR, b'b').interrupt,
            "each byte sent raises it again"
        );
    }

    #[test]
    fn received_bytes_raise_the_data_interrupt_and_read_in_order() {
        let mut uart = Uart::default();
        uart.write(IER, 0x01);
        let (taken, effect) = uart.receive(b"ok");
        assert_eq!(taken, 2);
        assert!(effect.interrupt);
        assert_eq!(uart.read(LSR).0 & 1, 1, "data ready");
        assert_eq!(uart.read(THR).0, b'o');
        assert_eq!(uart.read(THR).0, b'k');
        assert_eq!(uart.read(LSR).0 & 1, 0);
        let (taken, _) = uart.receive(&[0; 100]);
        assert_eq!(taken, RX_FIFO_BYTES, "the FIFO's room");
        assert_eq!(uart.receive(b"x").0, 0, "a full FIFO takes nothing");
    }

    #[test]
    fn state_round_trips_without_a_second_interrupt() {
        let mut uart = Uart::default();
        uart.write(LCR, 0x83);
        uart.write(THR, 0x0c);
        uart.write(LCR, 0x03);
        uart.write(IER, 0x03);
        uart.receive(b"abc");
        let mut w = Writer::new();
        uart.save(&mut w);
        let bytes = w.into_bytes();
        let mut back = Uart::restore(&mut Reader::new(&bytes)).expect("decodes");
        assert_eq!(back, uart);
        assert!(
            !back.effect().interrupt,
            "the restored UART raises nothing by itself"
        );
        assert_eq!(back.read(THR).0, b'a');
        let mut overfull = bytes[..9].to_vec();
        overfull.extend_from_slice(&65u32.to_le_bytes());
        overfull.extend_from_slice(&[0; 65]);
        let error = Uart::restore(&mut Reader::new(&overfull)).unwrap_err();
        assert!(error.to_string().contains("FIFO"), "{error}");
    }
}
