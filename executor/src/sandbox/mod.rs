//! Runs one job's code in a sandbox made from kernel primitives, and owns
//! the executor's side of it: the slot pool (one host uid per concurrent
//! run), the run's cgroups, spawning the launcher, capturing output through
//! pipes, the wall clock, killing the whole tree on timeout, cancel or drop,
//! and classifying how the run ended. The launcher process ([`launcher_main`])
//! builds the sandbox itself; see `launcher.rs`.

mod cgroup;
mod launcher;
mod protocol;
mod seccomp;
mod sys;

use std::ffi::OsString;
use std::fmt;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use serde::{Deserialize, Serialize};
pub use tandem_domain::job::Language;
pub use tandem_domain::live::OutputStream;
use tokio_util::sync::CancellationToken;

/// Per-run limits. Defaults are the product's defaults; a job may lower
/// them, never raise them past the executor's ceiling ([`Limits::within`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub wall_ms: u64,
    pub cpu_ms: u64,
    pub memory_bytes: u64,
    pub processes: u32,
    /// Per stream (stdout, stderr); beyond it output is dropped and the
    /// outcome says `truncated`.
    pub output_bytes: u64,
    pub workdir_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall_ms: 10_000,
            cpu_ms: 10_000,
            memory_bytes: 256 << 20,
            processes: 64,
            output_bytes: 1 << 20,
            workdir_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// Field by field, the smaller of `self` and `ceiling`.
    pub fn within(&self, ceiling: &Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.min(ceiling.wall_ms),
            cpu_ms: self.cpu_ms.min(ceiling.cpu_ms),
            memory_bytes: self.memory_bytes.min(ceiling.memory_bytes),
            processes: self.processes.min(ceiling.processes),
            output_bytes: self.output_bytes.min(ceiling.output_bytes),
            workdir_bytes: self.workdir_bytes.min(ceiling.workdir_bytes),
        }
    }
}

pub struct RunRequest {
    pub language: Language,
    pub source: String,
    pub stdin: String,
    pub limits: Limits,
}

/// How the user's code ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// Exit status of the main process.
    Exited(i32),
    /// Killed by a signal nobody here sent for a limit (the code's own doing).
    Signaled(i32),
    TimedOut,
    CpuLimit,
    MemoryLimit,
    /// The cancel token fired; the process tree is gone.
    Cancelled,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub finish: Finish,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub duration: Duration,
}

/// The sandbox could not be set up or supervised: not the user's fault,
/// so the attempt is retried.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("sandbox i/o: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// Program and leading arguments that start the launcher.
    pub launcher: Vec<OsString>,
    pub max_concurrent: usize,
    pub ceiling: Limits,
}

/// What this machine lets the sandbox enforce, and how; for the caller's
/// logs (also logged once by [`Sandbox::new`]).
#[derive(Clone, Debug)]
pub struct Enforcement {
    /// A memory cgroup (v1) limits each run; without it memory is unlimited
    /// except for the workdir tmpfs size.
    pub memory_cgroup: bool,
    /// memory.memsw is limited too (no escape into swap).
    pub memory_swap: bool,
    /// A pids cgroup limits each run's process count; without it,
    /// RLIMIT_NPROC on the slot's dedicated host uid does.
    pub pids_cgroup: bool,
    /// Landlock ABI version of the kernel (0: none; filesystem rules need
    /// 1, TCP rules 4, signal and abstract-socket scoping 6).
    pub landlock_abi: i64,
    /// The host uids of the slots.
    pub uids: Range<u32>,
}

impl fmt::Display for Enforcement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let memory = match (self.memory_cgroup, self.memory_swap) {
            (true, true) => "memory cgroup (RAM+swap)",
            (true, false) => "memory cgroup (RAM only)",
            (false, _) => "NOT LIMITED (no memory cgroup; only the workdir size is)",
        };
        let procs = if self.pids_cgroup {
            "pids cgroup"
        } else {
            "RLIMIT_NPROC on a dedicated uid per slot"
        };
        write!(
            f,
            "namespaces user+pid+mount+net+ipc+uts+cgroup; seccomp deny list; \
             no_new_privs; rlimits cpu/fsize/nofile/core; memory: {memory}; \
             processes: {procs}; landlock ABI {}{}; slot uids {}..{}",
            self.landlock_abi,
            if self.landlock_abi == 0 {
                " (not enforced)"
            } else {
                ""
            },
            self.uids.start,
            self.uids.end,
        )
    }
}

const CGROUP_PREFIX: &str = "tandem-sbx-";

/// Older than any run can be (the wall ceiling is minutes at most).
const LEFTOVER_AGE: Duration = Duration::from_secs(600);

/// Removes what runs of an executor that died (SIGKILL) left behind: the
/// empty cgroups and mount points named `tandem-sbx-*`, once they are
/// older than any run. Only empty directories go (`rmdir`); a young one
/// may belong to another executor's run that is just starting.
fn sweep_leftovers(probe: &cgroup::Probe) {
    let parents = probe
        .memory
        .iter()
        .chain(probe.pids.iter())
        .cloned()
        .chain(std::iter::once(std::env::temp_dir()));
    let mut removed = 0;
    for parent in parents {
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let ours = name
                .to_str()
                .is_some_and(|n| n.starts_with(CGROUP_PREFIX) && !n.contains("probe"));
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > LEFTOVER_AGE);
            if ours && old && std::fs::remove_dir(entry.path()).is_ok() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(removed, "removed what earlier runs left behind");
    }
}

struct Inner {
    config: SandboxConfig,
    probe: cgroup::Probe,
    enforcement: Enforcement,
    permits: Arc<Semaphore>,
    free_uids: Mutex<Vec<u32>>,
    seq: AtomicU64,
}

pub struct Sandbox {
    inner: Arc<Inner>,
}

/// Default uid range: distinct per process (from its pid) and per
/// `Sandbox` in it, so parallel executors and tests never share a slot uid
/// (RLIMIT_NPROC and the leftover checks count per uid).
fn default_uid_base(slots: u32) -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let slots = slots.min(1000);
    let mut off = NEXT.fetch_add(slots, Ordering::Relaxed) % 1000;
    if off + slots > 1000 {
        off = 0;
    }
    1_500_000_000 + (std::process::id() % 1_000_000) * 1000 + off
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let slots = config.max_concurrent.clamp(1, 1000) as u32;
        Self::with_uids(config, default_uid_base(slots))
    }

    /// Like [`Sandbox::new`], with the slots' host uids (and gids) being
    /// `first_uid .. first_uid + max_concurrent`; they must be used by
    /// nothing else on the host.
    pub fn with_uids(config: SandboxConfig, first_uid: u32) -> Result<Self, SandboxError> {
        if config.launcher.is_empty() {
            return Err(SandboxError::Setup("no launcher configured".into()));
        }
        let slots = config.max_concurrent.max(1) as u32;
        if first_uid == 0 || first_uid.checked_add(slots).is_none() {
            return Err(SandboxError::Setup("bad slot uid range".into()));
        }
        let probe = cgroup::Probe::detect();
        sweep_leftovers(&probe);
        let enforcement = Enforcement {
            memory_cgroup: probe.memory.is_some(),
            memory_swap: probe.memsw,
            pids_cgroup: probe.pids.is_some(),
            landlock_abi: sys::landlock_abi(),
            uids: first_uid..first_uid + slots,
        };
        tracing::info!(enforcement = %enforcement, "sandbox ready");
        if !enforcement.memory_cgroup {
            tracing::warn!("sandbox: no usable memory cgroup, job memory is not limited");
        }
        Ok(Sandbox {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(slots as usize)),
                free_uids: Mutex::new((first_uid..first_uid + slots).rev().collect()),
                seq: AtomicU64::new(0),
                config,
                probe,
                enforcement,
            }),
        })
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.inner.enforcement
    }

    /// The host uids this sandbox's runs use (for leftover checks).
    pub fn uids(&self) -> Range<u32> {
        self.inner.enforcement.uids.clone()
    }

    /// Every cgroup of a run of this sandbox is named
    /// `<prefix><slot uid>-<n>` beneath the executor's own cgroup.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let p = &self.inner.probe;
        p.memory.iter().chain(p.pids.iter()).cloned().collect()
    }

    pub fn cgroup_prefix() -> &'static str {
        CGROUP_PREFIX
    }

    /// Live output goes to `output` as it arrives (best effort: `try_send`).
    /// Only the kept part (the first `output_bytes` of each stream) is sent.
    pub async fn run(
        &self,
        request: RunRequest,
        output: Option<mpsc::Sender<(OutputStream, Bytes)>>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let start = Instant::now();
        let limits = request.limits.within(&self.inner.config.ceiling);
        let permit = tokio::select! {
            p = self.inner.permits.clone().acquire_owned() => {
                p.map_err(|_| SandboxError::Setup("sandbox closed".into()))?
            }
            _ = cancel.cancelled() => return Ok(Outcome::empty(Finish::Cancelled, start)),
        };
        // The run's duration starts with its slot, not with the wait for one.
        let start = Instant::now();
        let uid = self
            .inner
            .free_uids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .ok_or_else(|| SandboxError::Setup("no free slot".into()))?;
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!("{CGROUP_PREFIX}{uid}-{seq}");
        let mut guard = RunGuard {
            inner: self.inner.clone(),
            uid,
            cgroups: cgroup::RunCgroups::default(),
            root: None,
            permit: Some(permit),
            launcher: None,
            tree_reaped: false,
            armed: true,
        };
        let processes = u64::from(limits.processes);
        guard.cgroups = cgroup::RunCgroups::create(
            &self.inner.probe,
            &name,
            limits.memory_bytes,
            // The launcher and init count too.
            processes + 2,
        )
        .map_err(|e| SandboxError::Setup(format!("creating cgroups: {e}")))?;
        // An empty mount point, only ever filled inside the run's own mount
        // namespace; we never open anything beneath it.
        let root = std::env::temp_dir().join(&name);
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&root)
            .map_err(|e| SandboxError::Setup(format!("creating {}: {e}", root.display())))?;
        guard.root = Some(root.clone());

        let spec = protocol::Spec {
            language: request.language,
            source: request.source,
            stdin: request.stdin,
            limits: limits.clone(),
            uid,
            gid: uid,
            root,
            cgroups: guard.cgroups.dirs(),
            nproc: self.inner.probe.pids.is_none().then_some(processes + 2),
        };
        let spec = serde_json::to_vec(&spec).map_err(|e| SandboxError::Setup(e.to_string()))?;

        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let launcher = &self.inner.config.launcher;
        let mut cmd = tokio::process::Command::new(&launcher[0]);
        cmd.args(&launcher[1..])
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Spawned from this task's thread (a runtime worker, not a blocking
        // pool thread that may exit): the launcher's PDEATHSIG follows the
        // spawning thread.
        let mut child = cmd.spawn()?;
        // The command still holds the launcher's end of the socket: we would
        // never see EOF on ours.
        drop(cmd);
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        guard.launcher = Some(child);
        ours.set_nonblocking(true)?;
        let mut sock = tokio::net::UnixStream::from_std(ours)?;

        let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
        let mut out = Capture::default();
        let mut err = Capture::default();
        let mut report_bytes = Vec::new();
        let ended = {
            let talk = async {
                sock.write_all(&spec).await?;
                sock.shutdown().await?;
                sock.read_to_end(&mut report_bytes).await?;
                Ok::<_, std::io::Error>(())
            };
            let io = async {
                tokio::join!(
                    talk,
                    drain(stdout, OutputStream::Stdout, cap, &output, &mut out),
                    drain(stderr, OutputStream::Stderr, cap, &output, &mut err),
                )
            };
            tokio::pin!(io);
            let wall = tokio::time::sleep(Duration::from_millis(limits.wall_ms));
            let ended = tokio::select! {
                _ = &mut io => None,
                _ = wall => Some(Finish::TimedOut),
                _ = cancel.cancelled() => Some(Finish::Cancelled),
            };
            if ended.is_some() {
                // Everything but the launcher: init's death empties the
                // namespace and the launcher, still alive, reaps init (no
                // orphaned zombie) and exits, which closes the pipes. Only
                // if it does not, it is killed too.
                guard.sweep();
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut io).await;
            }
            ended
        };
        let child = guard.launcher.as_mut().expect("launcher");
        let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await?
            }
        };
        // A launcher that exits 0 has waited for init (see the launcher's
        // `supervise`): no zombie of the run is left for anyone to reap.
        guard.tree_reaped = status.success();
        let duration = start.elapsed();
        let oom = guard.cgroups.oom_killed();
        guard.finish().await;

        let finish = match ended {
            Some(f) => f,
            None => match serde_json::from_slice::<protocol::Report>(&report_bytes) {
                // The OOM killer may pick the launcher or init too.
                Err(_) if oom => Finish::MemoryLimit,
                Err(_) => {
                    return Err(SandboxError::Setup(format!(
                        "launcher ended without a report ({status})"
                    )))
                }
                Ok(protocol::Report::Setup { error }) => return Err(SandboxError::Setup(error)),
                Ok(_) if oom => Finish::MemoryLimit,
                Ok(protocol::Report::Exited { code, .. }) => Finish::Exited(code),
                Ok(protocol::Report::Signaled { signal, cpu_ms }) => {
                    if signal == libc::SIGXCPU
                        || (signal == libc::SIGKILL && cpu_ms + 50 >= limits.cpu_ms)
                    {
                        Finish::CpuLimit
                    } else {
                        Finish::Signaled(signal)
                    }
                }
                Ok(protocol::Report::InitKilled { signal }) => Finish::Signaled(signal),
            },
        };
        Ok(Outcome {
            finish,
            stdout: String::from_utf8_lossy(&out.bytes).into_owned(),
            stderr: String::from_utf8_lossy(&err.bytes).into_owned(),
            stdout_truncated: out.truncated,
            stderr_truncated: err.truncated,
            duration,
        })
    }

    /// For the benchmark: `runs` runs of `print(1)` in Python, up to
    /// `max_concurrent` at a time; each must print `1`.
    pub async fn bench_python_print(&self, runs: usize) -> Result<SpawnBench, SandboxError> {
        let cancel = CancellationToken::new();
        let start = Instant::now();
        let mut set = futures::stream::FuturesUnordered::new();
        let mut done = 0;
        let mut per_run = Duration::ZERO;
        let mut started = 0;
        let width = self.inner.config.max_concurrent.max(1);
        use futures::StreamExt;
        while done < runs {
            while started < runs && set.len() < width {
                started += 1;
                set.push(self.run(
                    RunRequest {
                        language: Language::Python,
                        source: "print(1)\n".into(),
                        stdin: String::new(),
                        limits: Limits::default(),
                    },
                    None,
                    &cancel,
                ));
            }
            let Some(r) = set.next().await else { break };
            let o = r?;
            if o.finish != Finish::Exited(0) || o.stdout != "1\n" {
                return Err(SandboxError::Setup(format!("bench run failed: {o:?}")));
            }
            per_run += o.duration;
            done += 1;
        }
        Ok(SpawnBench {
            runs: done,
            elapsed: start.elapsed(),
            mean_run: per_run / done.max(1) as u32,
        })
    }
}

/// Result of [`Sandbox::bench_python_print`].
#[derive(Clone, Debug)]
pub struct SpawnBench {
    pub runs: usize,
    /// Wall time for all runs (runs/elapsed is the spawn rate).
    pub elapsed: Duration,
    /// Mean duration of one run, sandbox setup and teardown included.
    pub mean_run: Duration,
}

impl Outcome {
    fn empty(finish: Finish, start: Instant) -> Outcome {
        Outcome {
            finish,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: start.elapsed(),
        }
    }
}

#[derive(Default)]
struct Capture {
    bytes: Vec<u8>,
    truncated: bool,
}

/// Read a pipe to EOF: keep the first `cap` bytes, forward them live, and
/// keep reading (and discarding) beyond, so the job never blocks on a
/// full pipe and learns nothing from it.
async fn drain<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: OutputStream,
    cap: usize,
    live: &Option<mpsc::Sender<(OutputStream, Bytes)>>,
    into: &mut Capture,
) -> std::io::Result<()> {
    let Some(mut pipe) = pipe else {
        return Ok(());
    };
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let keep = n.min(cap.saturating_sub(into.bytes.len()));
        if keep > 0 {
            into.bytes.extend_from_slice(&buf[..keep]);
            if let Some(tx) = live {
                let _ = tx.try_send((stream, Bytes::copy_from_slice(&buf[..keep])));
            }
        }
        if keep < n {
            into.truncated = true;
        }
    }
}

/// One run's host-side resources. Dropped without [`RunGuard::finish`]
/// (the future was dropped mid-run), it kills the tree and cleans up on a
/// thread of its own, returning the slot only once nothing of it is left.
struct RunGuard {
    inner: Arc<Inner>,
    uid: u32,
    cgroups: cgroup::RunCgroups,
    root: Option<PathBuf>,
    permit: Option<OwnedSemaphorePermit>,
    /// Held here so that a dropped run sweeps the tree before the launcher
    /// is killed (kill_on_drop).
    launcher: Option<tokio::process::Child>,
    /// The launcher exited on its own after reaping init.
    tree_reaped: bool,
    armed: bool,
}

impl RunGuard {
    /// The launcher's pid while it has not been reaped.
    fn launcher_pid(&mut self) -> Option<i32> {
        let child = self.launcher.as_mut()?;
        match child.try_wait() {
            Ok(None) => child.id().map(|p| p as i32),
            _ => None,
        }
    }

    /// SIGKILL whatever is left but the launcher; true when nothing is.
    fn sweep(&mut self) -> bool {
        let spare = self.launcher_pid();
        let rest_empty = if self.cgroups.dirs().is_empty() {
            cgroup::sweep_uid(self.uid, spare)
        } else {
            self.cgroups.sweep(spare)
        };
        // An empty cgroup is not yet a gone tree: a killed init can still
        // be a zombie waiting for its reaper. Unless the launcher reaped
        // it, the run is over when no process of the slot's uid is left at
        // all (a scan of every host process: a fifth of a run's CPU here,
        // so only when it can matter).
        rest_empty && spare.is_none() && (self.tree_reaped || cgroup::sweep_uid(self.uid, None))
    }

    /// Remove what is left once the tree is gone; false to try again.
    /// After `patience`, the launcher is killed as well.
    fn release(&mut self, patience: bool) -> bool {
        let empty = self.sweep();
        if !empty && !patience {
            if let Some(child) = self.launcher.as_mut() {
                let _ = child.start_kill();
            }
        }
        if !empty || !self.cgroups.remove() {
            return false;
        }
        if let Some(root) = self.root.take() {
            // rmdir, not a recursive delete: it is an empty mount point.
            let _ = std::fs::remove_dir(root);
        }
        true
    }

    fn give_back(&mut self, clean: bool) {
        self.armed = false;
        if clean {
            self.inner
                .free_uids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.uid);
            self.permit.take();
        } else {
            // Never reuse a uid something may still run as: the slot (and
            // its permit) is retired.
            tracing::error!(uid = self.uid, "sandbox: run not cleaned up, slot retired");
            if let Some(p) = self.permit.take() {
                p.forget();
            }
        }
    }

    async fn finish(mut self) {
        let start = Instant::now();
        let mut clean = self.release(true);
        while !clean && start.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(5)).await;
            clean = self.release(start.elapsed() < Duration::from_secs(1));
        }
        self.give_back(clean);
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.sweep();
        let mut rest = RunGuard {
            inner: self.inner.clone(),
            uid: self.uid,
            cgroups: std::mem::take(&mut self.cgroups),
            root: self.root.take(),
            permit: self.permit.take(),
            launcher: self.launcher.take(),
            tree_reaped: self.tree_reaped,
            armed: false,
        };
        self.armed = false;
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut clean = rest.release(true);
            while !clean && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
                clean = rest.release(start.elapsed() < Duration::from_secs(1));
            }
            rest.give_back(clean);
        });
    }
}

/// Host processes whose real uid is `uid` (for leftover checks).
pub fn processes_of_uid(uid: u32) -> Vec<i32> {
    cgroup::pids_of_uid(uid)
}

/// Entry point of the launcher process (`tandem __sandbox`). Must run
/// before any other thread exists: it unshares a user namespace.
pub fn launcher_main() -> ! {
    launcher::main()
}
