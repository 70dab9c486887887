//! Runs a test's body in a child process of the same test binary.
//!
//! Native engine code can die of a signal (`SIGILL` on a CPU that refuses an instruction the
//! engine was compiled with, `SIGSEGV`). In-process, that kills the whole test binary and
//! every test in it, and cargo reports only "process didn't exit successfully". In a child,
//! it fails the one test, and the failure names the signal and shows the child's output.
//!
//! A test written this way is two functions: `#[test] fn name()` calls
//! [`run`]`("name_in_child", &[])`, and `#[ignore] fn name_in_child()` starts with
//! `if !isolated::is_child("name_in_child") { return; }` and holds the body.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Output};

/// Set in the child to the name of the test it runs.
const CHILD_ENV: &str = "STATE_PACK_TEST_CHILD";

/// Whether this process is the child that [`run`] started for test `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(name)
}

/// The name of a signal that can end a test process.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGILL => "SIGILL (illegal instruction)",
        libc::SIGABRT => "SIGABRT (abort)",
        libc::SIGBUS => "SIGBUS (bus error)",
        libc::SIGFPE => "SIGFPE (arithmetic exception)",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV (invalid memory access)",
        libc::SIGTERM => "SIGTERM",
        _ => return format!("signal {signal}"),
    };
    name.to_string()
}

/// How a process ended, in words: "exit code 1", "killed by SIGILL (illegal instruction)".
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by {}", signal_name(signal)),
        (None, None) => "ended without a status".to_string(),
    }
}

/// The last `lines` lines of `bytes`, as text.
fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs the ignored test `name` of this test binary in a child process (with `envs` set)
/// and returns its output; panics unless the child ran exactly that test and it passed. A
/// child killed by a signal fails with the signal's name.
pub fn run(name: &str, envs: &[(&str, &str)]) -> Output {
    let out = spawn(name, envs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{name} in a child process: {}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
        describe(out.status),
        tail(&out.stdout, 30),
        tail(&out.stderr, 30),
    );
    out
}

/// Runs the ignored test `name` of this test binary in a child process and returns its
/// output, however it ended.
pub fn spawn(name: &str, envs: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, name)
        .env("RUST_BACKTRACE", "0")
        .envs(envs.iter().copied())
        .output()
        .expect("start the child test process")
}
