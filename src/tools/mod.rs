//! The one process runner, and typed wrappers for the tools we drive.
//!
//! Every child is found on PATH or through its environment variable
//! (`SKOPEO`, `UMOCI`, `KIWI_NG`), logged as a shell-quoted line at debug
//! level, runs with stdin closed, dies with us (PR_SET_PDEATHSIG), is
//! registered with `interrupt` while it runs, and when it fails its error
//! names the command and carries the tail of its stderr as a report section.

pub mod kiwi;
pub(crate) mod skopeo;
pub(crate) mod umoci;

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::{Section, SectionExt};

/// How many lines of a failing child's stderr go into the error.
const TAIL_LINES: usize = 20;

/// A tool we drive as a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// skopeo: copies images between transports.
    Skopeo,
    /// umoci: unpacks OCI images into root trees.
    Umoci,
    /// kiwi-ng: builds images from descriptions and roots.
    KiwiNg,
    /// curl: fetches repository metadata for an input record.
    Curl,
}

impl Tool {
    /// The executable's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Skopeo => "skopeo",
            Tool::Umoci => "umoci",
            Tool::KiwiNg => "kiwi-ng",
            Tool::Curl => "curl",
        }
    }

    /// The environment variable that names the executable.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::Skopeo => "SKOPEO",
            Tool::Umoci => "UMOCI",
            Tool::KiwiNg => "KIWI_NG",
            Tool::Curl => "CURL",
        }
    }

    /// How an interrupt asks it to stop.
    fn stop(self) -> crate::interrupt::Stop {
        match self {
            Tool::KiwiNg => crate::interrupt::Stop::Int,
            Tool::Skopeo | Tool::Umoci | Tool::Curl => crate::interrupt::Stop::Term,
        }
    }

    fn install_hint(self) -> &'static str {
        match self {
            Tool::Skopeo => "install skopeo (zypper/dnf/apt install skopeo), or set SKOPEO to its path",
            Tool::Umoci => "install umoci (zypper/dnf/apt install umoci), or set UMOCI to its path",
            Tool::Curl => "install curl (zypper/dnf/apt install curl), or set CURL to its path",
            Tool::KiwiNg => {
                "install kiwi (zypper install python3-kiwi, or pip install kiwi in a venv), or set KIWI_NG to its kiwi-ng"
            }
        }
    }

    /// Finds the executable: `$ENV_VAR` when set, else the first match on PATH.
    pub fn locate(self) -> Result<PathBuf> {
        if let Some(explicit) = std::env::var_os(self.env_var()).filter(|v| !v.is_empty()) {
            let path = PathBuf::from(&explicit);
            let found = if path.components().count() > 1 {
                Some(path).filter(|p| is_executable(p))
            } else {
                search_path(&explicit)
            };
            return found.ok_or_else(|| {
                eyre!(
                    "{} is set to {:?}, which is not an executable",
                    self.env_var(),
                    explicit
                )
                .suggestion(self.install_hint())
            });
        }
        search_path(OsStr::new(self.name()))
            .ok_or_else(|| eyre!("{} not found on PATH", self.name()).suggestion(self.install_hint()))
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn search_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Checks up front that every tool a command needs is there.
pub fn require(tools: &[Tool]) -> Result<()> {
    for t in tools {
        t.locate()?;
    }
    Ok(())
}

/// Fails unless we run as root (KIWI and faithful unpacking need it).
pub fn require_root(what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user of this process.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if euid != 0 {
        return Err(eyre!("{what} needs root").suggestion("run it as root, e.g. with sudo"));
    }
    Ok(())
}

/// One argument or a command line quoted for a POSIX shell, for logs and errors.
pub fn shell_quote(arg: &OsStr) -> String {
    let bytes = arg.as_bytes();
    let plain = |b: &u8| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(b);
    if !bytes.is_empty() && bytes.iter().all(plain) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    format!("'{}'", String::from_utf8_lossy(bytes).replace('\'', r"'\''"))
}

/// A whole command line, shell-quoted.
pub fn command_line(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a child's output is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Captured: stdout is returned, stderr kept for the error.
    Capture,
    /// Passed through to our stderr as it comes (kiwi-ng's build log),
    /// with the tail kept for the error.
    Stream,
}

/// Runs `tool` with `args`; returns its stdout (empty when streamed).
pub fn run(tool: Tool, args: &[OsString], output: Output) -> Result<Vec<u8>> {
    run_explained(tool, args, output, |_| None)
}

/// Like [`run`], with `env` added to the child's environment.
pub fn run_with_env(tool: Tool, args: &[OsString], output: Output, env: &[(&str, &str)]) -> Result<Vec<u8>> {
    run_inner(tool, args, output, env, |_| None)
}

/// What a failing child's output means to the user: a one-line message and
/// what they can do.
pub type Explanation = Option<(String, String)>;

/// Like [`run`], but a failure's output is first shown to `explain`, whose
/// message and suggestion lead the error when it recognises the failure.
pub fn run_explained(
    tool: Tool,
    args: &[OsString],
    output: Output,
    explain: impl Fn(&str) -> Explanation,
) -> Result<Vec<u8>> {
    run_inner(tool, args, output, &[], explain)
}

fn run_inner(
    tool: Tool,
    args: &[OsString],
    output: Output,
    env: &[(&str, &str)],
    explain: impl Fn(&str) -> Explanation,
) -> Result<Vec<u8>> {
    let program = tool.locate()?;
    let line = command_line(&program, args);
    log::debug!("running {line}");
    // Children get credentials through files, never through our environment.
    let mut expr = duct::cmd(&program, args)
        .stdin_null()
        .unchecked()
        .env_remove(crate::registry::PASSWORD_ENV)
        .before_spawn(move |cmd| bind_lifetime(cmd, tool.stop().signal()));
    for (name, value) in env {
        expr = expr.env(name, value);
    }
    let starting = || format!("starting {line}");
    let (status, stdout, tail) = match output {
        Output::Capture => {
            let expr = expr.stdout_capture().stderr_capture();
            let (handle, running) =
                crate::interrupt::spawn(tool.stop(), || expr.start(), duct::Handle::pids).wrap_err_with(starting)?;
            let out = handle.into_output().wrap_err_with(|| format!("waiting for {line}"))?;
            drop(running);
            let tail = tail_of(&out.stderr);
            (out.status, out.stdout, tail)
        }
        Output::Stream => {
            let expr = expr.stderr_to_stdout();
            let (reader, running) = crate::interrupt::spawn(tool.stop(), || expr.reader(), duct::ReaderHandle::pids)
                .wrap_err_with(starting)?;
            let mut tail = VecDeque::new();
            let mut lines = BufReader::new(&reader);
            let mut buf = Vec::new();
            let mut err = std::io::stderr();
            while lines
                .read_until(b'\n', &mut buf)
                .wrap_err_with(|| format!("reading output of {line}"))?
                > 0
            {
                let _ = err.write_all(&buf);
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(String::from_utf8_lossy(&buf).trim_end().to_string());
                buf.clear();
            }
            let out = reader.try_wait().wrap_err_with(|| format!("waiting for {line}"))?;
            drop(running);
            let status = out.map(|o| o.status).ok_or_else(|| eyre!("{line} did not finish"))?;
            (status, Vec::new(), Vec::from(tail).join("\n"))
        }
    };
    if status.success() {
        return Ok(stdout);
    }
    let how = status
        .code()
        .map_or_else(|| "was killed by a signal".to_string(), |c| format!("exited with {c}"));
    let err = match explain(&tail) {
        Some((message, suggestion)) => eyre!("{message}").suggestion(suggestion),
        None => eyre!("{} failed: it {how}", tool.name()),
    };
    Err(err)
        .section(line.header("Command:"))
        .section(tail.header("Its last output:"))
}

/// Makes the child get `signal` when we die, even by `kill -9`, as bootc and
/// containers-image-proxy bind theirs: SIGTERM, or SIGINT for kiwi-ng, the
/// signal on which it cleans up (see `interrupt::Stop`).
///
/// The kernel sends it when the *thread* that forked the child ends, not the
/// process. Every child is spawned by the thread that runs the command (the
/// main thread: [`run_explained`] is never called from a helper thread, and
/// duct forks in the calling thread), and that thread waits for the child
/// before it goes on, so the signal comes only when we are gone.
#[allow(unsafe_code)]
fn bind_lifetime(cmd: &mut std::process::Command, signal: rustix::process::Signal) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec, where a
    // multi-threaded parent's child may only make async-signal-safe calls. It
    // makes two system calls (prctl, getppid) through rustix, which neither
    // allocates nor takes locks, and builds its error from an errno
    // (`io::Error::from_raw_os_error`, no allocation). It captures a `Pid`
    // and a `Signal`, both `Copy`. If we died before the prctl took effect,
    // the child has been re-parented already: then it must not run at all.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(signal))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    Ok(())
}

fn tail_of(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// `OsString`s from anything that looks like arguments, for argv builders.
pub fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    items.into_iter().map(|s| s.as_ref().to_os_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_plain_words_and_quotes_the_rest() {
        let cases = [
            ("plain", "plain"),
            ("--target-dir=/tmp/x", "--target-dir=/tmp/x"),
            ("two words", "'two words'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$HOME", "'$HOME'"),
        ];
        for (arg, want) in cases {
            assert_eq!(shell_quote(OsStr::new(arg)), want);
        }
    }
}
