//! [`StepAside`]: preemption points for a long computation on a thread of
//! the idle scheduling policy, which std cannot give.
//!
//! The idle policy decides *who* runs when the scheduler looks, not *when*
//! it looks. Measured with `perf sched` during `tandem bench login-storm`
//! (Linux 6.18, `preempt=none`, 250 Hz): a Postgres backend or a Tokio
//! worker woken on the core where an Argon2 hash ran waited up to a whole
//! tick, 4.4 ms, for the hash to be interrupted, and those waits were the
//! other requests' tail during a storm. A hash is one call of about 10 ms
//! that makes no system call, so nothing else gives the scheduler a
//! chance. Here a per-thread timer signals the hashing thread every
//! [`PERIOD`] while it hashes, and the handler yields the core: anyone
//! waiting for it runs now, and with nobody waiting the hash goes on at
//! the cost of one signal.
//!
//! The only unsafe code outside the sandbox: `timer_create`, `sigaction`
//! and `sched_yield`, which std does not wrap.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// How often a hashing thread offers its core.
pub const PERIOD: Duration = Duration::from_micros(250);

thread_local! {
    /// Times this thread stepped aside. Constant-initialised and without
    /// a destructor, so the signal handler may touch it.
    static STEPS: Cell<u64> = const { Cell::new(0) };
}

/// Times the calling thread stepped aside.
pub fn steps_taken() -> u64 {
    STEPS.with(Cell::get)
}

fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

#[allow(unsafe_code)]
extern "C" fn step_aside(_: libc::c_int) {
    STEPS.with(|steps| steps.set(steps.get() + 1));
    // SAFETY: sched_yield is async-signal-safe, takes no arguments and
    // cannot fail on Linux.
    unsafe {
        libc::sched_yield();
    }
}

/// Installs the handler once per process; whether it is in place.
#[allow(unsafe_code)]
fn handler_installed() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask"
        // value; the handler only bumps a thread-local counter and makes one
        // async-signal-safe call; SA_RESTART resumes any system call the
        // signal interrupts.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = step_aside as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal(), &action, std::ptr::null_mut()) == 0
        }
    })
}

/// A timer that makes the thread that created it step aside every
/// [`PERIOD`] while armed. Not `Send`: it signals its own thread only.
pub struct StepAside {
    timer: libc::timer_t,
}

impl StepAside {
    /// For the calling thread; `None` if the system refuses (the thread
    /// then runs without preemption points, as a plain idle-policy thread).
    #[allow(unsafe_code)]
    pub fn for_this_thread() -> Option<Self> {
        if !handler_installed() {
            return None;
        }
        // SAFETY: the sigevent is fully initialised (zeroed, then the
        // fields SIGEV_THREAD_ID reads); the thread id is our own, and the
        // timer handle is written by timer_create before we read it.
        unsafe {
            let mut event: libc::sigevent = std::mem::zeroed();
            event.sigev_notify = libc::SIGEV_THREAD_ID;
            event.sigev_signo = signal();
            event.sigev_notify_thread_id = libc::gettid();
            let mut timer: libc::timer_t = std::ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
                return None;
            }
            Some(Self { timer })
        }
    }

    /// Runs `work` with the timer armed.
    pub fn during<T>(&self, work: impl FnOnce() -> T) -> T {
        self.set(PERIOD);
        let out = work();
        self.set(Duration::ZERO);
        out
    }

    /// Fires every `period` from now on; zero disarms.
    #[allow(unsafe_code)]
    fn set(&self, period: Duration) {
        let spec = libc::timespec {
            tv_sec: period.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(period.subsec_nanos()),
        };
        let times = libc::itimerspec {
            it_interval: spec,
            it_value: spec,
        };
        // SAFETY: our own live timer and a valid itimerspec; failing
        // leaves the timer as it was, which is harmless either way.
        unsafe {
            libc::timer_settime(self.timer, 0, &times, std::ptr::null_mut());
        }
    }
}

impl Drop for StepAside {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // SAFETY: the timer is ours and deleted once.
        unsafe {
            libc::timer_delete(self.timer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn an_armed_thread_steps_aside_and_a_disarmed_one_does_not() {
        let timer = StepAside::for_this_thread().expect("a timer for this thread");
        let before = steps_taken();
        // Busy, as a hash is, until the timer has fired a few times
        // (bounded, so a broken timer fails instead of hanging).
        let deadline = Instant::now() + Duration::from_secs(10);
        timer.during(|| {
            while steps_taken() < before + 3 && Instant::now() < deadline {
                std::hint::spin_loop();
            }
        });
        assert!(steps_taken() >= before + 3, "the timer never fired");
        // Disarmed: a pending signal may still land, then nothing more.
        std::thread::sleep(PERIOD * 4);
        let settled = steps_taken();
        std::thread::sleep(PERIOD * 40);
        assert_eq!(steps_taken(), settled, "still firing after the work");
    }
}
