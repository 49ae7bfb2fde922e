//! Argon2id password hashing (OWASP parameters: m = 19456 KiB, t = 2,
//! p = 1), off the async runtime on a small pool of dedicated threads that
//! run under the idle scheduling policy, with preemption points
//! ([`crate::preemption`]) and a duty cycle. A login
//! storm then queues for those threads instead of taking cores from other
//! requests.
//!
//! The idle policy alone does not fully protect the others: a hash is
//! 19 MiB of memory traffic that competes for caches and memory bandwidth
//! whatever the scheduler says. A duty cycle bounds that share: after a
//! hash that took `d`, its thread rests `d × (100 − duty) / duty` before
//! the next one. It trades login throughput for the other requests'
//! latency, so it is the operator's call (`TANDEM_HASH_DUTY_PERCENT`); the
//! default (100) rests never. A lone login never waits for the rest (it
//! follows its hash); only logins queued behind others do.
//!
//! Each thread keeps its Argon2 memory for its whole life: a fresh 19 MiB
//! per hash would be mapped, faulted in and unmapped every time, and the
//! unmapping interrupts every core running this process (TLB shootdowns)
//! and takes the address-space lock the other threads' allocations need.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tandem_domain::values::Password;
use thread_priority::ThreadPriority;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::preemption::StepAside;

pub const M_COST_KIB: u32 = 19_456;
pub const T_COST: u32 = 2;
pub const P_COST: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed: {0}")]
    Argon2(String),
    #[error("the password hashing threads are gone")]
    WorkersGone,
}

fn params() -> Params {
    Params::new(M_COST_KIB, T_COST, P_COST, None).expect("valid Argon2 parameters")
}

/// A hashing thread's Argon2 memory, reused by every hash it runs.
struct Memory(Vec<Block>);

impl Memory {
    fn new() -> Self {
        Self(vec![Block::default(); params().block_count()])
    }

    /// The first `blocks` blocks, grown when a stored hash asks for more
    /// than the current parameters.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::default());
        }
        &mut self.0[..blocks]
    }

    /// A new Argon2id hash of `password` with a random salt, as a PHC string.
    fn hash(&mut self, password: &[u8]) -> Result<String, HashError> {
        let params = params();
        let salt = argon2::password_hash::generate_salt();
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let blocks = self.blocks(params.block_count());
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
            .hash_password_into_with_memory(password, &salt, &mut out, blocks)
            .map_err(argon2_error)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(argon2_error)?,
            salt: Some(Salt::new(&salt).map_err(argon2_error)?),
            hash: Some(Output::new(&out).map_err(argon2_error)?),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` hashes to `phc` under `phc`'s own algorithm,
    /// version and parameters (compared in constant time).
    fn verify(&mut self, password: &[u8], phc: &PasswordHash) -> Result<bool, HashError> {
        let (Some(salt), Some(expected)) = (&phc.salt, &phc.hash) else {
            return Ok(false);
        };
        let algorithm = Algorithm::try_from(phc.algorithm.as_str()).map_err(argon2_error)?;
        let version = phc
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(argon2_error)?
            .unwrap_or_default();
        let params = Params::try_from(phc).map_err(argon2_error)?;
        let mut out = vec![0u8; expected.len()];
        let blocks = self.blocks(params.block_count());
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(password, salt.as_ref(), &mut out, blocks)
            .map_err(argon2_error)?;
        Ok(Output::new(&out).map_err(argon2_error)? == *expected)
    }
}

fn argon2_error(e: impl std::fmt::Display) -> HashError {
    HashError::Argon2(e.to_string())
}

/// A hash of a password nobody has, verified when the email is unknown so
/// that "no such user" costs the same time as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Memory::new()
            .hash(b"tandem-dummy-password-for-timing")
            .expect("hashing a constant works")
    })
}

type Work = Box<dyn FnOnce(&mut Memory) + Send>;

#[derive(Clone)]
pub struct PasswordHasher {
    work: Sender<Work>,
    /// Requests that may be between their arrival and their hash's end.
    admission: Arc<Semaphore>,
}

/// A request's turn at the hashers ([`PasswordHasher::admit`]).
pub struct Admission {
    _permit: OwnedSemaphorePermit,
}

/// Admitted requests per hashing thread: one hashing, one ready behind it,
/// so no thread idles between hashes.
const ADMITTED_PER_THREAD: usize = 2;

/// The default share of time a hashing thread may spend hashing.
pub const DEFAULT_DUTY_PERCENT: u8 = 100;

impl PasswordHasher {
    /// Starts `threads` hashing threads (at least one), each hashing at
    /// most `duty_percent` of the time (1..=100); hashes beyond that wait
    /// their turn. The threads end when the last handle is dropped.
    pub fn new(threads: usize, duty_percent: u8) -> Self {
        let (work, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        let duty = u32::from(duty_percent.clamp(1, 100));
        let threads = threads.max(1);
        for n in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || hash_worker(&queue, duty));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self {
            work,
            admission: Arc::new(Semaphore::new(threads * ADMITTED_PER_THREAD)),
        }
    }

    /// Waits for a turn at the hashers. A request that will hash takes its
    /// turn first and keeps it until the hash is done, so a wave of logins
    /// does its other work (limits, lookups) a few at a time, as hashes
    /// finish, instead of all at once ahead of everyone else's requests.
    pub async fn admit(&self) -> Admission {
        let permit = self
            .admission
            .clone()
            .acquire_owned()
            .await
            .expect("the admission semaphore is never closed");
        Admission { _permit: permit }
    }

    /// Half the cores, at least one. Low priority alone is not enough:
    /// Argon2's 19 MiB per hash also competes for caches and memory
    /// bandwidth, so a storm must not run on every core at once (measured
    /// with `tandem bench login-storm`).
    pub fn default_concurrency() -> usize {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Memory) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let job: Work = Box::new(move |memory| {
            let _ = tx.send(f(memory));
        });
        self.work.send(job).map_err(|_| HashError::WorkersGone)?;
        rx.await.map_err(|_| HashError::WorkersGone)?
    }

    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move |memory| memory.hash(password.expose().as_bytes()))
            .await
    }

    /// Checks `password` against `stored`; with no stored hash (unknown
    /// account) it verifies against a dummy and answers `false`, taking the
    /// same time.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        self.run(move |memory| {
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let parsed = PasswordHash::new(&phc).map_err(argon2_error)?;
            let matches = memory.verify(password.as_bytes(), &parsed)?;
            Ok(known && matches)
        })
        .await
    }
}

fn hash_worker(queue: &Mutex<Receiver<Work>>, duty_percent: u32) {
    lower_priority();
    let step_aside = StepAside::for_this_thread();
    if step_aside.is_none() {
        tracing::warn!("no preemption points for the hashing thread");
    }
    let mut memory = Memory::new();
    loop {
        // The lock is held only while waiting for the next job.
        let next = queue.lock().map(|q| q.recv());
        match next {
            Ok(Ok(job)) => {
                let started = std::time::Instant::now();
                match &step_aside {
                    Some(timer) => timer.during(|| job(&mut memory)),
                    None => job(&mut memory),
                }
                std::thread::sleep(rest_after(started.elapsed(), duty_percent));
            }
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// `SCHED_IDLE`: unlike a mere nice 19, whose thread keeps the core until
/// its time slice is used up, an idle-policy thread gives way to any other
/// thread that wants its core, as soon as the scheduler looks (which
/// [`StepAside`] makes often).
fn lower_priority() {
    use thread_priority::unix::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::warn!(error = ?e, "could not give the hashing thread the idle policy");
        if let Err(e) = ThreadPriority::Min.set_for_current() {
            tracing::warn!(error = ?e, "could not lower the hashing thread's priority");
        }
    }
}

/// How long a thread rests after hashing for `busy`, to hash no more than
/// `duty_percent` of the time.
fn rest_after(busy: std::time::Duration, duty_percent: u32) -> std::time::Duration {
    busy * (100 - duty_percent) / duty_percent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_owasp_parameters() {
        let hasher = PasswordHasher::new(2, 100);
        let hash = hasher
            .hash(Password::parse("correct horse battery".into()).unwrap())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let ok = hasher.verify("correct horse battery".into(), Some(hash.clone()));
        assert!(ok.await.unwrap());
        let wrong = hasher.verify("wrong horse battery".into(), Some(hash));
        assert!(!wrong.await.unwrap());
    }

    #[tokio::test]
    async fn admission_lets_two_requests_per_thread_in_at_once() {
        use futures::FutureExt as _;
        let hasher = PasswordHasher::new(2, DEFAULT_DUTY_PERCENT);
        let mut turns = Vec::new();
        for n in 0..4 {
            let turn = hasher.admit().now_or_never();
            turns.push(turn.unwrap_or_else(|| panic!("turn {n} of 4 was refused")));
        }
        assert!(
            hasher.admit().now_or_never().is_none(),
            "a fifth request got in beside four"
        );
        turns.pop();
        assert!(
            hasher.admit().now_or_never().is_some(),
            "a finished turn did not let the next request in"
        );
    }

    #[test]
    fn hashing_threads_run_under_the_idle_policy() {
        let (tx, rx) = std::sync::mpsc::channel();
        let hasher = PasswordHasher::new(1, DEFAULT_DUTY_PERCENT);
        let job: Work = Box::new(move |_| {
            let _ = tx.send(std::fs::read_to_string("/proc/thread-self/stat"));
        });
        hasher.work.send(job).unwrap();
        let stat = rx.recv().unwrap().unwrap();
        // Field 41 of stat(5) is the policy (5 = SCHED_IDLE); fields
        // restart after "(comm)", which is field 2.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: i32 = after_comm.split(' ').nth(38).unwrap().parse().unwrap();
        const SCHED_IDLE: i32 = 5;
        assert_eq!(policy, SCHED_IDLE, "{stat}");
    }

    #[test]
    fn hashes_agree_with_the_reference_implementation_both_ways() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params());
        let mut memory = Memory::new();
        let ours = memory.hash(b"correct horse battery").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(reference
            .verify_password(b"correct horse battery", &parsed)
            .is_ok());
        assert!(reference
            .verify_password(b"wrong horse battery", &parsed)
            .is_err());
        // Hashes stored before this module kept its memory still verify,
        // also with other parameters (the memory grows and shrinks to fit).
        for (m, t) in [(M_COST_KIB, T_COST), (8 * 1024, 3), (32 * 1024, 1)] {
            let old = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, 1, None).unwrap(),
            )
            .hash_password(b"an older password")
            .unwrap()
            .to_string();
            let old = PasswordHash::new(&old).unwrap();
            assert!(
                memory.verify(b"an older password", &old).unwrap(),
                "m={m} t={t}"
            );
            assert!(
                !memory.verify(b"an older passwore", &old).unwrap(),
                "m={m} t={t}"
            );
        }
    }

    #[test]
    fn the_rest_keeps_hashing_to_its_share_of_the_time() {
        let busy = std::time::Duration::from_millis(20);
        assert_eq!(rest_after(busy, 100), std::time::Duration::ZERO);
        assert_eq!(rest_after(busy, 50), busy);
        assert_eq!(rest_after(busy, 25), busy * 3);
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let hasher = PasswordHasher::new(1, DEFAULT_DUTY_PERCENT);
        let dummy_password = "tandem-dummy-password-for-timing".to_owned();
        assert!(!hasher.verify(dummy_password, None).await.unwrap());
    }
}
