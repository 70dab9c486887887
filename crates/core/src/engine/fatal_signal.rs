//! A process that dies of a fatal signal says so on stderr, in one line, before it dies.
//!
//! Native engine code (llama.cpp, candle's kernels) runs machine code chosen when it was
//! compiled: llama.cpp is built with `GGML_NATIVE`, the build machine's instruction sets. On a
//! CPU that lacks one of them, or when the kernel refuses one (AMX tiles used without the
//! permission Linux requires), the process gets `SIGILL` or `SIGSEGV`, and by default dies
//! with no message at all. [`install`] adds handlers for `SIGILL`, `SIGSEGV`, `SIGBUS` and
//! `SIGFPE` that write one line naming the signal, the faulting address and whether an
//! engine was computing ([`EngineCall`]), then give the signal to the handler that was there
//! before (Rust's stack-overflow reporter for `SIGSEGV`/`SIGBUS`) or to the default action,
//! so the exit status still names the signal. The handler only calls `write(2)` and
//! `sigaction(2)`, both async-signal-safe.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

/// Engine calls in progress in this process (any thread).
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// Marks native engine code as running while it lives, so that a fatal signal in that time
/// is reported as the engine's.
#[must_use = "the engine is marked busy only while the guard lives"]
pub struct EngineCall(());

impl EngineCall {
    /// Marks an engine call as started; it ends when the guard is dropped.
    pub fn start() -> Self {
        BUSY.fetch_add(1, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for EngineCall {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(unix)]
mod imp {
    use super::BUSY;
    use std::sync::atomic::Ordering;

    const SIGNALS: [(libc::c_int, &str); 4] = [
        (libc::SIGILL, "SIGILL (illegal instruction)"),
        (libc::SIGSEGV, "SIGSEGV (invalid memory access)"),
        (libc::SIGBUS, "SIGBUS (bus error)"),
        (libc::SIGFPE, "SIGFPE (arithmetic exception)"),
    ];

    /// The handlers that were installed before ours, by index into `SIGNALS`. Written once,
    /// before our handlers are installed, and only read afterwards.
    static mut PREVIOUS: [Option<libc::sigaction>; 4] = [None; 4];

    pub(super) fn install() {
        for (i, &(sig, _)) in SIGNALS.iter().enumerate() {
            // SAFETY: plain sigaction calls with zeroed, then filled, structs; PREVIOUS is
            // written before the handler that reads it is installed, under `Once`.
            unsafe {
                let mut new: libc::sigaction = std::mem::zeroed();
                new.sa_sigaction = handler as *const () as usize;
                new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
                libc::sigemptyset(&mut new.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                    continue;
                }
                (*std::ptr::addr_of_mut!(PREVIOUS))[i] = Some(old);
                libc::sigaction(sig, &new, std::ptr::null_mut());
            }
        }
    }

    /// Appends `bytes` to `buf` at `*len`, as far as it fits.
    fn push(buf: &mut [u8], len: &mut usize, bytes: &[u8]) {
        let n = bytes.len().min(buf.len() - *len);
        buf[*len..*len + n].copy_from_slice(&bytes[..n]);
        *len += n;
    }

    fn push_hex(buf: &mut [u8], len: &mut usize, value: usize) {
        let mut digits = [0u8; 18];
        digits[0] = b'0';
        digits[1] = b'x';
        let mut n = 2;
        let mut started = false;
        for shift in (0..usize::BITS).step_by(4).rev() {
            let d = (value >> shift) & 0xf;
            if d != 0 || started || shift == 0 {
                started = true;
                digits[n] = b"0123456789abcdef"[d];
                n += 1;
            }
        }
        push(buf, len, &digits[..n]);
    }

    extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
        let Some(i) = SIGNALS.iter().position(|&(s, _)| s == sig) else {
            return;
        };
        let mut buf = [0u8; 512];
        let mut len = 0;
        push(&mut buf, &mut len, b"error: fatal signal ");
        push(&mut buf, &mut len, SIGNALS[i].1.as_bytes());
        if !info.is_null() {
            push(&mut buf, &mut len, b" at ");
            // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
            push_hex(&mut buf, &mut len, unsafe { (*info).si_addr() } as usize);
        }
        if BUSY.load(Ordering::SeqCst) > 0 {
            push(&mut buf, &mut len, b" while the engine was computing");
            if sig == libc::SIGILL {
                push(
                    &mut buf,
                    &mut len,
                    b": this CPU or its kernel refused an instruction the engine was compiled \
                      with (llama.cpp uses the build machine's instruction sets; see \
                      docs/BUILD.md for builds that run on other CPUs)",
                );
            }
        }
        push(&mut buf, &mut len, b"\n");
        // SAFETY: write(2) is async-signal-safe; the buffer outlives the call.
        unsafe {
            libc::write(2, buf.as_ptr().cast(), len);
        }
        // Hand the signal on: to the previous handler if there was one, else restore the
        // default action and return, so the faulting instruction runs again and the default
        // action ends the process with this signal.
        // SAFETY: PREVIOUS is only written before our handlers are installed.
        let previous = unsafe { (*std::ptr::addr_of!(PREVIOUS))[i] };
        match previous {
            Some(old) if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN => {
                if old.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: the previous handler was installed with SA_SIGINFO, so this is
                    // its signature.
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        unsafe { std::mem::transmute(old.sa_sigaction) };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: a handler installed without SA_SIGINFO takes the signal number.
                    let f: extern "C" fn(libc::c_int) =
                        unsafe { std::mem::transmute(old.sa_sigaction) };
                    f(sig);
                }
            }
            _ => {
                // SAFETY: restoring the default action is async-signal-safe.
                unsafe {
                    let mut dfl: libc::sigaction = std::mem::zeroed();
                    dfl.sa_sigaction = libc::SIG_DFL;
                    libc::sigaction(sig, &dfl, std::ptr::null_mut());
                }
            }
        }
    }
}

/// Installs the fatal-signal reporter once per process; later calls do nothing.
///
/// Engines call this when they load. It is safe to call from any thread.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(unix)]
        imp::install();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_call_guards_nest() {
        let before = BUSY.load(Ordering::SeqCst);
        {
            let _a = EngineCall::start();
            let _b = EngineCall::start();
            assert_eq!(BUSY.load(Ordering::SeqCst), before + 2);
        }
        assert_eq!(BUSY.load(Ordering::SeqCst), before);
    }
}
