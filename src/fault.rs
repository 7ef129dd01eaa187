//! Named points where a test can stop the process at the worst moment: when
//! `KIWI_STACKBUILD_FAULT` names a point (a test hook), the process sends
//! itself SIGKILL there, or SIGSTOP with `NAME:stop` (the test resumes it).

use rustix::process::{getpid, kill_process, Signal};

/// The environment variable that names the point.
pub const VAR: &str = "KIWI_STACKBUILD_FAULT";

/// Kills (or stops) the process here when `KIWI_STACKBUILD_FAULT` names `name`.
pub fn point(name: &str) {
    let Some(wanted) = std::env::var_os(VAR) else {
        return;
    };
    let signal = match wanted.to_str() {
        Some(w) if w == name => Signal::KILL,
        Some(w) if w.strip_suffix(":stop") == Some(name) => Signal::STOP,
        _ => return,
    };
    log::debug!("{VAR}={name}: signalling ourselves");
    if let Err(e) = kill_process(getpid(), signal) {
        log::warn!("{VAR}={name}: could not signal ourselves: {e}");
    }
}
