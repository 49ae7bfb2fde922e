//! cgroup v1 bookkeeping on the executor's side: which controllers we may
//! use (probed once), one memory and one pids child cgroup per run beneath
//! the executor's own, the run's OOM verdict, and the kill-until-empty sweep.
//! cgroup v2 delegation is not handled: without v1 controllers the sandbox
//! falls back to RLIMIT_NPROC for processes and has no memory limit beyond
//! the workdir tmpfs size (RLIMIT_AS would break node).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// A controller's directory for the executor's own cgroup, if usable.
#[derive(Clone, Debug, Default)]
pub(crate) struct Probe {
    pub memory: Option<PathBuf>,
    /// memory.memsw.limit_in_bytes exists (swap accounting on).
    pub memsw: bool,
    pub pids: Option<PathBuf>,
}

fn own_dir(controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        if ctrls.split(',').any(|c| c == controller) {
            let dir = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(path.trim_start_matches('/'));
            return Some(dir);
        }
    }
    None
}

/// A controller is usable when we can make (and remove) a child with the
/// limit file we need in it.
fn usable(controller: &str, file: &str) -> Option<PathBuf> {
    let dir = own_dir(controller)?;
    // Unique per call: two sandboxes probing at once must not collide.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!("tandem-sbx-probe-{}-{n}", std::process::id()));
    let _ = fs::remove_dir(&probe);
    fs::create_dir(&probe).ok()?;
    let ok = probe.join(file).exists();
    let _ = fs::remove_dir(&probe);
    ok.then_some(dir)
}

impl Probe {
    pub fn detect() -> Probe {
        let memory = usable("memory", "memory.limit_in_bytes");
        let memsw = memory
            .as_ref()
            .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
        Probe {
            memory,
            memsw,
            pids: usable("pids", "pids.max"),
        }
    }
}

/// One run's cgroups. Removed by [`RunCgroups::remove`] once empty.
#[derive(Debug, Default)]
pub(crate) struct RunCgroups {
    pub memory: Option<PathBuf>,
    pub pids: Option<PathBuf>,
}

impl RunCgroups {
    pub fn create(
        probe: &Probe,
        name: &str,
        memory_bytes: u64,
        processes: u64,
    ) -> io::Result<RunCgroups> {
        let mut run = RunCgroups::default();
        if let Some(parent) = &probe.memory {
            let dir = parent.join(name);
            fs::create_dir(&dir)?;
            run.memory = Some(dir.clone());
            fs::write(dir.join("memory.limit_in_bytes"), memory_bytes.to_string())?;
            if probe.memsw {
                // Same as the RAM limit: no escape into swap.
                fs::write(
                    dir.join("memory.memsw.limit_in_bytes"),
                    memory_bytes.to_string(),
                )?;
            }
        }
        if let Some(parent) = &probe.pids {
            let dir = parent.join(name);
            fs::create_dir(&dir)?;
            run.pids = Some(dir.clone());
            fs::write(dir.join("pids.max"), processes.to_string())?;
        }
        Ok(run)
    }

    pub fn dirs(&self) -> Vec<PathBuf> {
        self.memory
            .iter()
            .chain(self.pids.iter())
            .cloned()
            .collect()
    }

    /// The memory cgroup's OOM killer fired at least once in this run.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = &self.memory else {
            return false;
        };
        fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// SIGKILL everything in the run's cgroups but `spare`; true when
    /// nothing else is in them.
    pub fn sweep(&self, spare: Option<i32>) -> bool {
        let mut empty = true;
        for dir in self.dirs() {
            let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if Some(pid) == spare {
                    continue;
                }
                empty = false;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        empty
    }

    /// rmdir both cgroups; true when nothing is left.
    pub fn remove(&mut self) -> bool {
        for slot in [&mut self.memory, &mut self.pids] {
            if let Some(dir) = slot {
                match fs::remove_dir(&*dir) {
                    Ok(()) => *slot = None,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => *slot = None,
                    Err(_) => {}
                }
            }
        }
        self.memory.is_none() && self.pids.is_none()
    }
}

/// SIGKILL every host process running as `uid`; true when there was none.
/// The fallback sweep when there is no cgroup to enumerate.
pub(crate) fn sweep_uid(uid: u32, spare: Option<i32>) -> bool {
    let mut pids = pids_of_uid(uid);
    pids.retain(|&p| Some(p) != spare);
    for &pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    pids.is_empty()
}

/// Host processes whose real uid is `uid` (from /proc/*/status).
pub fn pids_of_uid(uid: u32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())
                })
                == Some(uid)
        })
        .collect()
}
