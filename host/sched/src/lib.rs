//! Asks the kernel for a short time slice for the calling thread: the one operating-system
//! call weir makes that no well-kept crate wraps, kept here so that `weir-host` itself can
//! forbid `unsafe` code.
//!
//! Linux's scheduler (EEVDF, 6.6 and later) lets a thread that wakes preempt a busy one at
//! once only if the waking thread's slice ends sooner. A thread with the default slice (a few
//! milliseconds) that sleeps and wakes often may wait that long for a core a busy thread
//! holds. Since Linux 6.12 an ordinary thread may ask for a slice as short as 100 µs, no
//! privilege needed, through `sched_setattr(2)`'s `sched_runtime`.

#![deny(unsafe_code)]

use std::io;
use std::time::Duration;

/// Asks for a time slice of `slice` (the kernel clamps it to 0.1–100 ms) for the calling
/// thread, keeping its ordinary scheduling policy and nice value. Fails on kernels before
/// 6.12 (the slice is then ignored or refused) and on systems other than Linux.
pub fn request_slice(slice: Duration) -> io::Result<()> {
    imp::request_slice(slice)
}

#[cfg(target_os = "linux")]
#[expect(
    unsafe_code,
    reason = "sched_getattr(2) and sched_setattr(2) have no wrapper in libc, nix or rustix"
)]
mod imp {
    use super::{Duration, io};

    /// `struct sched_attr` of `include/uapi/linux/sched/types.h`, its first version.
    #[repr(C)]
    #[derive(Default)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }

    const SIZE: u32 = size_of::<SchedAttr>() as u32;

    pub(super) fn request_slice(slice: Duration) -> io::Result<()> {
        let mut attr = SchedAttr::default();
        // SAFETY: the kernel writes at most `SIZE` bytes to `attr`, which lives until the
        // call returns; pid 0 is the calling thread; no flags.
        let read = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, SIZE, 0) };
        if read != 0 {
            return Err(io::Error::last_os_error());
        }
        // Only the fair policies have a slice; a real-time or deadline thread keeps its own.
        let policy = i32::try_from(attr.policy).unwrap_or(-1);
        if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        attr.size = SIZE;
        attr.flags = 0;
        attr.runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
        // SAFETY: the kernel reads `attr.size` bytes from `attr`, which lives until the call
        // returns; pid 0 is the calling thread; no flags. Policy and nice are the thread's
        // own, as just read.
        let written = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
        if written == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::{Duration, io};

    pub(super) fn request_slice(_slice: Duration) -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_thread_may_ask_for_a_short_slice_or_is_told_why_not() {
        let asked = std::thread::spawn(|| request_slice(Duration::from_micros(100)))
            .join()
            .expect("the thread ran");
        // Kernels before 6.12 refuse a runtime for an ordinary thread (EINVAL); any other
        // failure would be a malformed call.
        if let Err(e) = asked {
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        }
    }
}
