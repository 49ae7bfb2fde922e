//! What the executor and the launcher say to each other over the socket
//! that is the launcher's fd 0: one [`Spec`] in, one [`Report`] out. The
//! user's code never sees this socket, so nothing here is forgeable by it
//! beyond its own exit status.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Language, Limits};

/// One run, as the executor asks for it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Spec {
    pub language: Language,
    pub source: String,
    pub stdin: String,
    pub limits: Limits,
    /// Host uid and gid of this run's slot; the job's uid 1000 maps to it.
    pub uid: u32,
    pub gid: u32,
    /// An empty host directory the launcher mounts the new root on (only
    /// inside its own mount namespace).
    pub root: PathBuf,
    /// cgroup directories the launcher joins before dropping privileges.
    pub cgroups: Vec<PathBuf>,
    /// RLIMIT_NPROC, only set when no pids cgroup is available.
    pub nproc: Option<u64>,
}

/// How the run ended, as the launcher saw it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Report {
    /// The interpreter exited; `cpu_ms` covers it and every descendant reaped.
    Exited {
        code: i32,
        cpu_ms: u64,
    },
    Signaled {
        signal: i32,
        cpu_ms: u64,
    },
    /// The in-namespace init died before reporting (e.g. chosen by the OOM
    /// killer); the namespace died with it.
    InitKilled {
        signal: i32,
    },
    /// The sandbox could not be built: an infrastructure failure.
    Setup {
        error: String,
    },
}
