//! The runtime's `unsafe` outside KVM: the socket options neither std nor
//! socket2 wraps.
#![allow(unsafe_code)]

use std::os::fd::AsFd;

/// `SO_RCVBUFFORCE`: a receive buffer of `bytes` whatever
/// `net.core.rmem_max` says, for a process with `CAP_NET_ADMIN`; an error
/// (`EPERM`) for others.
pub(crate) fn force_recv_buffer(socket: &impl AsFd, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).expect("4 bytes");
    // SAFETY: the descriptor is open (borrowed from `socket` for the call)
    // and the kernel reads `len` bytes of `value`, which outlives the call.
    let done = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
