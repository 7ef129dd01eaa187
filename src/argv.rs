//! Hides the password of `--creds USER:PASSWORD` from `ps`: once parsed, the
//! password's bytes in this process's own argv are overwritten, so
//! `/proc/PID/cmdline` no longer shows it. (Until then, for the first
//! moments of the process, it is visible: `KIWI_STACKBUILD_PASSWORD` avoids
//! even that.)

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::sync::atomic::{AtomicIsize, AtomicPtr, Ordering};

static ARGC: AtomicIsize = AtomicIsize::new(0);
static ARGV: AtomicPtr<*mut c_char> = AtomicPtr::new(std::ptr::null_mut());

// glibc and musl call .init_array functions with (argc, argv, envp): the
// same way Rust's own std learns the arguments on Linux.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static CAPTURE: extern "C" fn(c_int, *mut *mut c_char, *mut *mut c_char) = capture;

extern "C" fn capture(argc: c_int, argv: *mut *mut c_char, _envp: *mut *mut c_char) {
    ARGC.store(argc as isize, Ordering::Relaxed);
    ARGV.store(argv, Ordering::Relaxed);
}

/// Overwrites the password part of every `--creds` value in our argv with `*`.
pub fn hide_creds_password() {
    let argc = ARGC.load(Ordering::Relaxed);
    let argv = ARGV.load(Ordering::Relaxed);
    if argv.is_null() {
        return;
    }
    let mut next_is_creds = false;
    for i in 0..argc {
        // SAFETY: argv holds argc valid, NUL-terminated strings that this
        // process owns for its whole life; we only overwrite bytes in place
        // and never change a string's length.
        unsafe {
            let arg = *argv.offset(i);
            if arg.is_null() {
                break;
            }
            let bytes = CStr::from_ptr(arg).to_bytes();
            let value_start = if next_is_creds {
                Some(0)
            } else if bytes.starts_with(b"--creds=") {
                Some(b"--creds=".len())
            } else {
                None
            };
            next_is_creds = bytes == b"--creds";
            if let Some(start) = value_start {
                if let Some(colon) = bytes[start..].iter().position(|&b| b == b':') {
                    let first = start + colon + 1;
                    for j in first..bytes.len() {
                        *arg.add(j) = b'*' as c_char;
                    }
                }
            }
        }
    }
}
