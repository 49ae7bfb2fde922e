//! The few system calls the launcher needs that neither std nor nix wraps
//! safely. Every `unsafe` block of the sandbox lives here, each on the
//! smallest item, so the audit surface is this one file.

use std::io;

/// Result of [`fork`].
pub(crate) enum Forked {
    Child,
    Parent(nix::unistd::Pid),
}

/// Forks the launcher. Only sound because the launcher is single-threaded
/// (no lock can be held by a thread that does not exist in the child), so
/// the child may run ordinary Rust code, allocation included.
#[allow(unsafe_code)]
pub(crate) fn fork() -> io::Result<Forked> {
    // SAFETY: the launcher process never starts a second thread (it is a
    // plain `main` without a runtime), which is the condition under which
    // running arbitrary code in the child of fork is sound.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// Marks every descriptor from `first` up as close-on-exec, so nothing the
/// executor let slip through reaches the user's code.
#[allow(unsafe_code)]
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
    // descriptors; it closes nothing, so no Rust owner is invalidated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Empties the capability bounding set and the effective, permitted and
/// inheritable sets (ambient sets clear with permitted).
#[allow(unsafe_code)]
pub(crate) fn drop_all_capabilities() -> io::Result<()> {
    for cap in 0..=63 {
        // SAFETY: prctl(PR_CAPBSET_DROP, cap) takes two integers and touches
        // no memory of ours. EINVAL marks the end of the kernel's caps.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capset reads one header and two data structs (version 3 ABI),
    // both alive and correctly laid out (#[repr(C)]) for the whole call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's Landlock ABI version, 0 when Landlock is unavailable.
#[allow(unsafe_code)]
pub(crate) fn landlock_abi() -> i64 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with the VERSION flag the kernel reads no attribute (null,
    // size 0) and returns the ABI version as an integer; no fd is created.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    r.max(0)
}
