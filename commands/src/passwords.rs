//! Argon2id password hashing (OWASP parameters: m = 19456 KiB, t = 2,
//! p = 1), off the async runtime on a small pool of dedicated threads that
//! run at the lowest CPU priority (nice 19). A login storm then queues for
//! those threads and takes whatever CPU the rest of the service leaves,
//! instead of taking cores from other requests; when the machine is idle
//! the hashes run at full speed.

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use tandem_domain::values::Password;
use thread_priority::ThreadPriority;
use tokio::sync::oneshot;

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

fn argon2() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).expect("valid Argon2 parameters");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a password nobody has, verified when the email is unknown so
/// that "no such user" costs the same time as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        argon2()
            .hash_password(b"tandem-dummy-password-for-timing")
            .expect("hashing a constant works")
            .to_string()
    })
}

type Work = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct PasswordHasher {
    work: Sender<Work>,
}

impl PasswordHasher {
    /// Starts `threads` hashing threads (at least one); hashes beyond that
    /// wait their turn. The threads end when the last handle is dropped.
    pub fn new(threads: usize) -> Self {
        let (work, queue) = mpsc::channel::<Work>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || hash_worker(&queue));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password hashing thread");
            }
        }
        Self { work }
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
        f: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let (tx, rx) = oneshot::channel();
        let job: Work = Box::new(move || {
            let _ = tx.send(f());
        });
        self.work.send(job).map_err(|_| HashError::WorkersGone)?;
        rx.await.map_err(|_| HashError::WorkersGone)?
    }

    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        self.run(move || {
            argon2()
                .hash_password(password.expose().as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| HashError::Argon2(e.to_string()))
        })
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
        self.run(move || {
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| dummy_hash().to_owned());
            let parsed = PasswordHash::new(&phc).map_err(|e| HashError::Argon2(e.to_string()))?;
            let matches = argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            Ok(known && matches)
        })
        .await
    }
}

fn hash_worker(queue: &Mutex<Receiver<Work>>) {
    if let Err(e) = ThreadPriority::Min.set_for_current() {
        tracing::warn!(error = ?e, "could not lower the hashing thread's priority");
    }
    loop {
        // The lock is held only while waiting for the next job.
        let next = queue.lock().map(|q| q.recv());
        match next {
            Ok(Ok(job)) => job(),
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_use_owasp_parameters() {
        let hasher = PasswordHasher::new(2);
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

    #[test]
    fn hashing_threads_run_at_the_lowest_priority() {
        let (tx, rx) = std::sync::mpsc::channel();
        let hasher = PasswordHasher::new(1);
        let job: Work = Box::new(move || {
            let _ = tx.send(std::fs::read_to_string("/proc/thread-self/stat"));
        });
        hasher.work.send(job).unwrap();
        let stat = rx.recv().unwrap().unwrap();
        // Field 19 of stat(5) is the nice value; fields restart after "(comm)".
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, 19, "{stat}");
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify() {
        let hasher = PasswordHasher::new(1);
        let dummy_password = "tandem-dummy-password-for-timing".to_owned();
        assert!(!hasher.verify(dummy_password, None).await.unwrap());
    }
}
