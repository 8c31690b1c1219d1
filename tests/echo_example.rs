//! The echo example's serve and connect modes, run as separate processes.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The example binary, which `cargo test` builds alongside the tests.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = dir.join("examples").join("echo");
    assert!(
        path.exists(),
        "{} is missing: `cargo test` without target filters builds it (or `cargo build --example echo`)",
        path.display()
    );
    path
}

/// Kills the child if the test fails before it exits.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < until,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn serve_and_connect_run_as_separate_processes() {
    let mut server = Reaper(
        Command::new(example())
            .args(["--serve", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(server.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr: SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .parse()
        .unwrap();

    let client = Command::new(example())
        .args(["--connect", &addr.to_string(), "--count", "2000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(client.stdout).unwrap();
    assert!(client.status.success(), "client failed: {stdout}");
    assert_eq!(stdout.lines().last(), Some("2000 ok, 0 failed"));

    // Ctrl-C drains the server, which then exits cleanly.
    let pid = server.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = wait_with_timeout(&mut server.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert_eq!(lines.next().unwrap().unwrap(), "draining");
}

#[test]
fn a_client_whose_calls_fail_says_so_and_exits_non_zero() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = unused.local_addr().unwrap();
    drop(unused);
    let client = Command::new(example())
        .args([
            "--connect",
            &addr.to_string(),
            "--count",
            "5",
            "--fail-fast",
        ])
        .output()
        .unwrap();
    assert!(!client.status.success());
    let stdout = String::from_utf8(client.stdout).unwrap();
    assert_eq!(stdout.lines().last(), Some("0 ok, 5 failed"));
}

#[test]
fn the_demo_runs_end_to_end() {
    let demo = Command::new(example()).output().unwrap();
    let stdout = String::from_utf8(demo.stdout).unwrap();
    assert!(demo.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("server listening on 127.0.0.1:"));
    assert_eq!(lines[1], "echo(\"hello\") -> \"hello\"");
    assert_eq!(lines[4], "check(\"boom\") -> Err(Refused(\"boom\"))");
    assert_eq!(
        lines[5],
        "sleep(500) with its 100 ms deadline -> DEADLINE_EXCEEDED (MAYBE_EXECUTED): deadline exceeded",
        "the outcome does not depend on which side noticed the deadline first"
    );
    assert_eq!(lines.last(), Some(&"server drained and stopped"));
}
