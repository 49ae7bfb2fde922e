//! INTERFACE STUB (being built on branch `sandbox`): runs one job's code in
//! a sandbox made from kernel primitives. Replaced wholesale by that branch.

use std::ffi::OsString;
use std::time::Duration;

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

pub struct Sandbox {
    _config: SandboxConfig,
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        Ok(Self { _config: config })
    }

    /// Live output goes to `output` as it arrives (best effort: `try_send`).
    pub async fn run(
        &self,
        _request: RunRequest,
        _output: Option<tokio::sync::mpsc::Sender<(OutputStream, bytes::Bytes)>>,
        _cancel: &CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        Err(SandboxError::Setup("not built yet".into()))
    }
}

/// Entry point of the launcher process (`tandem __sandbox`).
pub fn launcher_main() -> ! {
    std::process::exit(70)
}
