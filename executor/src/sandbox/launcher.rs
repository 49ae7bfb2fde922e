//! The launcher process (`tandem __sandbox`): trusted, single-threaded, it
//! builds one run's sandbox and supervises it from the host's pid namespace.
//!
//! Launcher (host pid ns, slot uid) → init (PID 1 of the new pid ns, our
//! code: mounts /proc, detaches the host, locks itself down, reaps) → the
//! interpreter. When init exits the kernel kills everything left in its
//! namespace, which is how daemonized grandchildren die; when the launcher
//! dies, init's PDEATHSIG takes the namespace with it; when the executor
//! dies, the launcher's PDEATHSIG does.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use super::protocol::{Report, Spec};
use super::sys::{self, Forked};
use super::Language;

/// The job's uid and gid inside its user namespace.
pub(crate) const INNER_ID: u32 = 1000;
const STDIN_FILE: &str = ".stdin";

pub(crate) fn main() -> ! {
    let code = match run() {
        Ok(()) => 0,
        Err(_) => 71,
    };
    std::process::exit(code)
}

fn run() -> Result<(), String> {
    sys::cloexec_from(3).map_err(|e| format!("close_range: {e}"))?;
    let sock = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("socket: {e}"))?;
    let mut sock = UnixStream::from(sock);
    // fd 0 stops being the socket: nothing inherited can read or write it.
    let devnull = fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    nix::unistd::dup2_stdin(&devnull).map_err(|e| format!("dup2: {e}"))?;
    drop(devnull);

    let mut buf = Vec::new();
    sock.read_to_end(&mut buf)
        .map_err(|e| format!("reading spec: {e}"))?;
    let spec: Spec = serde_json::from_slice(&buf).map_err(|e| format!("spec: {e}"))?;

    let report = match prepare(&spec) {
        Err(error) => Report::Setup { error },
        Ok(pipes) => match sys::fork() {
            Err(e) => Report::Setup {
                error: format!("fork: {e}"),
            },
            Ok(Forked::Child) => {
                drop(sock);
                let Pipes {
                    status_w,
                    status_r,
                    lifeline_r,
                    lifeline_w,
                } = pipes;
                drop(status_r);
                drop(lifeline_w);
                init(&spec, status_w, lifeline_r)
            }
            Ok(Forked::Parent(pid)) => {
                let Pipes {
                    status_w,
                    mut status_r,
                    lifeline_r,
                    lifeline_w,
                } = pipes;
                drop(status_w);
                drop(lifeline_r);
                let report = supervise(pid, &mut status_r);
                drop(lifeline_w);
                report
            }
        },
    };
    let msg = serde_json::to_vec(&report).map_err(|e| e.to_string())?;
    sock.write_all(&msg).map_err(|e| format!("report: {e}"))?;
    Ok(())
}

struct Pipes {
    status_r: fs::File,
    status_w: fs::File,
    lifeline_r: OwnedFd,
    lifeline_w: OwnedFd,
}

/// Everything done before the fork, in the order the kernel requires:
/// cgroups and rlimits while still root, then the uid drop, then the
/// namespaces, then the new root.
fn prepare(spec: &Spec) -> Result<Pipes, String> {
    let parent = nix::unistd::getppid();
    for cg in &spec.cgroups {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("joining cgroup {}: {e}", cg.display()))?;
    }
    let gid = Gid::from_raw(spec.gid);
    let uid = Uid::from_raw(spec.uid);
    nix::unistd::setgroups(&[]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| format!("setresgid: {e}"))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| format!("setresuid: {e}"))?;
    // The uid change made us non-dumpable, which hands /proc/self to root
    // and so forbids writing our own uid_map below.
    nix::sys::prctl::set_dumpable(true).map_err(|e| format!("dumpable: {e}"))?;
    // After the uid change: a credential change clears PDEATHSIG.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    if nix::unistd::getppid() != parent {
        return Err("executor died during setup".into());
    }

    nix::sched::unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(|e| format!("unshare: {e}"))?;
    fs::write("/proc/self/setgroups", "deny").map_err(|e| format!("setgroups deny: {e}"))?;
    fs::write("/proc/self/uid_map", format!("{INNER_ID} {} 1", spec.uid))
        .map_err(|e| format!("uid_map: {e}"))?;
    fs::write("/proc/self/gid_map", format!("{INNER_ID} {} 1", spec.gid))
        .map_err(|e| format!("gid_map: {e}"))?;
    nix::unistd::sethostname("sandbox").map_err(|e| format!("sethostname: {e}"))?;

    build_root(spec)?;
    // Only now: the launcher's own writes of source and stdin must not trip
    // RLIMIT_FSIZE. Lowering limits needs no privilege.
    set_rlimits(spec)?;

    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let (lifeline_r, lifeline_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| format!("pipe: {e}"))?;
    Ok(Pipes {
        status_r: fs::File::from(status_r),
        status_w: fs::File::from(status_w),
        lifeline_r,
        lifeline_w,
    })
}

fn set_rlimits(spec: &Spec) -> Result<(), String> {
    let l = &spec.limits;
    let cpu_s = l.cpu_ms.div_ceil(1000).max(1);
    let limits = [
        (Resource::RLIMIT_CORE, 0, 0),
        // SIGXCPU at the limit, SIGKILL a second later if it is caught.
        (Resource::RLIMIT_CPU, cpu_s, cpu_s + 1),
        (Resource::RLIMIT_FSIZE, l.workdir_bytes, l.workdir_bytes),
        (Resource::RLIMIT_NOFILE, 256, 256),
    ];
    for (res, soft, hard) in limits {
        setrlimit(res, soft, hard).map_err(|e| format!("setrlimit {res:?}: {e}"))?;
    }
    if let Some(n) = spec.nproc {
        setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(|e| format!("RLIMIT_NPROC: {e}"))?;
    }
    Ok(())
}

fn flag_err(what: &str, path: &Path) -> impl FnOnce(nix::Error) -> String {
    let what = format!("{what} {}", path.display());
    move |e| format!("{what}: {e}")
}

/// Bind `src` read-only at `dst`, keeping the flags the kernel locks for a
/// mount inherited from a more privileged namespace (changing them is EPERM).
fn bind_ro(src: &Path, dst: &Path) -> Result<(), String> {
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(flag_err("bind", dst))?;
    let st = nix::sys::statvfs::statvfs(src).map_err(flag_err("statvfs", src))?;
    let f = st.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    for (st_flag, ms_flag) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(st_flag) {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, dst, None::<&str>, flags, None::<&str>).map_err(flag_err("remount", dst))
}

fn mkdir(path: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("mkdir {}: {e}", path.display()))
}

fn tmpfs(dst: &Path, options: &str, extra: MsFlags) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dst,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | extra,
        Some(options),
    )
    .map_err(flag_err("tmpfs", dst))
}

pub(crate) fn source_name(language: Language) -> &'static str {
    match language {
        Language::Python => "main.py",
        Language::Javascript => "main.js",
        Language::Bash => "main.sh",
    }
}

/// The new root: a small tmpfs holding read-only binds of what the
/// interpreters need, a size-limited tmpfs at /work, /dev with a few
/// device binds, then pivot_root. The host stays reachable at /.oldroot
/// until init has mounted its /proc (the kernel wants a visible procfs in
/// the namespace before allowing a new one), then init detaches it.
fn build_root(spec: &Spec) -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    let root = spec.root.as_path();
    tmpfs(root, "size=4m,nr_inodes=4096,mode=0755", MsFlags::empty())?;
    let at = |p: &str| root.join(p);

    mkdir(&at("usr"))?;
    bind_ro(Path::new("/usr"), &at("usr"))?;
    for name in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = Path::new("/").join(name);
        match fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&host).map_err(|e| format!("readlink {name}: {e}"))?;
                symlink(&target, at(name)).map_err(|e| format!("symlink {name}: {e}"))?;
            }
            Ok(m) if m.is_dir() => {
                mkdir(&at(name))?;
                bind_ro(&host, &at(name))?;
            }
            _ => {}
        }
    }

    mkdir(&at("etc"))?;
    let etc = at("etc");
    for name in ["ld.so.cache", "ld.so.conf"] {
        if let Ok(bytes) = fs::read(Path::new("/etc").join(name)) {
            fs::write(etc.join(name), bytes).map_err(|e| format!("etc/{name}: {e}"))?;
        }
    }
    if let Ok(target) = fs::read_link("/etc/localtime") {
        let _ = symlink(target, etc.join("localtime"));
    }
    let files: [(&str, String); 4] = [
        (
            "passwd",
            format!("sandbox:x:{INNER_ID}:{INNER_ID}:sandbox:/work:/bin/bash\n"),
        ),
        ("group", format!("sandbox:x:{INNER_ID}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".into()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files\n".into(),
        ),
    ];
    for (name, content) in files {
        fs::write(etc.join(name), content).map_err(|e| format!("etc/{name}: {e}"))?;
    }

    let dev = at("dev");
    mkdir(&dev)?;
    tmpfs(&dev, "size=64k,nr_inodes=64,mode=0755", MsFlags::MS_NOEXEC)?;
    for name in ["null", "zero", "full", "random", "urandom"] {
        let target = dev.join(name);
        fs::write(&target, b"").map_err(|e| format!("dev/{name}: {e}"))?;
        mount(
            Some(&Path::new("/dev").join(name)),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(flag_err("bind", &target))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, dev.join(name)).map_err(|e| format!("dev/{name}: {e}"))?;
    }

    let work = at("work");
    mkdir(&work)?;
    tmpfs(
        &work,
        &format!(
            "size={},nr_inodes=16384,mode=0755",
            // The job's own source and stdin do not eat into its allowance.
            spec.limits.workdir_bytes + (spec.source.len() + spec.stdin.len()) as u64 + 8192
        ),
        MsFlags::MS_NOEXEC,
    )?;
    fs::write(work.join(source_name(spec.language)), &spec.source)
        .map_err(|e| format!("writing source: {e}"))?;
    fs::write(work.join(STDIN_FILE), &spec.stdin).map_err(|e| format!("writing stdin: {e}"))?;
    // /tmp shares /work's size limit: it is a directory of the same tmpfs.
    let work_tmp = work.join(".tmp");
    mkdir(&work_tmp)?;
    let tmp = at("tmp");
    mkdir(&tmp)?;
    mount(
        Some(&work_tmp),
        &tmp,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(flag_err("bind", &tmp))?;

    mkdir(&at("proc"))?;
    mkdir(&at(".oldroot"))?;
    nix::unistd::pivot_root(root, &at(".oldroot")).map_err(|e| format!("pivot_root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// The launcher's side after the fork: wait for init, relay its report.
fn supervise(init: Pid, status: &mut fs::File) -> Report {
    let mut buf = Vec::new();
    // EOF comes when init exits (or hands the write end to nobody else:
    // it is close-on-exec, so the interpreter never holds it).
    let _ = status.read_to_end(&mut buf);
    let waited = loop {
        match waitpid(init, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other,
        }
    };
    if let Ok(report) = serde_json::from_slice::<Report>(&buf) {
        return report;
    }
    match waited {
        Ok(WaitStatus::Signaled(_, sig, _)) => Report::InitKilled { signal: sig as i32 },
        other => Report::Setup {
            error: format!("sandbox init ended without a report: {other:?}"),
        },
    }
}

/// PID 1 of the sandbox. Returns never: it exits, and the kernel then kills
/// whatever the job left running in the namespace.
fn init(spec: &Spec, mut status: fs::File, lifeline: OwnedFd) -> ! {
    let report = match init_setup(spec, &lifeline).and_then(reap) {
        Ok(r) => r,
        Err(error) => Report::Setup { error },
    };
    if let Ok(msg) = serde_json::to_vec(&report) {
        let _ = status.write_all(&msg);
    }
    std::process::exit(0)
}

fn init_setup(spec: &Spec, lifeline: &OwnedFd) -> Result<std::process::Command, String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    // The launcher may have died before PDEATHSIG was armed: its end of the
    // lifeline is then closed, and a non-blocking read sees EOF, not EAGAIN.
    let mut probe = [0u8; 1];
    if let Ok(0) = nix::unistd::read(lifeline, &mut probe) {
        return Err("launcher died during setup".into());
    }
    // Not dumpable: the job (same uid) cannot open /proc/1/fd/* or ptrace us.
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;

    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc: {e}"))?;
    umount2("/.oldroot", MntFlags::MNT_DETACH).map_err(|e| format!("detaching host: {e}"))?;
    fs::remove_dir("/.oldroot").map_err(|e| format!("rmdir /.oldroot: {e}"))?;
    for dir in ["/", "/dev"] {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| format!("remount {dir} read-only: {e}"))?;
    }
    mount(
        None::<&str>,
        "/tmp",
        None::<&str>,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("remount /tmp: {e}"))?;

    nix::unistd::chdir("/work").map_err(|e| format!("chdir /work: {e}"))?;
    let stdin = fs::File::open(STDIN_FILE).map_err(|e| format!("stdin: {e}"))?;
    fs::remove_file(STDIN_FILE).map_err(|e| format!("unlink stdin: {e}"))?;

    sys::drop_all_capabilities().map_err(|e| format!("dropping capabilities: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    landlock()?;
    super::seccomp::install()?;

    let program = match spec.language {
        Language::Python => "/usr/bin/python3",
        Language::Javascript => "/usr/bin/node",
        Language::Bash => "/bin/bash",
    };
    let mut cmd = std::process::Command::new(program);
    cmd.arg(source_name(spec.language))
        .env_clear()
        .envs(ENV)
        .current_dir("/work")
        .stdin(stdin)
        .arg0(program);
    // The interpreter gets a fresh process group: `kill 0` from the job
    // then spares init (which ignores it anyway as a namespace init).
    cmd.process_group(0);
    Ok(cmd)
}

const ENV: [(&str, &str); 7] = [
    ("PATH", "/usr/bin:/bin"),
    ("HOME", "/work"),
    ("LANG", "C.UTF-8"),
    ("PYTHONUNBUFFERED", "1"),
    ("PYTHONDONTWRITEBYTECODE", "1"),
    ("TMPDIR", "/tmp"),
    ("USER", "sandbox"),
];

/// Landlock, as much as the kernel offers: read/execute on the system
/// binds, read/write on /work and /tmp, device access on /dev, no TCP bind
/// or connect, and (ABI 6) no signals or abstract sockets across the domain.
fn landlock() -> Result<(), String> {
    use landlock::{
        path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr,
        Scope, ABI,
    };
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let read = AccessFs::from_read(abi);
    let all = AccessFs::from_all(abi);
    let write = all & !AccessFs::Execute;
    Ruleset::default()
        .handle_access(all)
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .add_rules(path_beneath_rules(["/usr", "/etc", "/proc"], read))
        .map_err(err)?
        .add_rules(path_beneath_rules(["/work", "/tmp"], write))
        .map_err(err)?
        .add_rules(path_beneath_rules(
            [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
            ],
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev,
        ))
        .map_err(err)?
        .add_rules(path_beneath_rules(["/dev", "/"], AccessFs::ReadDir))
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(())
}

/// Start the interpreter and reap until it is gone; orphans re-parented
/// to us are reaped on the way so they do not pile up as zombies.
fn reap(mut cmd: std::process::Command) -> Result<Report, String> {
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting interpreter: {e}"))?;
    let main = Pid::from_raw(child.id() as i32);
    let status = loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == main => break Ok(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => break Err(sig as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("waitpid: {e}")),
        }
    };
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map_err(|e| format!("getrusage: {e}"))?;
    let ms = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1000 + t.tv_usec() as u64 / 1000;
    let cpu_ms = ms(usage.user_time()) + ms(usage.system_time());
    Ok(match status {
        Ok(code) => Report::Exited { code, cpu_ms },
        Err(signal) => Report::Signaled { signal, cpu_ms },
    })
}
