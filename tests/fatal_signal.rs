//! A process killed by a fatal signal in engine code says so in one line on stderr, and
//! still dies of that signal (so its exit status names it).

mod common;

use std::os::unix::process::ExitStatusExt;

use common::isolated;
use state_pack::engine::fatal_signal::{self, EngineCall};

#[test]
#[ignore = "run by illegal_instruction_in_an_engine_call_is_reported in a child process"]
fn executes_an_illegal_instruction() {
    if !isolated::is_child("executes_an_illegal_instruction") {
        return;
    }
    fatal_signal::install();
    let _call = EngineCall::start();
    // SAFETY: none: `ud2` raises SIGILL, which is what this child is for.
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    unsafe {
        std::arch::asm!("ud2");
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86")))]
    unsafe {
        libc::raise(libc::SIGILL);
    }
}

#[test]
fn illegal_instruction_in_an_engine_call_is_reported() {
    let out = isolated::spawn("executes_an_illegal_instruction", &[]);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGILL),
        "{}",
        isolated::describe(out.status)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: fatal signal"))
        .collect();
    assert_eq!(lines.len(), 1, "one report line: {stderr}");
    assert!(
        lines[0].starts_with("error: fatal signal SIGILL (illegal instruction) at 0x"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].contains("while the engine was computing"),
        "{}",
        lines[0]
    );
}

#[test]
#[ignore = "run by invalid_access_outside_an_engine_call_is_reported in a child process"]
fn writes_through_a_null_pointer() {
    if !isolated::is_child("writes_through_a_null_pointer") {
        return;
    }
    fatal_signal::install();
    let p = std::hint::black_box(std::ptr::null_mut::<u64>());
    // SAFETY: none: the write faults with SIGSEGV, which is what this child is for.
    unsafe { std::ptr::write_volatile(p, 1) };
}

#[test]
fn invalid_access_outside_an_engine_call_is_reported() {
    let out = isolated::spawn("writes_through_a_null_pointer", &[]);
    // Rust's own SIGSEGV handler ran after ours (it was there first) and let the default
    // action end the process.
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSEGV),
        "{}",
        isolated::describe(out.status)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: fatal signal SIGSEGV (invalid memory access) at 0x0\n"),
        "{stderr}"
    );
}
