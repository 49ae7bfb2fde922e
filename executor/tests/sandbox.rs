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
