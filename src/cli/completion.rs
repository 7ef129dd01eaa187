//! Shell completion scripts, generated from the clap command.

use std::io::Write;

use clap_complete::Shell;
use color_eyre::eyre::{eyre, Result};

/// The name the scripts complete.
const BIN: &str = "kiwi-stackbuild";
/// The same name without its dash: what bash's script is generated for.
const BASH_BIN: &str = "kiwi_stackbuild";

/// The completion script of `shell` for `cmd`.
///
/// For bash, clap_complete turns the dash of the binary's name into `__` in
/// the `cmd` it builds but into `__subcmd__` in the case labels that match
/// it, so nothing completes after a subcommand. The script is therefore
/// generated for a name without the dash, which keeps the two consistent,
/// and then registered for the real name.
pub fn script(shell: Shell, cmd: &mut clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    if shell != Shell::Bash {
        clap_complete::generate(shell, cmd, BIN, &mut out);
        return Ok(out);
    }
    clap_complete::generate(shell, cmd, BASH_BIN, &mut out);
    let text = String::from_utf8(out)?;
    let suffix = format!(" {BASH_BIN}");
    let mut registered = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| match line.strip_suffix(&suffix) {
            Some(head) if line.trim_start().starts_with("complete ") => {
                registered += 1;
                format!("{head} {BIN}")
            }
            _ => line.to_string(),
        })
        .collect();
    if registered == 0 {
        return Err(eyre!(
            "the bash completion script registers no `complete` for {BASH_BIN}"
        ));
    }
    Ok((lines.join("\n") + "\n").into_bytes())
}

/// `completions SHELL`: prints the script on stdout.
pub fn print(shell: Shell, cmd: &mut clap::Command) -> Result<()> {
    let script = script(shell, cmd)?;
    std::io::stdout().lock().write_all(&script)?;
    Ok(())
}
