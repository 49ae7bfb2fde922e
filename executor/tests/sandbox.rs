//! The real sandbox against real interpreters: the happy paths, the limits,
//! and a hostile set, each followed by a check that nothing of the run is
//! left on the host (no process of the slot uids, no cgroup).

use std::path::Path;
use std::time::{Duration, Instant};

use tandem_executor::sandbox::{
    processes_of_uid, Finish, Language, Limits, Outcome, RunRequest, Sandbox, SandboxConfig,
};
use tokio_util::sync::CancellationToken;

fn sandbox(max_concurrent: usize) -> Sandbox {
    Sandbox::new(SandboxConfig {
        launcher: vec![env!("CARGO_BIN_EXE_tandem-sandbox").into()],
        max_concurrent,
        ceiling: Limits::default(),
    })
    .expect("sandbox")
}

fn req(language: Language, source: &str) -> RunRequest {
    RunRequest {
        language,
        source: source.into(),
        stdin: String::new(),
        limits: Limits::default(),
    }
}

async fn run(sb: &Sandbox, r: RunRequest) -> Outcome {
    let out = sb
        .run(r, None, &CancellationToken::new())
        .await
        .expect("run");
    assert_clean(sb);
    out
}

/// Nothing of the sandbox's runs is left: no process of its uids, no cgroup.
fn assert_clean(sb: &Sandbox) {
    for uid in sb.uids() {
        assert!(
            processes_of_uid(uid).is_empty(),
            "leftover processes of uid {uid}: {:?}",
            processes_of_uid(uid)
        );
    }
    for dir in sb.cgroup_dirs() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            for uid in sb.uids() {
                assert!(
                    !name.starts_with(&format!("{}{uid}-", Sandbox::cgroup_prefix())),
                    "leftover cgroup {name} in {}",
                    dir.display()
                );
            }
        }
    }
}

#[tokio::test]
async fn python_happy_path() {
    let sb = sandbox(1);
    let o = run(&sb, req(Language::Python, "print('hello', 6 * 7)")).await;
    assert_eq!(o.finish, Finish::Exited(0), "{o:?}");
    assert_eq!(o.stdout, "hello 42\n");
    assert_eq!(o.stderr, "");
}

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

fn req_with(language: Language, source: &str, l: Limits) -> RunRequest {
    RunRequest {
        limits: l,
        ..req(language, source)
    }
}

#[tokio::test]
async fn javascript_happy_path() {
    let sb = sandbox(1);
    let o = run(
        &sb,
        req(
            Language::Javascript,
            "console.log([1,2,3].map(x => x * 2).join(','))",
        ),
    )
    .await;
    assert_eq!(o.finish, Finish::Exited(0), "{o:?}");
    assert_eq!(o.stdout, "2,4,6\n");
}

#[tokio::test]
async fn bash_happy_path() {
    let sb = sandbox(1);
    let o = run(
        &sb,
        req(
            Language::Bash,
            "for i in 1 2 3; do echo -n $i; done; echo; pwd; id -u",
        ),
    )
    .await;
    assert_eq!(o.finish, Finish::Exited(0), "{o:?}");
    assert_eq!(o.stdout, "123\n/work\n1000\n");
}

#[tokio::test]
async fn stdin_reaches_the_job() {
    let sb = sandbox(1);
    let mut r = req(
        Language::Python,
        "import sys\nprint(sys.stdin.read().upper(), end='')",
    );
    r.stdin = "line one\nline two\n".into();
    let o = run(&sb, r).await;
    assert_eq!(o.finish, Finish::Exited(0), "{o:?}");
    assert_eq!(o.stdout, "LINE ONE\nLINE TWO\n");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let sb = sandbox(2);
    let o = run(&sb, req(Language::Bash, "exit 3")).await;
    assert_eq!(o.finish, Finish::Exited(3));
    let o = run(&sb, req(Language::Python, "import sys; sys.exit(7)")).await;
    assert_eq!(o.finish, Finish::Exited(7));
    let o = run(&sb, req(Language::Javascript, "process.exit(9)")).await;
    assert_eq!(o.finish, Finish::Exited(9));
    let o = run(&sb, req(Language::Python, "raise ValueError('boom')")).await;
    assert_eq!(o.finish, Finish::Exited(1));
    assert!(o.stderr.contains("ValueError: boom"), "{o:?}");
    let o = run(&sb, req(Language::Bash, "kill -SEGV $$")).await;
    assert_eq!(o.finish, Finish::Signaled(libc::SIGSEGV), "{o:?}");
}

#[tokio::test]
async fn stdout_and_stderr_are_separate() {
    let sb = sandbox(1);
    let o = run(
        &sb,
        req(Language::Bash, "echo out; echo err >&2; echo out2"),
    )
    .await;
    assert_eq!(o.stdout, "out\nout2\n");
    assert_eq!(o.stderr, "err\n");
    assert!(!o.stdout_truncated && !o.stderr_truncated);
}

#[tokio::test]
async fn output_beyond_the_limit_is_truncated() {
    let sb = sandbox(1);
    let l = limits(|l| l.output_bytes = 1000);
    let o = run(
        &sb,
        req_with(
            Language::Python,
            "print('x' * 5000)\nimport sys; print('e', file=sys.stderr)",
            l,
        ),
    )
    .await;
    assert_eq!(o.finish, Finish::Exited(0), "{o:?}");
    assert_eq!(o.stdout, "x".repeat(1000));
    assert!(o.stdout_truncated);
    assert_eq!(o.stderr, "e\n");
    assert!(!o.stderr_truncated);
}

#[tokio::test]
async fn live_output_is_sent() {
    let sb = sandbox(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let o = sb
        .run(
            req(Language::Bash, "echo a; echo b >&2; echo c"),
            Some(tx),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut err = Vec::new();
    while let Some((stream, chunk)) = rx.recv().await {
        match stream {
            tandem_executor::sandbox::OutputStream::Stdout => out.extend_from_slice(&chunk),
            tandem_executor::sandbox::OutputStream::Stderr => err.extend_from_slice(&chunk),
        }
    }
    assert_eq!(out, o.stdout.as_bytes());
    assert_eq!(err, b"b\n");
}

#[tokio::test]
async fn limits_never_exceed_the_ceiling() {
    let sb = Sandbox::new(SandboxConfig {
        launcher: vec![env!("CARGO_BIN_EXE_tandem-sandbox").into()],
        max_concurrent: 1,
        ceiling: limits(|l| l.wall_ms = 1000),
    })
    .unwrap();
    let t = Instant::now();
    let o = run(
        &sb,
        req_with(Language::Bash, "sleep 30", limits(|l| l.wall_ms = 100_000)),
    )
    .await;
    assert_eq!(o.finish, Finish::TimedOut);
    assert!(t.elapsed() < Duration::from_secs(6));
}

#[tokio::test]
async fn concurrent_runs_share_the_slots() {
    let sb = sandbox(2);
    let cancel = CancellationToken::new();
    let runs = (0..5).map(|i| sb.run(req(Language::Python, &format!("print({i})")), None, &cancel));
    let outs = futures::future::join_all(runs).await;
    for (i, o) in outs.into_iter().enumerate() {
        let o = o.unwrap();
        assert_eq!(o.stdout, format!("{i}\n"));
    }
    assert_clean(&sb);
}

// ---- limits ----

#[tokio::test]
async fn fork_bomb_is_contained() {
    let sb = sandbox(1);
    let l = limits(|l| {
        l.processes = 16;
        l.wall_ms = 3000;
    });
    let t = Instant::now();
    let o = run(&sb, req_with(Language::Bash, ":(){ :|:& };:", l.clone())).await;
    assert!(t.elapsed() < Duration::from_secs(8), "{o:?}");
    // Counting what fork allows: never more than the limit.
    let src = "import os, time\nok = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n            time.sleep(5); os._exit(0)\n        ok += 1\n    except OSError:\n        pass\nprint(ok)";
    let o = run(&sb, req_with(Language::Python, src, l)).await;
    let forks: u32 = o.stdout.trim().parse().unwrap_or_else(|_| panic!("{o:?}"));
    assert!(forks < 16, "{forks} forks succeeded: {o:?}");
}

#[tokio::test]
async fn memory_bomb_hits_the_memory_limit() {
    let sb = sandbox(1);
    if !Path::new("/sys/fs/cgroup/memory").exists() {
        eprintln!("no memory cgroup here: {}", sb.enforcement());
        return;
    }
    let l = limits(|l| l.memory_bytes = 64 << 20);
    let o = run(
        &sb,
        req_with(
            Language::Python,
            "x = []\nwhile True:\n    x.append(b'\\x01' * (1 << 20))",
            l,
        ),
    )
    .await;
    assert_eq!(o.finish, Finish::MemoryLimit, "{o:?}");
    let o = run(
        &sb,
        req_with(
            Language::Javascript,
            "const a = []; while (true) a.push(Buffer.alloc(1 << 20, 1));",
            limits(|l| l.memory_bytes = 64 << 20),
        ),
    )
    .await;
    assert_eq!(o.finish, Finish::MemoryLimit, "{o:?}");
}

#[tokio::test]
async fn busy_loop_hits_the_cpu_limit() {
    let sb = sandbox(1);
    let l = limits(|l| l.cpu_ms = 1000);
    let t = Instant::now();
    let o = run(&sb, req_with(Language::Python, "while True: pass", l)).await;
    assert!(
        matches!(o.finish, Finish::CpuLimit | Finish::TimedOut),
        "{o:?}"
    );
    assert_eq!(o.finish, Finish::CpuLimit, "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(7));
}

#[tokio::test]
async fn sleeping_past_the_wall_limit_times_out() {
    let sb = sandbox(1);
    let l = limits(|l| l.wall_ms = 1500);
    let t = Instant::now();
    let o = run(
        &sb,
        req_with(Language::Bash, "echo before; sleep 30; echo after", l),
    )
    .await;
    assert_eq!(o.finish, Finish::TimedOut);
    assert_eq!(o.stdout, "before\n", "output before the kill is kept");
    assert!(t.elapsed() < Duration::from_millis(1500 + 5000));
}

#[tokio::test]
async fn ten_gigabytes_of_output_are_truncated() {
    let sb = sandbox(1);
    let l = limits(|l| l.wall_ms = 3000);
    let t = Instant::now();
    let o = run(
        &sb,
        req_with(
            Language::Bash,
            "head -c 10000000000 /dev/zero | tr '\\0' x",
            l,
        ),
    )
    .await;
    assert!(o.stdout_truncated);
    assert_eq!(o.stdout.len(), 1 << 20);
    assert!(t.elapsed() < Duration::from_secs(3 + 5));
}

#[tokio::test]
async fn huge_files_are_refused() {
    let sb = sandbox(1);
    let l = limits(|l| l.workdir_bytes = 4 << 20);
    let src = r#"
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
for path in ['/work/big', '/tmp/big']:
    try:
        with open(path, 'wb') as f:
            for _ in range(64):
                f.write(b'\0' * (1 << 20))
        print('wrote', path)
    except OSError as e:
        print('refused')
"#;
    let o = run(&sb, req_with(Language::Python, src, l)).await;
    assert_eq!(o.stdout, "refused\nrefused\n", "{o:?}");
}

// ---- hostile ----

#[tokio::test]
async fn no_network_not_even_host_loopback() {
    let sb = sandbox(1);
    let src = r#"
import socket
for host, port in [('127.0.0.1', 5432), ('127.0.0.1', 4222), ('127.0.0.1', 6379), ('1.1.1.1', 53), ('8.8.8.8', 443)]:
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        print('connected', host, port)
    except OSError as e:
        print('refused')
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))
    print('sent udp')
except OSError:
    print('refused')
"#;
    let o = run(&sb, req(Language::Python, src)).await;
    assert_eq!(o.stdout, "refused\n".repeat(6), "{o:?}");
}

#[tokio::test]
async fn landlock_refuses_tcp_bind() {
    let sb = sandbox(1);
    if sb.enforcement().landlock_abi < 4 {
        eprintln!("no Landlock TCP rules here: {}", sb.enforcement());
        return;
    }
    // The empty network namespace alone would let this bind succeed.
    let src = "import socket\ntry:\n    socket.socket().bind(('0.0.0.0', 8000)); print('bound')\nexcept PermissionError:\n    print('refused')";
    let o = run(&sb, req(Language::Python, src)).await;
    assert_eq!(o.stdout, "refused\n", "{o:?}");
}

#[tokio::test]
async fn host_secrets_are_out_of_reach() {
    // The executor's own environment holds the secret (nothing else in this
    // binary reads the variable, so setting it from a test is harmless).
    std::env::set_var("TANDEM_FAKE_SECRET", "hunter2-do-not-leak");
    let sb = sandbox(1);
    let src = r#"
cat /etc/shadow
cat /proc/1/environ
env
cat /proc/*/environ
grep -rs hunter2 /proc/*/environ /proc/*/cmdline
ls /proc
echo end
"#;
    let o = run(&sb, req(Language::Bash, src)).await;
    let all = format!("{}{}", o.stdout, o.stderr);
    assert!(!all.contains("hunter2"), "{o:?}");
    assert!(!all.contains("TANDEM_FAKE_SECRET"), "{o:?}");
    assert!(!all.contains("root:"), "no shadow or passwd content: {o:?}");
    assert!(o.stderr.contains("/etc/shadow: No such file"), "{o:?}");
    assert!(o.stdout.ends_with("end\n"));
    // Only the sandbox's own processes are visible.
    let pids: Vec<u32> = o.stdout.lines().filter_map(|l| l.parse().ok()).collect();
    assert!(!pids.is_empty() && pids.len() < 10, "{pids:?}");
    assert!(pids.iter().all(|&p| p < 100), "{pids:?}");
}

#[tokio::test]
async fn writing_outside_the_workdir_fails() {
    let sb = sandbox(1);
    let src = "for f in /x /usr/x /etc/passwd /etc/x /dev/x /proc/x /bin/x; do (echo pwned > $f) 2>/dev/null && echo \"wrote $f\"; done; echo ok > /work/ok && cat /work/ok";
    let o = run(&sb, req(Language::Bash, src)).await;
    assert_eq!(o.stdout, "ok\n", "{o:?}");
    assert!(!Path::new("/x").exists() && !Path::new("/usr/x").exists());
}

#[tokio::test]
async fn killing_everything_from_inside_spares_the_host() {
    let sb = sandbox(1);
    let mut sentinel = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let o = run(
        &sb,
        req(
            Language::Bash,
            "kill -9 -1; kill -9 $PPID; kill -9 1; echo alive",
        ),
    )
    .await;
    assert_eq!(o.stdout, "alive\n", "{o:?}");
    let o = run(&sb, req(Language::Python, "import os, signal\nfor p in [-1, os.getppid(), 1]:\n    try:\n        os.kill(p, signal.SIGKILL)\n    except OSError:\n        pass\nprint('alive')")).await;
    assert_eq!(o.stdout, "alive\n", "{o:?}");
    assert!(
        sentinel.try_wait().unwrap().is_none(),
        "host process was killed"
    );
    sentinel.kill().unwrap();
    let _ = sentinel.wait();
}

#[tokio::test]
async fn symlinks_do_not_reach_host_files() {
    let sb = sandbox(1);
    let host = std::env::temp_dir().join(format!("tandem-test-secret-{}", std::process::id()));
    std::fs::write(&host, "host-only-content").unwrap();
    let src = format!(
        "ln -s /etc/passwd p; cat p; ln -s {h} s; cat s; echo pwned > s; ln -s /proc/1/root/etc r; ls r; echo done",
        h = host.display()
    );
    let o = run(&sb, req(Language::Bash, &src)).await;
    assert!(o.stdout.ends_with("done\n"), "{o:?}");
    assert!(
        !o.stdout.contains("root:x:0:0"),
        "host /etc/passwd leaked: {o:?}"
    );
    assert!(!o.stdout.contains("host-only-content"), "{o:?}");
    assert_eq!(std::fs::read_to_string(&host).unwrap(), "host-only-content");
    std::fs::remove_file(&host).unwrap();
}

#[tokio::test]
async fn privilege_changes_are_refused() {
    let sb = sandbox(1);
    let src = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def check(name, ok):
    print(name, 'refused' if not ok else 'ALLOWED')
try:
    os.setuid(0); check('setuid', True)
except OSError:
    check('setuid', False)
check('unshare', libc.unshare(0x10000000) == 0)
check('unshare-net', libc.unshare(0x40000000) == 0)
check('ptrace', libc.ptrace(16, 1, 0, 0) == 0)
check('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0)
check('chroot', libc.chroot(b'/tmp') == 0)
check('keyctl', libc.syscall(250, 0, 0, 0, 0) >= 0)
check('bpf', libc.syscall(321, 0, 0, 0) >= 0)
import subprocess
for cmd in [['/usr/bin/su', '-c', 'id -u'], ['/usr/bin/unshare', '-r', 'id', '-u'], ['/usr/bin/mount', '-t', 'tmpfs', 'x', '/tmp']]:
    r = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL)
    check(cmd[0], r.returncode == 0)
print(os.getuid(), os.geteuid())
"#;
    let o = run(&sb, req(Language::Python, src)).await;
    assert!(!o.stdout.contains("ALLOWED"), "{o:?}");
    assert_eq!(o.stdout.matches("refused").count(), 11, "{o:?}");
    assert!(o.stdout.ends_with("1000 1000\n"), "{o:?}");
}

#[tokio::test]
async fn daemonized_children_die_with_the_job() {
    let sb = sandbox(1);
    let marker = std::env::temp_dir().join(format!("tandem-test-marker-{}", std::process::id()));
    let src = "nohup setsid bash -c 'sleep 2; echo late; sleep 60' >/dev/null 2>&1 &\n(setsid sleep 60 &)\necho started";
    let t = Instant::now();
    let o = run(&sb, req(Language::Bash, src)).await;
    assert_eq!(o.stdout, "started\n");
    // A surviving daemon would hold stdout open until the 10 s wall limit.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the run waited for the daemon"
    );
    // run() asserted no process of the slot uid is left; and later still:
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_clean(&sb);
    assert!(!marker.exists());
}

#[tokio::test]
async fn cancel_kills_the_tree() {
    let sb = sandbox(1);
    let cancel = CancellationToken::new();
    let uid = sb.uids().start;
    let c = cancel.clone();
    let watcher = async move {
        // Cancel once the job's processes exist.
        for _ in 0..200 {
            if processes_of_uid(uid).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.cancel();
        Instant::now()
    };
    let job = sb.run(
        req(Language::Bash, "sleep 60 & sleep 60 & echo up; wait"),
        None,
        &cancel,
    );
    let (o, cancelled_at) = tokio::join!(job, watcher);
    let o = o.unwrap();
    assert_eq!(o.finish, Finish::Cancelled);
    assert_eq!(o.stdout, "up\n");
    assert!(cancelled_at.elapsed() < Duration::from_secs(1));
    assert_clean(&sb);
}

#[tokio::test]
async fn dropping_the_run_kills_the_tree() {
    let sb = sandbox(1);
    let r = tokio::time::timeout(
        Duration::from_millis(800),
        sb.run(
            req(Language::Bash, "sleep 60"),
            None,
            &CancellationToken::new(),
        ),
    )
    .await;
    assert!(r.is_err(), "the run should still be going");
    let uid = sb.uids().start;
    let t = Instant::now();
    while (!processes_of_uid(uid).is_empty() || leftover_cgroups(&sb) > 0)
        && t.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_clean(&sb);
    // The slot came back: another run goes through.
    let o = run(&sb, req(Language::Bash, "echo again")).await;
    assert_eq!(o.stdout, "again\n");
}

fn leftover_cgroups(sb: &Sandbox) -> usize {
    sb.cgroup_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().into_string().unwrap();
            sb.uids()
                .any(|u| name.starts_with(&format!("{}{u}-", Sandbox::cgroup_prefix())))
        })
        .count()
}

// ---- the executor itself SIGKILLed ----

const HELPER_ENV: &str = "TANDEM_SANDBOX_TEST_HELPER_UID";

/// Not a test on its own: the "executor" that `executor_sigkill_kills_the_job`
/// starts in a child process and SIGKILLs.
#[tokio::test]
async fn helper_executor() {
    let Ok(uid) = std::env::var(HELPER_ENV) else {
        return;
    };
    let sb = Sandbox::with_uids(
        SandboxConfig {
            launcher: vec![env!("CARGO_BIN_EXE_tandem-sandbox").into()],
            max_concurrent: 1,
            ceiling: Limits::default(),
        },
        uid.parse().unwrap(),
    )
    .unwrap();
    let _ = sb
        .run(
            req_with(
                Language::Bash,
                "(setsid sleep 60 &); sleep 60",
                limits(|l| l.wall_ms = 60_000),
            ),
            None,
            &CancellationToken::new(),
        )
        .await;
}

#[tokio::test]
async fn executor_sigkill_kills_the_job() {
    let uid = 1_400_000_000 + (std::process::id() % 100_000) * 10;
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_executor",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, uid.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while processes_of_uid(uid).len() < 4 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(processes_of_uid(uid).len() >= 4, "the job never started");
    helper.kill().unwrap();
    helper.wait().unwrap();
    let t = Instant::now();
    while !processes_of_uid(uid).is_empty() && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = processes_of_uid(uid);
    // What the dead executor could not clean: its cgroups and mount point.
    let sb = sandbox(1);
    for dir in sb.cgroup_dirs() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{}{uid}-", Sandbox::cgroup_prefix()))
            {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(
        std::env::temp_dir().join(format!("{}{uid}-0", Sandbox::cgroup_prefix())),
    );
    assert!(left.is_empty(), "job survived the executor: {left:?}");
}

// ---- cost ----

#[tokio::test]
async fn spawn_cost() {
    let sb = sandbox(2);
    let b = sb.bench_python_print(10).await.unwrap();
    eprintln!(
        "{} runs of print(1) in {:?}: mean run {:?}, {:.1} runs/s ({})",
        b.runs,
        b.elapsed,
        b.mean_run,
        b.runs as f64 / b.elapsed.as_secs_f64(),
        sb.enforcement()
    );
    assert_eq!(b.runs, 10);
    assert_clean(&sb);
}

/// On a machine with v1 memory and pids controllers (like this one) the
/// sandbox uses them, rather than silently taking the fallbacks.
#[tokio::test]
async fn cgroups_are_used_where_present() {
    let sb = sandbox(1);
    let e = sb.enforcement();
    eprintln!("{e}");
    if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        assert!(e.memory_cgroup, "{e}");
    }
    if Path::new("/sys/fs/cgroup/pids").is_dir() {
        assert!(e.pids_cgroup, "{e}");
    }
    // While a run is going its cgroups exist and hold its processes.
    let cancel = CancellationToken::new();
    let job = sb.run(req(Language::Bash, "sleep 60"), None, &cancel);
    let look = async {
        let t = Instant::now();
        let mut seen = 0;
        while seen == 0 && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            seen = leftover_cgroups(&sb);
        }
        cancel.cancel();
        seen
    };
    let (o, seen) = tokio::join!(job, look);
    assert_eq!(o.unwrap().finish, Finish::Cancelled);
    if e.memory_cgroup || e.pids_cgroup {
        assert!(seen > 0, "no run cgroup seen");
    }
    assert_clean(&sb);
}

#[tokio::test]
async fn leftovers_of_a_killed_executor_are_swept_once_old() {
    let tmp = std::env::temp_dir();
    let old = tmp.join(format!("tandem-sbx-leftover-old-{}", std::process::id()));
    let young = tmp.join(format!("tandem-sbx-leftover-young-{}", std::process::id()));
    for dir in [&old, &young] {
        let _ = std::fs::remove_dir(dir);
        std::fs::create_dir(dir).unwrap();
    }
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    let _sb = sandbox(1);
    assert!(!old.exists(), "an old, empty leftover is removed");
    assert!(young.exists(), "a young one may be another run's: kept");
    std::fs::remove_dir(&young).unwrap();
}
