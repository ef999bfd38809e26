//! The two system calls kernel steering needs: joining a listener to the primary's
//! `SO_REUSEPORT` group, and attaching a program to the group. The only `unsafe` here is the
//! `setsockopt` that passes the program, for which neither `socket2` nor `nix` has a wrapper.
#![allow(unsafe_code)]

use std::{
    io,
    net::{SocketAddr, TcpListener},
    os::fd::{AsFd, AsRawFd},
};

use nix::libc;
use socket2::{Domain, SockRef, Socket, Type};

use super::program::{Insn, MAX_INSNS};

/// Lets `listener` (already bound and listening) head a group of listeners on its address.
pub(crate) fn allow_group(listener: &TcpListener) -> io::Result<()> {
    reuse_port(listener)
}

fn reuse_port(socket: &impl AsFd) -> io::Result<()> {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::ReusePort, &true).map_err(io::Error::from)
}

/// A new listener on `main`'s address, in its group: same family, same `IPV6_V6ONLY`, same
/// backlog as [`crate::primary::bind`]'s. The kernel refuses it (`EADDRINUSE`) when `main` is
/// not this user's, e.g. a socket a service manager created as another user.
pub(crate) fn join_group(main: &TcpListener) -> io::Result<TcpListener> {
    let addr: SocketAddr = main.local_addr()?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(SockRef::from(main).only_v6()?)?;
    }
    socket.set_reuse_address(true)?;
    reuse_port(&socket)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Makes `program` choose the listener of every new connection in `member`'s group
/// (`SO_ATTACH_REUSEPORT_CBPF`), replacing the group's previous program at once.
pub(crate) fn attach(member: &TcpListener, program: &[Insn]) -> io::Result<()> {
    if program.is_empty() || program.len() > MAX_INSNS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "a program of 1 to 4096 instructions"));
    }
    let mut filters: Vec<libc::sock_filter> =
        program.iter().map(|i| libc::sock_filter { code: i.code, jt: i.jt, jf: i.jf, k: i.k }).collect();
    let fprog =
        libc::sock_fprog { len: u16::try_from(filters.len()).unwrap_or(u16::MAX), filter: filters.as_mut_ptr() };
    let size = libc::socklen_t::try_from(std::mem::size_of::<libc::sock_fprog>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `fprog` points at `filters`, `len` instructions that live until the call returns;
    // the kernel copies the program before it returns and keeps no pointer into our memory.
    // The descriptor is borrowed from a live listener.
    let done = unsafe {
        libc::setsockopt(
            member.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::addr_of!(fprog).cast(),
            size,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
