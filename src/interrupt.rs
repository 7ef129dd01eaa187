//! Clean ends on SIGINT, SIGTERM and SIGHUP.
//!
//! A run that is interrupted must not leave what it made half-way: scratch
//! directories, the private directory holding registry credentials, a root
//! tree being unpacked. Each of those registers its path here while it is
//! in the making (the guards below unregister when dropped), and every child
//! process registers while it runs.
//!
//! [`install`] starts a thread that waits for the three signals (through
//! `signal_hook`, so no code of ours runs in a signal handler). On the first
//! one it stops new children from starting, asks the running ones to stop
//! (SIGTERM; kiwi-ng SIGINT, see [`Stop`]) and gives them their grace
//! period to end, then SIGKILL; removes the
//! registered paths, newest first; and raises the signal again with its
//! default action, so the parent sees "killed by SIGINT". The main thread
//! meanwhile sees its child fail and unwinds; [`finish`] keeps it from
//! ending the process (or printing that error) before the cleanup is done.
//!
//! Against `kill -9` nothing here helps: children die through
//! PR_SET_PDEATHSIG (see `tools`), and a half-unpacked root is recognised by
//! its marker (see `workflow`).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use color_eyre::eyre::{Result, WrapErr};
use rustix::process::{Pid, Signal};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// How a child is asked to stop, and how long it has before SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, 3 s: skopeo and umoci end at once and need no cleanup.
    Term,
    /// SIGINT, 15 s: kiwi-ng. Its only graceful stop is KeyboardInterrupt,
    /// on which it unmounts what it bound into the root (proc, sys, dev);
    /// on SIGTERM Python dies at once and leaves those mounts, and a later
    /// `rm -rf` of the target would descend into the host's /dev.
    Int,
}

impl Stop {
    /// The signal that asks.
    pub fn signal(self) -> Signal {
        match self {
            Stop::Term => Signal::TERM,
            Stop::Int => Signal::INT,
        }
    }

    fn grace(self) -> Duration {
        match self {
            Stop::Term => Duration::from_secs(3),
            Stop::Int => Duration::from_secs(15),
        }
    }
}

/// What an interrupt cleans up, and whether one is under way.
struct Registry {
    next: u64,
    /// Paths to remove, by registration order (removed newest first).
    paths: BTreeMap<u64, PathBuf>,
    /// Running children.
    children: BTreeMap<u64, Child>,
    /// Set by the signal thread; no child starts after it.
    interrupted: bool,
}

/// A running child: its pid, and a pidfd when the kernel has them, so a
/// signal never reaches another process that reused the pid.
struct Child {
    pid: Pid,
    fd: Option<OwnedFd>,
    stop: Stop,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next: 0,
    paths: BTreeMap::new(),
    children: BTreeMap::new(),
    interrupted: false,
});

fn registry() -> MutexGuard<'static, Registry> {
    // A panic elsewhere must not stop the cleanup.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

/// Starts the signal thread. Called once, by `main`, before any work.
pub fn install() -> Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP]).wrap_err("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                clean_up_and_die(signal);
            }
        })
        .wrap_err("starting the signal thread")?;
    Ok(())
}

/// Called by `main` before it ends: while an interrupt is handled, waits for
/// the signal thread to end the process, so that neither an exit status nor
/// the error of a killed child gets in the way.
pub fn finish() {
    // The signal thread holds the lock until the process is gone.
    let interrupted = registry().interrupted;
    if interrupted {
        loop {
            std::thread::park();
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The interrupt itself: children, then paths, then the signal again.
fn clean_up_and_die(signal: i32) -> ! {
    let mut reg = registry();
    reg.interrupted = true;
    let children: Vec<Child> = std::mem::take(&mut reg.children).into_values().collect();
    end_children(&children, signal == SIGINT && terminal_sent_it_to_all());
    // Twice: the main thread goes on working meanwhile, and the second pass
    // takes what it may have made below a path between the two.
    for _ in 0..2 {
        for path in reg.paths.values().rev() {
            remove(path);
        }
    }
    // Only now: a stderr nobody reads could block us.
    log::warn!(
        "{}: stopped the children and removed what this run left half-made",
        signal_name(signal)
    );
    // The lock stays held: nothing registers or starts any more.
    let _ = signal_hook::low_level::emulate_default_handler(signal);
    std::process::exit(128 + signal);
}

fn send(child: &Child, signal: Signal) {
    let _ = match &child.fd {
        Some(fd) => rustix::process::pidfd_send_signal(fd, signal),
        None => rustix::process::kill_process(child.pid, signal),
    };
}

/// Whether a SIGINT we got most likely came from the terminal's Ctrl-C,
/// which reaches every process of the foreground process group: ours is
/// that group, and our children are in it.
fn terminal_sent_it_to_all() -> bool {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return false;
    };
    rustix::termios::tcgetpgrp(&tty).is_ok_and(|g| g == rustix::process::getpgrp())
}

/// Asks every child to stop, gives each its grace period, then SIGKILL. A
/// child that is stopped by SIGINT is not sent a second one when the
/// terminal sent the first (`sigint_delivered`): Python would break off the
/// cleanup it is doing. If it still runs when its grace is over (the SIGINT
/// may have been sent to us alone, by `kill -INT`), it gets SIGINT then,
/// which is no worse for it than SIGKILL, and another grace period.
fn end_children(children: &[Child], sigint_delivered: bool) {
    let started = Instant::now();
    let mut asked: Vec<bool> = children
        .iter()
        .map(|c| !(sigint_delivered && c.stop == Stop::Int))
        .collect();
    for (c, _) in children.iter().zip(&asked).filter(|(_, asked)| **asked) {
        send(c, c.stop.signal());
    }
    loop {
        let mut waiting = false;
        for (c, asked) in children.iter().zip(asked.iter_mut()) {
            if !is_running(c) {
                continue;
            }
            let elapsed = started.elapsed();
            if !*asked && elapsed >= c.stop.grace() {
                send(c, c.stop.signal());
                *asked = true;
            }
            let deadline = if sigint_delivered && c.stop == Stop::Int {
                2 * c.stop.grace()
            } else {
                c.stop.grace()
            };
            if elapsed >= deadline {
                send(c, Signal::KILL);
            } else {
                waiting = true;
            }
        }
        if !waiting {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a child has not ended yet (a zombie has ended: the main thread
/// reaps it).
fn is_running(child: &Child) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    match &child.fd {
        // A pidfd turns readable when its process ends.
        Some(fd) => {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
            poll(&mut fds, Some(&zero)).is_ok_and(|n| n == 0)
        }
        None => {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.pid.as_raw_nonzero()));
            // The state follows the command name, which is in parentheses.
            stat.is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        }
    }
}

/// Removes `path`, whatever it is; gone already is fine.
fn remove(path: &Path) {
    for _ in 0..3 {
        let removed = match path.symlink_metadata() {
            Err(_) => return,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
        };
        if removed.is_ok() {
            return;
        }
    }
    log::warn!("could not remove {}", path.display());
}

/// A path removed by an interrupt while this guard lives. Dropping it only
/// unregisters the path: removing it otherwise is the owner's business.
#[derive(Debug)]
#[must_use = "the path is unregistered when the guard is dropped"]
pub struct Registered(u64);

/// Registers `path`, which exists already or will not be made by anyone
/// once an interrupt is under way, for removal by an interrupt. What this
/// process creates goes through [`create`] instead.
pub fn remove_on_interrupt(path: &Path) -> Registered {
    let mut reg = registry();
    let id = reg.id();
    reg.paths.insert(id, path.to_path_buf());
    Registered(id)
}

/// Creates something at a path with `create` and registers that path, in
/// one step: an interrupt either finds it registered or keeps it from being
/// created (the main thread goes on working while an interrupt cleans up,
/// and must not make anew what was just removed).
pub fn create<T>(
    create: impl FnOnce() -> io::Result<T>,
    path_of: impl Fn(&T) -> PathBuf,
) -> io::Result<(T, Registered)> {
    let mut reg = registry();
    if reg.interrupted {
        return Err(interrupted());
    }
    let made = create()?;
    let id = reg.id();
    reg.paths.insert(id, path_of(&made));
    Ok((made, Registered(id)))
}

/// Creates the directory `path`, registered (see [`create`]).
pub fn create_dir(path: &Path) -> io::Result<Registered> {
    create(|| std::fs::create_dir(path), |_| path.to_path_buf()).map(|((), r)| r)
}

fn interrupted() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "interrupted")
}

impl Drop for Registered {
    fn drop(&mut self) {
        registry().paths.remove(&self.0);
    }
}

/// A temporary directory (`tempfile::TempDir`) that an interrupt removes too.
#[derive(Debug)]
pub struct TempDir {
    // Declared first, so dropped first: the directory is removed while an
    // interrupt would still remove it as well.
    dir: tempfile::TempDir,
    registered: Registered,
}

impl TempDir {
    /// Makes the directory with `make` (a `tempfile::Builder`'s `tempdir`),
    /// registered (see [`create`]).
    pub fn create(make: impl FnOnce() -> io::Result<tempfile::TempDir>) -> io::Result<TempDir> {
        let (dir, registered) = create(make, |d| d.path().to_path_buf())?;
        Ok(TempDir { dir, registered })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the directory to `to` and lets go of it; on failure it is
    /// removed.
    pub fn persist(self, to: &Path) -> io::Result<()> {
        std::fs::rename(self.dir.path(), to)?;
        let TempDir { dir, registered } = self;
        let _ = dir.keep();
        drop(registered);
        Ok(())
    }
}

/// A running child, unregistered when dropped (after it has been waited for).
#[derive(Debug)]
#[must_use = "the child is unregistered when the guard is dropped"]
pub struct Running(Vec<u64>);

impl Drop for Running {
    fn drop(&mut self) {
        let mut reg = registry();
        for id in &self.0 {
            reg.children.remove(id);
        }
    }
}

/// Starts children with `start` and registers the processes `pids` names,
/// in one step, so an interrupt either sees them or stops them from
/// starting; an interrupt stops them as `stop` says. Their guard must live
/// until they have been waited for.
pub fn spawn<T>(
    stop: Stop,
    start: impl FnOnce() -> io::Result<T>,
    pids: impl Fn(&T) -> Vec<u32>,
) -> io::Result<(T, Running)> {
    let mut reg = registry();
    if reg.interrupted {
        return Err(interrupted());
    }
    let started = start()?;
    let mut ids = Vec::new();
    for raw in pids(&started) {
        let Some(pid) = i32::try_from(raw).ok().and_then(Pid::from_raw) else {
            continue;
        };
        // Nobody has waited for the child yet, so the pid is still its own.
        let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok();
        let id = reg.id();
        reg.children.insert(id, Child { pid, fd, stop });
        ids.push(id);
    }
    Ok((started, Running(ids)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_registered(path: &Path) -> bool {
        registry().paths.values().any(|p| p == path)
    }

    #[test]
    fn guards_register_and_unregister() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let guard = remove_on_interrupt(&file);
        let dir = TempDir::create(|| tempfile::tempdir_in(tmp.path())).unwrap();
        let dir_path = dir.path().to_path_buf();
        assert!(is_registered(&file) && is_registered(&dir_path));
        drop(dir);
        assert!(!dir_path.exists(), "a dropped TempDir is removed");
        assert!(!is_registered(&dir_path));
        drop(guard);
        assert!(file.exists(), "a dropped guard only unregisters");
        assert!(!is_registered(&file));
        let kept = TempDir::create(|| tempfile::tempdir_in(tmp.path())).unwrap();
        let kept_path = kept.path().to_path_buf();
        let to = tmp.path().join("kept");
        kept.persist(&to).unwrap();
        assert!(to.is_dir() && !is_registered(&kept_path));
        let made = tmp.path().join("made");
        let guard = create_dir(&made).unwrap();
        assert!(made.is_dir() && is_registered(&made));
        drop(guard);
        assert!(made.is_dir() && !is_registered(&made));
    }

    #[test]
    fn children_are_registered_while_they_run() {
        let (mut child, running) = spawn(
            Stop::Term,
            || std::process::Command::new("true").spawn(),
            |c| vec![c.id()],
        )
        .unwrap();
        let id = running.0[0];
        assert_eq!(registry().children[&id].pid.as_raw_nonzero().get() as u32, child.id());
        child.wait().unwrap();
        assert!(!is_running(&registry().children[&id]), "an ended child is not running");
        drop(running);
        assert!(!registry().children.contains_key(&id));
    }

    #[test]
    fn children_get_their_stop_signal_and_then_sigkill() {
        // `sleep` ends on SIGTERM; this shell ignores it and must be killed.
        let start = |script: &str| {
            let child = std::process::Command::new("sh").args(["-c", script]).spawn().unwrap();
            let pid = Pid::from_child(&child);
            (
                child,
                Child {
                    pid,
                    fd: rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok(),
                    stop: Stop::Term,
                },
            )
        };
        let (mut polite, polite_c) = start("exec sleep 100");
        let (mut stubborn, stubborn_c) = start("trap '' TERM; while :; do sleep 0.1; done");
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        end_children(&[polite_c, stubborn_c], false);
        let took = started.elapsed();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(polite.wait().unwrap().signal(), Some(Signal::TERM.as_raw()));
        assert_eq!(stubborn.wait().unwrap().signal(), Some(Signal::KILL.as_raw()));
        assert!(
            took >= Stop::Term.grace() && took < Stop::Term.grace() + Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn removal_takes_files_and_trees() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("a/b");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("c"), "x").unwrap();
        remove(&tmp.path().join("a"));
        assert!(!tmp.path().join("a").exists());
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        remove(&tmp.path().join("f"));
        remove(&tmp.path().join("missing"));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
