//! The real network under the daemons: the replication link to the peer
//! over TCP (length-delimited frames, reconnect with backoff, a bounded
//! send queue), datagrams to and from the witness and the clients over
//! UDP. Socket tasks run on tokio's worker threads, so frames are read
//! while the guest runs on the daemon's own thread; what they read waits in
//! a bounded queue for the body ([`Inbox`]), which ends the guest's run to
//! take it.

use super::body::Input;
use protocol::wire::Unsealed;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Largest frame on the replication link: a chunk of the largest size the
/// protocol allows plus its envelope.
pub const FRAME_BYTES_MAX: usize = protocol::wire::CHUNK_BYTES_MAX + 4096;
/// Largest datagram (witness frames, client requests).
pub const DATAGRAM_BYTES_MAX: usize = 64 * 1024;
/// Bytes waiting to go to the peer; beyond it a frame is dropped (and
/// counted): the protocol retransmits (backing off), and its own limit on
/// deltas in flight keeps the queue short while the link is up. It holds a
/// whole copy round of a large guest: a queue that cannot would drop a
/// chunk of every round, and the round would never arrive whole.
pub const SEND_QUEUE_BYTES_MAX: u64 = 1 << 30;

/// The way into the body's queue of inputs: each input put there also
/// ends the guest's current run (the engine's waker), so it waits for the
/// body to take it, not for the end of a slice.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Input>,
    waker: Option<machine::RunWaker>,
}

impl Inbox {
    /// An inbox into `tx` that calls `waker` after each input.
    pub fn new(tx: mpsc::Sender<Input>, waker: Option<machine::RunWaker>) -> Inbox {
        Inbox { tx, waker }
    }

    /// Queues `input` (waiting while the queue is full) and wakes the
    /// body. `false`: the body is gone.
    pub async fn put(&self, input: Input) -> bool {
        if self.tx.send(input).await.is_err() {
            return false;
        }
        if let Some(waker) = &self.waker {
            waker.wake();
        }
        true
    }
}

/// The queue of frames to the peer, bounded by bytes. Frames wait in it
/// stamped but not sealed: the send task encodes and tags each as it
/// writes it, so the body's thread never does (a copy round is hundreds
/// of MiB), and a queued chunk is a slice of the round's one buffer.
#[derive(Debug, Clone)]
pub struct PeerQueue {
    tx: mpsc::UnboundedSender<(Unsealed, u64)>,
    queued_bytes: Arc<AtomicU64>,
    limit_bytes: u64,
}

impl PeerQueue {
    /// A queue and the receiving end for [`send_frames`].
    pub fn new() -> (PeerQueue, PeerQueueRx) {
        PeerQueue::with_limit(SEND_QUEUE_BYTES_MAX)
    }

    /// A queue that holds at most `limit_bytes`.
    pub fn with_limit(limit_bytes: u64) -> (PeerQueue, PeerQueueRx) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued_bytes = Arc::new(AtomicU64::new(0));
        let rx = PeerQueueRx {
            rx,
            queued_bytes: Arc::clone(&queued_bytes),
        };
        let queue = PeerQueue {
            tx,
            queued_bytes,
            limit_bytes,
        };
        (queue, rx)
    }

    /// Queues `frame`; `false` if the queue is full (or the sender gone).
    pub fn push(&self, frame: Unsealed) -> bool {
        let len = frame.len_max() as u64;
        if self.queued_bytes.load(Ordering::Relaxed) + len > self.limit_bytes {
            return false;
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.tx.send((frame, len)).is_ok()
    }
}

/// The receiving end of a [`PeerQueue`].
#[derive(Debug)]
pub struct PeerQueueRx {
    rx: mpsc::UnboundedReceiver<(Unsealed, u64)>,
    queued_bytes: Arc<AtomicU64>,
}

impl PeerQueueRx {
    async fn recv(&mut self) -> Option<Unsealed> {
        let (frame, len) = self.rx.recv().await?;
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        Some(frame)
    }

    fn try_recv(&mut self) -> Option<Unsealed> {
        let (frame, len) = self.rx.try_recv().ok()?;
        self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        Some(frame)
    }
}
/// Inputs waiting for the body; socket tasks wait when it is full.
pub const INPUTS_MAX: usize = 4096;
/// Client addresses remembered, by request id, for the replies.
pub const CLIENTS_REMEMBERED_MAX: usize = 64 * 1024;
/// A frame not written within this long means the connection is stuck
/// (a peer that died without a reset, a full window that never opens): it
/// is dropped and made again.
pub const WRITE_TIMEOUT: Duration = Duration::from_millis(500);
/// A connection from the peer that carries nothing this long is dead: the
/// peer sends heartbeats far more often.
pub const READ_IDLE_MAX: Duration = Duration::from_secs(2);
/// First wait before reconnecting to the peer.
pub const RECONNECT_MIN: Duration = Duration::from_millis(20);
/// Longest wait before reconnecting to the peer.
pub const RECONNECT_MAX: Duration = Duration::from_millis(500);

/// What the links dropped and why.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Frames to the peer dropped because the send queue was full.
    pub send_queue_full: AtomicU64,
    /// Frames to the peer lost with a broken connection.
    pub send_failed: AtomicU64,
    /// Connections from the peer closed for a frame length out of bounds.
    pub bad_length: AtomicU64,
    /// Connections made to the peer (first and reconnects).
    pub connects: AtomicU64,
    /// Connections to the peer dropped because a write stalled.
    pub send_stalled: AtomicU64,
    /// Connections to the peer that reached their own socket, reset (see
    /// [`refuse_self_connect`]).
    pub self_connects: AtomicU64,
    /// Connections from the peer closed for carrying nothing too long.
    pub read_idle: AtomicU64,
    /// Datagrams that could not be sent (a full socket buffer).
    pub datagrams_dropped: AtomicU64,
    /// Replies with no known client address.
    pub replies_unaddressed: AtomicU64,
}

impl LinkCounters {
    /// The counters as (name, value) pairs, for the status file.
    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("send_queue_full", get(&self.send_queue_full)),
            ("send_failed", get(&self.send_failed)),
            ("bad_length", get(&self.bad_length)),
            ("connects", get(&self.connects)),
            ("send_stalled", get(&self.send_stalled)),
            ("self_connects", get(&self.self_connects)),
            ("read_idle", get(&self.read_idle)),
            ("datagrams_dropped", get(&self.datagrams_dropped)),
            ("replies_unaddressed", get(&self.replies_unaddressed)),
        ])
    }
}

/// Where each request id's reply goes: the address it last came from.
#[derive(Debug, Default)]
pub struct ClientBook {
    by_id: BTreeMap<u64, SocketAddr>,
    order: VecDeque<u64>,
}

impl ClientBook {
    /// Request `id` came from `from`.
    pub fn note(&mut self, id: u64, from: SocketAddr) {
        if self.by_id.insert(id, from).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > CLIENTS_REMEMBERED_MAX {
            let oldest = self.order.pop_front().expect("longer than the bound");
            self.by_id.remove(&oldest);
        }
        assert!(self.by_id.len() <= CLIENTS_REMEMBERED_MAX);
    }

    /// Where the reply to `id` goes.
    pub fn address(&self, id: u64) -> Option<SocketAddr> {
        self.by_id.get(&id).copied()
    }
}

/// The id a request or reply of the ledger starts with.
pub fn request_id(packet: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = packet.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Accepts connections from the peer and reads their frames into `inputs`.
pub async fn accept_frames(listener: TcpListener, inputs: Inbox, counters: Arc<LinkCounters>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(RECONNECT_MIN).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(read_frames(stream, inputs.clone(), Arc::clone(&counters)));
    }
}

async fn read_frames(mut stream: TcpStream, inputs: Inbox, counters: Arc<LinkCounters>) {
    loop {
        let len = match tokio::time::timeout(READ_IDLE_MAX, stream.read_u32_le()).await {
            Ok(Ok(len)) => len,
            Ok(Err(_)) => return,
            Err(_) => {
                counters.read_idle.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let len = len as usize;
        if len == 0 || len > FRAME_BYTES_MAX {
            counters.bad_length.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut frame = vec![0u8; len];
        match tokio::time::timeout(READ_IDLE_MAX, stream.read_exact(&mut frame)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                counters.read_idle.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if !inputs.put(Input::Frame(frame)).await {
            return;
        }
    }
}

/// Connects to the peer, at most [`WRITE_TIMEOUT`] long. A connection
/// that reached its own socket is reset and refused (counted): see
/// [`refuse_self_connect`].
async fn connect_peer(peer: SocketAddr, counters: &LinkCounters) -> std::io::Result<TcpStream> {
    let connected = tokio::time::timeout(WRITE_TIMEOUT, TcpStream::connect(peer)).await;
    let stream = connected.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    refuse_self_connect(stream).inspect_err(|_| {
        counters.self_connects.fetch_add(1, Ordering::Relaxed);
    })
}

/// `stream` unless it is connected to itself. A connect to an address of
/// this host whose port nobody listens on can be given that very port as
/// its own (Linux takes source ports from `ip_local_port_range`, and a
/// peer's listening port may lie in it): the SYN meets itself, the
/// connection opens, and everything sent on it comes back to it unread.
/// Kept, it would swallow our frames while we take the peer for
/// reachable, and hold the port the restarting peer must listen on (as a
/// connection, then for a minute in TIME_WAIT). Such a stream is closed
/// with a reset (`SO_LINGER` zero), which leaves no TIME_WAIT behind, so
/// the port is free at once.
pub fn refuse_self_connect(stream: TcpStream) -> std::io::Result<TcpStream> {
    let (local, remote) = (stream.local_addr()?, stream.peer_addr()?);
    if local != remote {
        return Ok(stream);
    }
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("the connection to {remote} reached its own socket"),
    ))
}

/// Sends queued frames to the peer, connecting and reconnecting with
/// backoff. A frame whose connection breaks is lost (counted).
pub async fn send_frames(peer: SocketAddr, mut queue: PeerQueueRx, counters: Arc<LinkCounters>) {
    let mut backoff = RECONNECT_MIN;
    let mut stream: Option<TcpStream> = None;
    while let Some(frame) = queue.recv().await {
        if stream.is_none() {
            match connect_peer(peer, &counters).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    counters.connects.fetch_add(1, Ordering::Relaxed);
                    backoff = RECONNECT_MIN;
                    stream = Some(s);
                }
                Err(_) => {
                    counters.send_failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                    // What queued meanwhile is stale: the protocol sends
                    // it again.
                    while queue.try_recv().is_some() {
                        counters.send_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            }
        }
        let s = stream.as_mut().expect("connected above");
        let frame = frame.seal();
        assert!(frame.len() <= FRAME_BYTES_MAX, "our own frames fit");
        let len = u32::try_from(frame.len()).expect("bounded above");
        let written = async {
            s.write_all(&len.to_le_bytes()).await?;
            s.write_all(&frame).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, written).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                counters.send_failed.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
            Err(_) => {
                counters.send_stalled.fetch_add(1, Ordering::Relaxed);
                stream = None;
            }
        }
    }
}

/// Reads datagrams from the witness socket into `inputs`.
pub async fn read_datagrams(socket: Arc<UdpSocket>, inputs: Inbox) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if !inputs.put(Input::Frame(buf[..n].to_vec())).await {
            return;
        }
    }
}

/// A UDP socket bound to `addr` even while the address is not on any
/// interface (`IP_FREEBIND`): the service socket binds the service address,
/// which only the primary holds, so replies leave from the address the
/// clients sent to.
///
/// Its receive buffer holds [`SERVICE_RECV_BUFFER`] bytes: at `ft` the
/// replies of an epoch leave together and their clients answer with as
/// many new requests at once, a burst the default buffer (about 200 KiB,
/// some 270 datagrams) overflows while the daemon's thread is busy; each
/// request lost there costs its client a retry timeout.
pub fn bind_service(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_freebind_v4(true)?;
    socket.set_nonblocking(true)?;
    grow_recv_buffer(&socket, SERVICE_RECV_BUFFER);
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The receive buffer the service socket asks for, bytes.
pub const SERVICE_RECV_BUFFER: usize = 8 << 20;

/// Asks for a receive buffer of `bytes`: beyond `net.core.rmem_max` only
/// a privileged process gets it (`SO_RCVBUFFORCE`); a smaller one is
/// said once, with the setting that allows more.
fn grow_recv_buffer(socket: &socket2::Socket, bytes: usize) {
    let _ = socket.set_recv_buffer_size(bytes);
    // Linux reports twice what was set (the other half is its overhead).
    let enough = |s: &socket2::Socket| s.recv_buffer_size().is_ok_and(|got| got >= bytes);
    if !enough(socket) {
        let _ = crate::sys::force_recv_buffer(socket, bytes);
    }
    if !enough(socket) {
        tracing::warn!(
            asked = bytes,
            got = socket.recv_buffer_size().unwrap_or(0),
            "the service socket's receive buffer is smaller than asked (raise net.core.rmem_max): a burst of requests may be dropped and retried"
        );
    }
}

/// Reads client requests into `inputs`, noting where each came from.
pub async fn read_requests(socket: Arc<UdpSocket>, inputs: Inbox, book: Arc<Mutex<ClientBook>>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let packet = buf[..n].to_vec();
        if let Some(id) = request_id(&packet) {
            book.lock().expect("no panics hold the book").note(id, from);
        }
        if !inputs.put(Input::Client(packet)).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_socket_holds_a_burst_of_requests() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let got = runtime.block_on(async {
            let socket = bind_service("127.0.0.1:0".parse().expect("addr")).expect("binds");
            socket2::SockRef::from(&socket)
                .recv_buffer_size()
                .expect("a size")
        });
        if effective_uid_is_root() {
            assert!(got >= SERVICE_RECV_BUFFER, "{got}");
        } else {
            eprintln!("SKIPPED (not root): the buffer is {got} bytes, as net.core.rmem_max allows");
        }
    }

    fn effective_uid_is_root() -> bool {
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2))
                == Some("0")
        })
    }

    #[test]
    fn the_client_book_is_bounded_and_keeps_the_newest() {
        let mut book = ClientBook::default();
        let addr: SocketAddr = "10.0.0.1:9000".parse().expect("addr");
        for id in 0..(CLIENTS_REMEMBERED_MAX as u64 + 10) {
            book.note(id, addr);
        }
        assert_eq!(book.address(0), None, "the oldest is forgotten");
        assert_eq!(book.address(CLIENTS_REMEMBERED_MAX as u64 + 9), Some(addr));
    }

    #[test]
    fn the_peer_queue_is_bounded_by_bytes_and_frees_what_is_taken() {
        let (big, small) = (frame(6000), frame(4000));
        let limit = big.len_max() + small.len_max();
        let (queue, mut rx) = PeerQueue::with_limit(limit as u64);
        assert!(queue.push(big.clone()));
        assert!(!queue.push(big.clone()), "two big ones do not fit");
        assert!(queue.push(small));
        assert_eq!(rx.try_recv(), Some(big.clone()));
        assert!(queue.push(big), "taking a frame makes room");
    }

    #[test]
    fn a_frame_sealed_at_most_as_long_as_the_queue_counted_it() {
        for data in [0, 1, 4000, protocol::wire::CHUNK_BYTES_MAX] {
            let unsealed = frame(data);
            let sealed = unsealed.seal();
            assert!(sealed.len() <= unsealed.len_max(), "{data}");
            assert!(sealed.len() <= FRAME_BYTES_MAX, "{data}");
        }
    }

    /// A stamped copy chunk carrying `data` bytes.
    fn frame(data: usize) -> Unsealed {
        use protocol::wire::{Chunk, Envelope, Message};
        use protocol::{Codec, Digest, Epoch, Generation, NodeId};
        let chunk = Chunk {
            index: 0,
            count: 1,
            digest: Digest::of(&[]),
            data: vec![7; data].into(),
        };
        let msg = Message::Copy {
            generation: Generation(1),
            session: Epoch(1),
            round: 0,
            base: None,
            chunk,
        };
        Codec::authenticated(b"key").stamp(Envelope {
            from: NodeId(0),
            to: NodeId(1),
            msg,
        })
    }

    #[test]
    fn request_ids_are_read_only_from_whole_prefixes() {
        assert_eq!(request_id(&[1, 0, 0, 0, 0, 0, 0, 0, 9]), Some(1));
        assert_eq!(request_id(&[1, 0, 0]), None);
    }

    /// A TCP socket on 127.0.0.1 connected to itself (bound to a port,
    /// then connected to that same port: what a kernel-chosen source port
    /// does now and then by chance), and the port.
    fn connected_to_itself() -> (TcpStream, u16) {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("binds");
        let own = socket
            .local_addr()
            .expect("bound")
            .as_socket()
            .expect("inet");
        socket.connect(&own.into()).expect("a SYN to itself opens");
        socket.set_nonblocking(true).expect("nonblocking");
        let stream = TcpStream::from_std(socket.into()).expect("tokio takes it");
        (stream, own.port())
    }

    /// Whether a listener can take `port` on 127.0.0.1 now.
    async fn listenable(port: u16) -> bool {
        TcpListener::bind(("127.0.0.1", port)).await.is_ok()
    }

    #[tokio::test]
    async fn a_connection_to_itself_is_refused_and_leaves_the_port_free() {
        // The mechanism: kept and then closed as usual, such a connection
        // holds the port for TIME_WAIT's minute, so a peer restarting on
        // it cannot listen.
        let (stream, port) = connected_to_itself();
        assert_eq!(stream.local_addr().ok(), stream.peer_addr().ok());
        assert!(!listenable(port).await, "held while connected");
        drop(stream);
        assert!(!listenable(port).await, "held in TIME_WAIT after a close");

        let (stream, port) = connected_to_itself();
        let refused = refuse_self_connect(stream).expect_err("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse);
        assert!(listenable(port).await, "reset: the port is free at once");
    }

    /// Connects made to a port of this host that nobody listens on, at
    /// most, before one is given that port as its own.
    const CONNECTS_TO_MEET_ITSELF_MAX: u32 = 500_000;

    /// The kernel's own port choice, as the link to a dead peer meets it:
    /// connect after connect to an even port of the ephemeral range (Linux
    /// gives connects even ports first) until one reaches itself, some
    /// 15,000 connects on average (a second or two). Ignored by default for
    /// its time; run with `--ignored`.
    #[tokio::test]
    #[ignore = "a second or more of connects"]
    async fn reconnecting_to_a_dead_peer_never_keeps_a_connection_to_itself() {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .expect("Linux says its ephemeral range");
        let bounds: Vec<u16> = range
            .split_whitespace()
            .map(|w| w.parse().expect("a port"))
            .collect();
        let mut port = (bounds[0] / 2 + bounds[1] / 2) & !1;
        while !listenable(port).await {
            port += 2;
        }
        let peer: SocketAddr = ([127, 0, 0, 1], port).into();
        let counters = LinkCounters::default();
        for _ in 0..CONNECTS_TO_MEET_ITSELF_MAX {
            let connected = connect_peer(peer, &counters).await;
            assert!(
                connected.is_err(),
                "nobody listens on {peer}: {connected:?}"
            );
            if counters.self_connects.load(Ordering::Relaxed) > 0 {
                break;
            }
        }
        assert_eq!(counters.self_connects.load(Ordering::Relaxed), 1);
        assert!(listenable(port).await, "the peer can listen on its port");
    }

    #[tokio::test]
    async fn a_connection_to_another_socket_is_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stream = TcpStream::connect(addr).await.expect("connect");
        let kept = refuse_self_connect(stream).expect("kept");
        assert_eq!(kept.peer_addr().ok(), Some(addr));
    }

    #[tokio::test]
    async fn a_frame_too_long_closes_the_connection_and_is_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::channel(8);
        let counters = Arc::new(LinkCounters::default());
        let inbox = Inbox::new(tx, None);
        tokio::spawn(accept_frames(listener, inbox, Arc::clone(&counters)));
        let (qtx, qrx) = PeerQueue::new();
        tokio::spawn(send_frames(addr, qrx, Arc::clone(&counters)));
        let hello = frame(5);
        assert!(qtx.push(hello.clone()), "queued");
        let got = rx.recv().await.expect("a frame");
        assert_eq!(got, Input::Frame(hello.seal()), "sealed on the way");
        let mut raw = TcpStream::connect(addr).await.expect("connect");
        raw.write_u32_le(u32::MAX).await.expect("write");
        let mut byte = [0u8; 1];
        let closed = raw.read(&mut byte).await;
        assert!(matches!(closed, Ok(0) | Err(_)), "the reader hung up");
        assert_eq!(counters.bad_length.load(Ordering::Relaxed), 1);
    }
}
