//! The host's side of the Linux guest's network: one seam, [`ClientLink`],
//! through which a client's request payload becomes what the guest's NIC
//! receives and what the guest transmits becomes the clients' reply
//! payloads.
//!
//! Lockstep's assembled guests read request payloads straight off the port
//! NIC, so for them the seam is the identity. The Linux guest has a kernel
//! network stack behind virtio-net: it wants Ethernet frames, and it has
//! to resolve the host's address before it can answer. For it the seam is
//! a tiny, fixed host on the other end of the wire ([`UdpLink`]): a
//! payload goes in as a UDP datagram from the host's address and port to
//! the ledger's, the guest's ARP requests for the host's address are
//! answered into its receive queue at the moment the host sees them, and
//! its UDP datagrams to the host's port come back out as payloads.
//! Everything else the guest sends (IPv6 router solicitations and
//! multicast listener reports, ARP for other addresses, other protocols or
//! ports, malformed frames) is dropped and counted, never a panic.
//!
//! The seam holds no state the guest could observe or a checkpoint would
//! have to carry: every address is fixed, the host keeps no ARP cache
//! (the guest's MAC is the machine's configured virtio MAC), and an ARP
//! answer goes into the NIC's receive queue, which the checkpoint carries
//! already. Its [`LinkCounts`] are diagnostics, like the virtio devices'
//! counts: a restored machine starts them from zero.
//!
//! Headers and checksums are built and parsed with `etherparse`.

use std::collections::BTreeMap;

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, EtherType, Ethernet2Slice, IpNumber, Ipv4Slice, PacketBuilder,
    UdpSlice,
};

use crate::devices::nic::{Nic, NicError, Packet};

/// The guest's MAC: its virtio NIC's on every Linux machine
/// ([`super::linux_bus`]; locally administered).
pub const GUEST_MAC: [u8; 6] = [0x02, 0x4c, 0x4b, 0x53, 0x54, 0x01];
/// The host's MAC on the guest's link (locally administered).
pub const HOST_MAC: [u8; 6] = [0x02, 0x4c, 0x4b, 0x53, 0x54, 0xfe];
/// The host's IPv4 address on the guest's link: the source of every
/// request and the destination of every reply.
pub const HOST_IPV4: [u8; 4] = [10, 7, 0, 1];
/// The host's UDP port: the source of every request.
pub const HOST_PORT: u16 = 7000;
/// The guest's static IPv4 address (guest-linux/init sets it on eth0).
pub const GUEST_IPV4: [u8; 4] = [10, 7, 0, 2];
/// The length of the link's network prefix (the host's address is on it).
pub const GUEST_PREFIX_LEN: u8 = 24;
/// The ledger's UDP port in the guest (guest-linux/init starts it there).
pub const LEDGER_PORT: u16 = 7000;
/// The time to live of the host's datagrams: one hop, the guest.
const TTL: u8 = 64;
/// Ethernet, IPv4 (no options) and UDP headers around a payload.
pub const UDP_FRAME_OVERHEAD_BYTES: usize = 14 + 20 + 8;

/// Why a frame the guest sent went nowhere, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dropped {
    /// Shorter than its headers say, or headers that do not parse.
    Malformed,
    /// An IPv4 header or UDP checksum that does not add up.
    BadChecksum,
    /// ARP or IPv4 addressed to another MAC than the host's (or, for
    /// IPv4, broadcast).
    NotForHost,
    /// IPv6 (router solicitations, multicast listener reports, duplicate
    /// address detection): the host speaks IPv4 only.
    Ipv6,
    /// Another EtherType than ARP, IPv4 or IPv6 (VLAN-tagged frames too).
    OtherEtherType,
    /// ARP that is not a request for the host's address (a reply, a
    /// gratuitous announcement, a request for another address, or for
    /// another hardware or protocol type).
    ArpNotForHost,
    /// IPv4 to another address than the host's, or from another than
    /// the guest's.
    Ipv4NotForHost,
    /// IPv4 carrying another protocol than UDP (ICMP, IGMP, TCP).
    NotUdp,
    /// An IPv4 fragment: the ledger's replies are far below the MTU.
    Fragment,
    /// UDP to another port than the host's, or from another than the
    /// ledger's.
    OtherPort,
}

/// What the seam did with the guest's frames, for reports. Not machine
/// state: a checkpoint does not carry it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCounts {
    /// Reply payloads handed to the clients.
    pub payloads_out: u64,
    /// The guest's ARP requests for the host's address, answered.
    pub arp_answered: u64,
    /// Of those, answers the NIC's full receive queue had no room for
    /// (the guest asks again).
    pub arp_answers_lost: u64,
    /// Frames dropped, by why.
    pub dropped: BTreeMap<Dropped, u64>,
}

impl LinkCounts {
    /// Frames dropped, of every kind.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    fn drop(&mut self, why: Dropped) {
        *self.dropped.entry(why).or_default() += 1;
    }
}

/// What one frame from the guest is to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromGuest {
    /// A datagram for the clients: its payload.
    Payload(Packet),
    /// An ARP request for the host's address: the frame that answers it.
    ArpRequest(Packet),
    /// Nothing the host takes.
    Dropped(Dropped),
}

/// The fixed host on the Linux guest's link: Ethernet, ARP, IPv4, UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpLink {
    guest_mac: [u8; 6],
}

impl UdpLink {
    /// The host's side of a link to a guest whose NIC has `guest_mac`.
    pub fn new(guest_mac: [u8; 6]) -> UdpLink {
        UdpLink { guest_mac }
    }

    /// The guest's MAC.
    pub fn guest_mac(&self) -> [u8; 6] {
        self.guest_mac
    }

    /// The frame that carries `payload` from the host's port to the
    /// ledger's: `None` if it would not fit a frame of `frame_bytes_max`.
    pub fn request_frame(&self, payload: &[u8], frame_bytes_max: usize) -> Option<Packet> {
        if payload.len() + UDP_FRAME_OVERHEAD_BYTES > frame_bytes_max {
            return None;
        }
        let builder = PacketBuilder::ethernet2(HOST_MAC, self.guest_mac)
            .ipv4(HOST_IPV4, GUEST_IPV4, TTL)
            .udp(HOST_PORT, LEDGER_PORT);
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, payload)
            .expect("a payload below the MTU is a valid datagram");
        Some(frame)
    }

    /// What `frame`, sent by the guest, is to the host.
    pub fn classify(&self, frame: &[u8]) -> FromGuest {
        match self.parse(frame) {
            Ok(what) => what,
            Err(why) => FromGuest::Dropped(why),
        }
    }

    fn parse(&self, frame: &[u8]) -> Result<FromGuest, Dropped> {
        let ethernet =
            Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| Dropped::Malformed)?;
        let to = ethernet.destination();
        let payload = ethernet.payload();
        match payload.ether_type {
            EtherType::IPV6 => Err(Dropped::Ipv6),
            EtherType::ARP if to == HOST_MAC || to == [0xff; 6] => self.arp(payload.payload),
            EtherType::IPV4 if to == HOST_MAC => udp_payload(payload.payload),
            EtherType::ARP | EtherType::IPV4 => Err(Dropped::NotForHost),
            _ => Err(Dropped::OtherEtherType),
        }
    }

    /// The answer to an ARP request for the host's address, to the MAC
    /// and address that asked.
    fn arp(&self, bytes: &[u8]) -> Result<FromGuest, Dropped> {
        let packet = etherparse::ArpPacketSlice::from_slice(bytes)
            .map_err(|_| Dropped::Malformed)?
            .to_packet()
            .try_eth_ipv4()
            .map_err(|_| Dropped::ArpNotForHost)?;
        if packet.operation != ArpOperation::REQUEST || packet.target_ipv4 != HOST_IPV4 {
            return Err(Dropped::ArpNotForHost);
        }
        let answer = ArpEthIpv4Packet {
            operation: ArpOperation::REPLY,
            sender_mac: HOST_MAC,
            sender_ipv4: HOST_IPV4,
            target_mac: packet.sender_mac,
            target_ipv4: packet.sender_ipv4,
        };
        let builder = PacketBuilder::ethernet2(HOST_MAC, packet.sender_mac).arp(answer.into());
        let mut frame = Vec::with_capacity(builder.size());
        builder
            .write(&mut frame)
            .expect("an Ethernet ARP reply is a valid packet");
        Ok(FromGuest::ArpRequest(frame))
    }
}

/// The payload of a guest's IPv4 datagram from the ledger to the host,
/// its checksums checked.
fn udp_payload(bytes: &[u8]) -> Result<FromGuest, Dropped> {
    let ipv4 = Ipv4Slice::from_slice(bytes).map_err(|_| Dropped::Malformed)?;
    let header = ipv4.header().to_header();
    if header.header_checksum != header.calc_header_checksum() {
        return Err(Dropped::BadChecksum);
    }
    if header.destination != HOST_IPV4 || header.source != GUEST_IPV4 {
        return Err(Dropped::Ipv4NotForHost);
    }
    if ipv4.is_payload_fragmented() {
        return Err(Dropped::Fragment);
    }
    if ipv4.payload_ip_number() != IpNumber::UDP {
        return Err(Dropped::NotUdp);
    }
    let udp = UdpSlice::from_slice(ipv4.payload().payload).map_err(|_| Dropped::Malformed)?;
    if udp.source_port() != LEDGER_PORT || udp.destination_port() != HOST_PORT {
        return Err(Dropped::OtherPort);
    }
    // Zero: the sender computed none (allowed over IPv4).
    if udp.checksum() != 0 {
        let computed = udp
            .to_header()
            .calc_checksum_ipv4(&header, udp.payload())
            .map_err(|_| Dropped::Malformed)?;
        if computed != udp.checksum() {
            return Err(Dropped::BadChecksum);
        }
    }
    Ok(FromGuest::Payload(udp.payload().to_vec()))
}

/// How clients' payloads reach a machine's guest and its replies come
/// back: the one place the load generator, `lockstep vm run` and the node
/// driver go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLink {
    /// The NIC carries payloads as they are (Lockstep's assembled guests).
    Payloads,
    /// The NIC carries Ethernet frames to and from a kernel's network
    /// stack (the Linux guest behind virtio-net).
    Udp(UdpLink),
}

impl ClientLink {
    /// Queues a client's `payload` for the guest.
    pub fn deliver(&self, nic: &mut Nic, payload: Packet) -> Result<(), NicError> {
        match self {
            ClientLink::Payloads => nic.deliver(payload),
            ClientLink::Udp(link) => {
                let len = payload.len();
                let frame = link
                    .request_frame(&payload, nic.packet_bytes_max())
                    .ok_or(NicError::TooLong(len))?;
                nic.deliver(frame)
            }
        }
    }

    /// Takes what the guest sent: the payloads for the clients, in the
    /// order sent. ARP requests for the host are answered into the NIC's
    /// receive queue as they are met; the rest is counted in `counts`.
    pub fn take_output(&self, nic: &mut Nic, counts: &mut LinkCounts) -> Vec<Packet> {
        let frames = nic.take_tx();
        let ClientLink::Udp(link) = self else {
            counts.payloads_out += frames.len() as u64;
            return frames;
        };
        let mut payloads = Vec::new();
        for frame in frames {
            match link.classify(&frame) {
                FromGuest::Payload(payload) => payloads.push(payload),
                FromGuest::ArpRequest(answer) => {
                    counts.arp_answered += 1;
                    if nic.deliver(answer).is_err() {
                        counts.arp_answers_lost += 1;
                    }
                }
                FromGuest::Dropped(why) => counts.drop(why),
            }
        }
        counts.payloads_out += payloads.len() as u64;
        payloads
    }
}

#[cfg(test)]
mod tests;
