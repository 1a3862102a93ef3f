//! The NIC: bounded rx and tx packet queues, and one rx and one tx slot per
//! vCPU that the guest fills or drains 4 bytes per port access.

use std::collections::VecDeque;

use crate::codec::{DecodeError, Reader, Writer};

/// Largest packet in bytes of the port NIC (Lockstep's own guests read
/// it into fixed buffers of this size).
pub const PACKET_BYTES_MAX: usize = 256;
/// Largest packet of a NIC behind virtio-net: an Ethernet frame without
/// its FCS at the standard 1500-byte MTU (14 + 1500).
pub const FRAME_BYTES_MAX: usize = 1514;
/// Most packets waiting for the guest.
pub const RX_QUEUE_MAX: usize = 64;
/// Most packets waiting for the host.
pub const TX_QUEUE_MAX: usize = 1024;

/// One packet's bytes.
pub type Packet = Vec<u8>;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Slot {
    bytes: Vec<u8>,
    cursor: usize,
}

/// The NIC's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    rx: VecDeque<Packet>,
    tx: VecDeque<Packet>,
    rx_slots: Vec<Slot>,
    tx_slots: Vec<Slot>,
    tx_dropped: u64,
    /// The largest packet either way: configuration, not saved state.
    packet_bytes_max: usize,
}

/// The host tried to deliver to a full rx queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NicError {
    /// The rx queue holds `RX_QUEUE_MAX` packets.
    #[error("rx queue full")]
    RxFull,
    /// The packet is longer than `PACKET_BYTES_MAX`.
    #[error("packet of {0} bytes too long")]
    TooLong(usize),
}

impl Nic {
    /// A NIC for `vcpus` vCPUs with empty queues.
    pub fn new(vcpus: u16) -> Nic {
        Nic {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            rx_slots: vec![Slot::default(); usize::from(vcpus)],
            tx_slots: vec![Slot::default(); usize::from(vcpus)],
            tx_dropped: 0,
            packet_bytes_max: PACKET_BYTES_MAX,
        }
    }

    /// This NIC carrying packets of up to `packet_bytes_max` bytes (at
    /// most [`FRAME_BYTES_MAX`]): whole Ethernet frames for virtio-net.
    pub fn with_packet_bytes_max(mut self, packet_bytes_max: usize) -> Nic {
        assert!((PACKET_BYTES_MAX..=FRAME_BYTES_MAX).contains(&packet_bytes_max));
        self.packet_bytes_max = packet_bytes_max;
        self
    }

    /// The largest packet it carries.
    pub fn packet_bytes_max(&self) -> usize {
        self.packet_bytes_max
    }

    /// The host delivers a packet to the guest.
    pub fn deliver(&mut self, packet: Packet) -> Result<(), NicError> {
        if packet.len() > self.packet_bytes_max {
            return Err(NicError::TooLong(packet.len()));
        }
        if self.rx.len() >= RX_QUEUE_MAX {
            return Err(NicError::RxFull);
        }
        self.rx.push_back(packet);
        Ok(())
    }

    /// Packets waiting for the guest.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// Takes the packets the guest sent.
    pub fn take_tx(&mut self) -> Vec<Packet> {
        self.tx.drain(..).collect()
    }

    /// Packets the guest sent while the tx queue was full.
    pub fn tx_dropped(&self) -> u64 {
        self.tx_dropped
    }

    /// The next packet for the guest, if one waits.
    pub(crate) fn rx_front(&self) -> Option<&Packet> {
        self.rx.front()
    }

    /// Takes the next packet for the guest.
    pub(crate) fn rx_take(&mut self) -> Option<Packet> {
        self.rx.pop_front()
    }

    /// The guest sends `packet` (at most the NIC's largest): queued for
    /// the host, or dropped and counted while the tx queue is full.
    pub(crate) fn send(&mut self, packet: Packet) {
        assert!(packet.len() <= self.packet_bytes_max);
        if self.tx.len() < TX_QUEUE_MAX {
            self.tx.push_back(packet);
        } else {
            self.tx_dropped += 1;
        }
    }

    pub(crate) fn rx_pop(&mut self, vcpu: usize) -> u32 {
        let slot = &mut self.rx_slots[vcpu];
        *slot = Slot::default();
        match self.rx.pop_front() {
            Some(packet) => {
                slot.bytes = packet;
                u32::try_from(slot.bytes.len()).expect("packets are short")
            }
            None => 0,
        }
    }

    pub(crate) fn rx_data(&mut self, vcpu: usize) -> u32 {
        let max = self.packet_bytes_max;
        let slot = &mut self.rx_slots[vcpu];
        let mut word = [0u8; 4];
        for byte in &mut word {
            if let Some(value) = slot.bytes.get(slot.cursor) {
                *byte = *value;
            }
            slot.cursor = (slot.cursor + 1).min(max);
        }
        u32::from_le_bytes(word)
    }

    pub(crate) fn tx_data(&mut self, vcpu: usize, value: u32) {
        let max = self.packet_bytes_max;
        let slot = &mut self.tx_slots[vcpu];
        if slot.bytes.len() + 4 <= max {
            slot.bytes.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(crate) fn tx_send(&mut self, vcpu: usize, len: u32) {
        let mut bytes = std::mem::take(&mut self.tx_slots[vcpu].bytes);
        bytes.truncate(len as usize);
        self.send(bytes);
    }

    pub(crate) fn save(&self, w: &mut Writer) {
        for queue in [&self.rx, &self.tx] {
            w.u32(u32::try_from(queue.len()).expect("bounded queue"));
            for packet in queue {
                w.blob(packet);
            }
        }
        for slot in self.rx_slots.iter().chain(&self.tx_slots) {
            w.blob(&slot.bytes);
            w.u32(u32::try_from(slot.cursor).expect("cursor below packet size"));
        }
        w.u64(self.tx_dropped);
    }

    /// Decodes a saved NIC carrying packets of up to `packet_bytes_max`.
    pub(crate) fn restore(
        r: &mut Reader<'_>,
        vcpus: u16,
        packet_bytes_max: usize,
    ) -> Result<Nic, DecodeError> {
        let mut nic = Nic::new(vcpus).with_packet_bytes_max(packet_bytes_max);
        for (queue, max) in [(&mut nic.rx, RX_QUEUE_MAX), (&mut nic.tx, TX_QUEUE_MAX)] {
            for _ in 0..r.count(max)? {
                queue.push_back(packet(r, packet_bytes_max)?);
            }
        }
        for slot in nic.rx_slots.iter_mut().chain(nic.tx_slots.iter_mut()) {
            slot.bytes = packet(r, packet_bytes_max)?;
            slot.cursor = r.u32()? as usize;
            if slot.cursor > packet_bytes_max {
                return Err(DecodeError::Invalid("nic cursor".into()));
            }
        }
        nic.tx_dropped = r.u64()?;
        Ok(nic)
    }
}

fn packet(r: &mut Reader<'_>, packet_bytes_max: usize) -> Result<Packet, DecodeError> {
    let bytes = r.blob()?;
    if bytes.len() > packet_bytes_max {
        return Err(DecodeError::Invalid("packet too long".into()));
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_vcpu_slots_do_not_interleave() {
        let mut nic = Nic::new(2);
        nic.deliver(vec![1, 2, 3, 4, 5]).expect("room");
        nic.deliver(vec![9; 8]).expect("room");
        assert_eq!(nic.rx_pop(0), 5);
        assert_eq!(nic.rx_pop(1), 8);
        assert_eq!(nic.rx_data(1), 0x0909_0909);
        assert_eq!(nic.rx_data(0), 0x0403_0201);
        assert_eq!(nic.rx_data(0), 5);
        assert_eq!(nic.rx_pop(0), 0);
    }

    #[test]
    fn rx_queue_is_bounded() {
        let mut nic = Nic::new(1);
        for _ in 0..RX_QUEUE_MAX {
            nic.deliver(vec![0]).expect("room");
        }
        assert_eq!(nic.deliver(vec![0]), Err(NicError::RxFull));
        assert_eq!(
            nic.deliver(vec![0; PACKET_BYTES_MAX + 1]),
            Err(NicError::TooLong(PACKET_BYTES_MAX + 1))
        );
    }

    #[test]
    fn tx_truncates_to_length_and_saves() {
        let mut nic = Nic::new(1);
        nic.tx_data(0, 0x0403_0201);
        nic.tx_data(0, 0x0807_0605);
        nic.tx_send(0, 6);
        let mut w = Writer::new();
        nic.save(&mut w);
        let bytes = w.into_bytes();
        let mut restored =
            Nic::restore(&mut Reader::new(&bytes), 1, PACKET_BYTES_MAX).expect("decodes");
        assert_eq!(restored, nic);
        assert_eq!(restored.take_tx(), vec![vec![1, 2, 3, 4, 5, 6]]);
    }
}
