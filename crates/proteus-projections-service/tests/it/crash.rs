//! SIGKILL during projection processing: after a restart the read model equals a rebuild
//! from zero. The test binary runs itself as a child process that projects a large event set;
//! the parent kills it at random moments several times, lets it finish, then compares every
//! document with projections of the same definitions built from zero under other names.
//!
//! The definitions increment, append and count, so a batch whose documents were committed
//! without its checkpoint (or the reverse) would be applied twice (or lost) after the restart
//! and the comparison would fail.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use proteus_projections_service::ProjectionServiceConfig;

use crate::support::{Env, Rng, account_events, append, assert_same, balances, by_type, recent};

/// Set in the child: the data directory whose projections it runs until it is killed.
const CRASH_CHILD_DIR: &str = "PROTEUS_PROJECTIONS_CRASH_CHILD_DIR";
const NAMES: [&str; 3] = ["balances", "by-type", "recent"];

fn child_config() -> ProjectionServiceConfig {
    // Small batches: many commits, so a kill lands between and during them.
    ProjectionServiceConfig {
        batch_events_max: 150,
        ..Default::default()
    }
}

/// The child: opens the stores and the service (whose runners continue from their
/// checkpoints), then prints `CP <name> <position>` lines until it is killed.
async fn crash_child(dir: &Path) {
    use std::io::Write;
    let env = Env::open(dir, child_config()).await;
    println!("READY");
    loop {
        for name in NAMES {
            let status = env.service.status(name).await.unwrap();
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "CP {name} {} {}",
                status.checkpoint.position, status.head_position
            )
            .unwrap();
            out.flush().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_processing_then_the_read_model_equals_a_rebuild() {
    if let Some(dir) = std::env::var_os(CRASH_CHILD_DIR) {
        crash_child(Path::new(&dir)).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        // The events, written before any projection runs; then the projections are created
        // and the service closed at once (it may have processed a little).
        let env = Env::open(dir.path(), child_config()).await;
        let mut rng = Rng::new(42);
        for account in 0..1_000 {
            let batch = account_events(account, &mut rng, 40);
            append(env.events.as_ref(), &format!("acct-{account}"), batch).await;
            if account % 10 == 0 {
                let noise = vec![("Noise", serde_json::json!({"n": account}))];
                append(env.events.as_ref(), &format!("other-{account}"), noise).await;
            }
        }
        for (name, definition) in NAMES.iter().zip([balances(), by_type(), recent()]) {
            env.service.create(name, &definition, None).await.unwrap();
        }
        env.close().await;
    }
    let mut rng = Rng::from_clock();
    let mut killed_mid_processing = 0;
    let mut last_progress = 0u64;
    for cycle in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash::kill_9_during_processing_then_the_read_model_equals_a_rebuild",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Kill at a random moment after start-up, once it reported progress.
        let delay = Duration::from_millis(20 + rng.below(400));
        let mut ready_at = None;
        let mut progress = 0u64;
        let mut behind = false;
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("cycle {cycle}: the child stopped before it was killed")
            };
            // The harness prints the test name on the same line before it.
            if line.ends_with("READY") {
                ready_at = Some(Instant::now());
            } else if let Some((_, rest)) = line.split_once("CP ") {
                let parts: Vec<&str> = rest.split(' ').collect();
                let (position, head): (u64, u64) =
                    (parts[1].parse().unwrap(), parts[2].parse().unwrap());
                progress += position;
                behind |= position <= head;
            }
            if ready_at.is_some_and(|at| at.elapsed() >= delay) && progress > 0 {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if behind {
            killed_mid_processing += 1;
        }
        eprintln!("cycle {cycle}: killed after {delay:?} (behind the head: {behind})");
        last_progress = last_progress.max(progress);
    }
    assert!(
        killed_mid_processing >= 2,
        "only {killed_mid_processing} kills landed while projecting; make the event set larger"
    );

    let env = Env::open(dir.path(), ProjectionServiceConfig::default()).await;
    for (name, definition) in NAMES.iter().zip([balances(), by_type(), recent()]) {
        env.settle(name).await;
        let fresh = format!("{name}-rebuilt");
        env.service.create(&fresh, &definition, None).await.unwrap();
        env.settle(&fresh).await;
        let rebuilt = env.docs(&fresh).await;
        assert!(!rebuilt.is_empty());
        assert_same(name, &env.docs(name).await, &rebuilt);
        let (a, b) = (
            env.service.status(name).await.unwrap(),
            env.service.status(&fresh).await.unwrap(),
        );
        assert_eq!(a.checkpoint.events_processed, b.checkpoint.events_processed);
    }
    env.close().await;
}
