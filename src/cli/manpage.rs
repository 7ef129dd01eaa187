//! Man pages, one per command, from the clap command and the sections a
//! user of KIWI looks for: environment, files, examples.

use std::path::Path;

use clap::{Arg, ArgAction};
use color_eyre::eyre::{Result, WrapErr};
use roff::{bold, italic, roman, Inline, Roff};

/// The binary's name; pages are `kiwi-stackbuild.1` and `kiwi-stackbuild-COMMAND.1`.
const BIN: &str = "kiwi-stackbuild";

/// The variables the binary reads, and what for.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "KIWI_NG",
        "The kiwi-ng to run (e.g. a venv's), instead of the one on PATH.",
    ),
    ("SKOPEO", "The skopeo to run, instead of the one on PATH."),
    (
        "CURL",
        "The curl that inputs and rebuild --keep-root fetch repository metadata with, instead of the one on PATH.",
    ),
    ("UMOCI", "The umoci to run, instead of the one on PATH."),
    ("KIWI_STACKBUILD_HOME", "The local stash store, as --stash-home."),
    (
        "KIWI_STACKBUILD_COMPRESSION",
        "The layer compression, gzip or zstd, as --compression: stash and rebuild --keep-root write it, \
         and push recompresses to it.",
    ),
    (
        "KIWI_STACKBUILD_COMPRESSION_LEVEL",
        "The compression level, as --compression-level.",
    ),
    (
        "KIWI_STACKBUILD_JOBS",
        "Threads that read a root and compress a layer, as --jobs.",
    ),
    (
        "KIWI_STACKBUILD_PASSWORD",
        "The registry password of --creds USER given without one and without --password-stdin.",
    ),
    (
        "KIWI_STACKBUILD_UNPACKER",
        "builtin (the default) unpacks images with the built-in unpacker, umoci with umoci raw unpack.",
    ),
    (
        "KIWI_STACKBUILD_OBS_SOURCES",
        "Where an OBS build stages its sources, instead of /usr/src/packages/SOURCES; setting it also \
         marks the run as an OBS build.",
    ),
    (
        "SOURCE_DATE_EPOCH",
        "Every timestamp a stash records: the same tree stashed twice with the same epoch gives the same \
         manifest digest.",
    ),
    (
        "BUILD_DISTURL",
        "Recorded in a stash as the label org.openbuildservice.disturl.",
    ),
    (
        "XDG_CACHE_HOME",
        "Where the cache of kiwi-ng's option lists goes instead of ~/.cache.",
    ),
    (
        "RUST_LOG",
        "The log level (error, warn, info, debug, trace); it wins over --debug.",
    ),
];

/// The files and directories the binary uses.
const FILES: &[(&str, &str)] = &[
    (
        "/var/lib/kiwi-stackbuild/stash",
        "The default local stash store: one OCI image layout for all stashes, refs NAME:TAG.",
    ),
    (
        "~/.cache/kiwi-stackbuild/",
        "The option lists of the installed kiwi-ng, read once per kiwi-ng version \
         (kiwi-ng-options/).",
    ),
    (
        "/.buildenv",
        "Present in an OBS build root: obs:// references resolve to the staged archives.",
    ),
];

/// The README's commands, with what each does.
const EXAMPLES: &[(&str, &str)] = &[
    (
        "build a description and keep its root as a stash (the tag is its <version>)",
        "kiwi-stackbuild rebuild --description D --keep-root NAME -- --target-dir T",
    ),
    (
        "the same, but skip prepare when the kept root was built from the same inputs",
        "kiwi-stackbuild rebuild --description D --keep-root REF --reuse -- --target-dir T",
    ),
    (
        "build again from the stash alone: unpack it, kiwi-ng system create",
        "kiwi-stackbuild rebuild --root NAME:TAG -- --target-dir T",
    ),
    (
        "build a new description on a stored root (any container image works)",
        "kiwi-stackbuild rebuild --root REF -- --description D --target-dir T",
    ),
    (
        "stack several roots, lowest first, and keep the result",
        "kiwi-stackbuild rebuild --root A --root B --keep-root C -- --target-dir T",
    ),
    (
        "build a derived description (<image derived_from=\"REF\">) on its base",
        "kiwi-stackbuild rebuild --description DERIVED -- --target-dir T",
    ),
    (
        "write the merged description of a derived one, without building",
        "kiwi-stackbuild merge --description DERIVED --output DIR [--base DIR_OR_REF]",
    ),
    (
        "print the input record and hash of a build (what decides its root)",
        "kiwi-stackbuild inputs --description D [--root REF] [--json] [-- ARGS]",
    ),
    (
        "say what changed since a stored root was built (exit status 1 when anything did)",
        "kiwi-stackbuild inputs --description D --against NAME[:TAG] [-- ARGS]",
    ),
    (
        "stash a root tree",
        "kiwi-stackbuild stash --root T/build/image-root [--tag TAG] [--container-name NAME] [--description D]",
    ),
    ("list the stashes", "kiwi-stackbuild stash --list [--json]"),
    ("remove a stash", "kiwi-stackbuild stash --rm NAME[:TAG]"),
    ("verify the store", "kiwi-stackbuild stash --check [--repair]"),
    (
        "rewrite a stash as one layer (runtimes refuse images past about 127 layers)",
        "kiwi-stackbuild stash --squash NAME[:TAG]",
    ),
    (
        "drop images fetched for rebuilds that no run used for 30 days",
        "kiwi-stackbuild stash --prune --older-than 30d",
    ),
    (
        "build from stashes, as kiwi-ng system stackbuild does",
        "kiwi-stackbuild stackbuild --stash NAME... --target-dir T [--description D] [--from-registry URI] \
         [-- ARGS | kiwi ARGS]",
    ),
    (
        "push a stash to a registry",
        "kiwi-stackbuild push NAME[:TAG] docker://HOST/NS/NAME:TAG",
    ),
    (
        "pull an image into the store",
        "kiwi-stackbuild pull docker://HOST/NS/NAME:TAG [NAME[:TAG]]",
    ),
    (
        "install the bash completion",
        "kiwi-stackbuild completions bash > /etc/bash_completion.d/kiwi-stackbuild",
    ),
    (
        "install the man pages",
        "kiwi-stackbuild man --output /usr/share/man/man1",
    ),
];

/// One page: its name (the file's without `.1`) and its roff text.
pub struct Page {
    /// `kiwi-stackbuild` or `kiwi-stackbuild-COMMAND`.
    pub name: String,
    /// The page.
    pub text: String,
}

/// The pages of `cmd` (the whole command line): the binary's and one per
/// command, `help` left out (it has no page of its own).
pub fn pages(cmd: clap::Command) -> Result<Vec<Page>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    // Global options reach the subcommands when the command is built.
    cmd.build();
    let commands: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    let mut out = vec![Page {
        name: BIN.to_string(),
        text: top_page(&cmd, &commands)?,
    }];
    for sub in cmd.get_subcommands() {
        let name = format!("{BIN}-{}", sub.get_name());
        let text = command_page(sub.clone().name(&name), sub.get_name())?;
        out.push(Page { name, text });
    }
    Ok(out)
}

/// Writes the pages of `cmd` into `dir` and prints each file's path.
pub fn write(cmd: clap::Command, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
    for page in pages(cmd)? {
        let path = dir.join(format!("{}.1", page.name));
        crate::oci::layout::write_atomic(&path, page.text.as_bytes())
            .wrap_err_with(|| format!("writing {}", path.display()))?;
        crate::listing::line(&path.display().to_string())?;
    }
    Ok(())
}

/// The start of every page: its title, the plain layout, and NAME.
fn page_head(man: &clap_mangen::Man) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    out.extend(plain_layout().into_bytes());
    man.render_name_section(&mut out)?;
    Ok(out)
}

fn top_page(cmd: &clap::Command, commands: &[String]) -> Result<String> {
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = page_head(&man)?;
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text([
        bold(BIN),
        roman(" ["),
        italic("GLOBAL OPTIONS"),
        roman("] "),
        italic("COMMAND"),
        roman(" ..."),
    ]);
    roff.control("SH", ["DESCRIPTION"]);
    description(&mut roff, cmd, false);
    if let Some(rebuild) = cmd.find_subcommand("rebuild") {
        roff.control("PP", []);
        roff.text([roman("The four forms of "), bold("rebuild"), roman(":")]);
        description(&mut roff, rebuild, true);
    }
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        roff.control("TP", []);
        roff.text([bold(format!("{BIN}-{}", sub.get_name())), roman("(1)")]);
        roff.text([roman(sub.get_about().map(|a| a.to_string()).unwrap_or_default())]);
    }
    out.extend(roff.to_roff().into_bytes());
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    list_section(&mut roff, "ENVIRONMENT", ENVIRONMENT);
    list_section(&mut roff, "FILES", FILES);
    examples(&mut roff, None);
    let see_also: Vec<String> = commands.iter().map(|c| format!("{BIN}-{c}")).collect();
    see_also_section(&mut roff, &see_also);
    out.extend(roff.to_roff().into_bytes());
    man.render_version_section(&mut out)?;
    one_preamble(out)
}

fn command_page(sub: clap::Command, command: &str) -> Result<String> {
    let version = format!("{BIN} {}", env!("CARGO_PKG_VERSION"));
    let man = clap_mangen::Man::new(sub.clone()).source(version);
    let mut out = page_head(&man)?;
    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    synopsis(&mut roff, &sub, command);
    roff.control("SH", ["DESCRIPTION"]);
    description(&mut roff, &sub, false);
    out.extend(roff.to_roff().into_bytes());
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    let has_globals = sub
        .get_arguments()
        .any(|a| a.get_help_heading().is_some() && !a.is_hide_set());
    if has_globals {
        list_section(&mut roff, "ENVIRONMENT", ENVIRONMENT);
        list_section(&mut roff, "FILES", FILES);
    }
    examples(&mut roff, Some(command));
    see_also_section(&mut roff, &[BIN.to_string()]);
    out.extend(roff.to_roff().into_bytes());
    one_preamble(out)
}

/// No hyphenation and a ragged right edge: options and references stay
/// whole, as they are typed.
fn plain_layout() -> String {
    let mut roff = Roff::new();
    roff.control("nh", []).control("ad", ["l"]);
    roff.to_roff()
}

/// The page with the preamble that each of clap_mangen's sections brings
/// kept once, at the top.
fn one_preamble(page: Vec<u8>) -> Result<String> {
    const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let page = String::from_utf8(page)?;
    Ok(format!("{PREAMBLE}{}", page.replace(PREAMBLE, "")))
}

/// The usage lines of a command, with the value of every option.
fn synopsis(roff: &mut Roff, sub: &clap::Command, command: &str) {
    let head = [bold(format!("{BIN} {command}"))];
    if let Some(usage) = sub.get_overridden_usage() {
        let prefix = format!("{BIN} {command}");
        // One form per line; a line that does not start with the command
        // continues the form above it.
        let mut forms: Vec<String> = Vec::new();
        for line in usage.to_string().lines().map(str::trim) {
            match (line.strip_prefix(&prefix), forms.last_mut()) {
                (None, Some(last)) => *last = format!("{last} {line}"),
                (rest, _) => forms.push(rest.unwrap_or(line).to_string()),
            }
        }
        for (i, form) in forms.iter().enumerate() {
            if i > 0 {
                roff.control("br", []);
            }
            let mut line = head.to_vec();
            line.push(roman(form.replace("[OPTIONS]", "[GLOBAL OPTIONS]")));
            roff.text(line);
        }
        return;
    }
    let mut line = head.to_vec();
    let own = sub
        .get_arguments()
        .filter(|a| !a.is_hide_set() && a.get_help_heading().is_none())
        .filter(|a| {
            !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong
            )
        });
    for arg in own {
        line.push(roman(" "));
        line.extend(synopsis_arg(arg));
    }
    if sub
        .get_arguments()
        .any(|a| !a.is_hide_set() && a.get_help_heading().is_some())
    {
        line.extend([roman(" ["), italic("GLOBAL OPTIONS"), roman("]")]);
    }
    roff.text(line);
}

/// `--long VALUE`, `[--flag]`, `VALUE`, `[-- ARGS...]`, as the arg asks.
fn synopsis_arg(arg: &Arg) -> Vec<Inline> {
    let value = arg
        .get_value_names()
        .map(|v| v.join(" "))
        .unwrap_or_else(|| arg.get_id().as_str().to_uppercase());
    let repeated =
        matches!(arg.get_action(), ArgAction::Append) || arg.get_num_args().is_some_and(|n| n.max_values() > 1);
    let dots = if repeated { "..." } else { "" };
    let mut out = Vec::new();
    let (open, close) = if arg.is_required_set() { ("", "") } else { ("[", "]") };
    out.push(roman(open));
    if arg.is_positional() {
        if arg.is_last_set() {
            out.push(roman("-- "));
        }
        out.push(italic(value));
    } else if let Some(long) = arg.get_long() {
        out.push(bold(format!("--{long}")));
        if matches!(arg.get_action(), ArgAction::Set | ArgAction::Append) {
            let optional = arg.get_num_args().is_some_and(|n| n.min_values() == 0);
            match (arg.is_require_equals_set(), optional) {
                (true, true) => out.extend([roman("[="), italic(value), roman("]")]),
                (true, false) => out.extend([roman("="), italic(value)]),
                _ => out.extend([roman(" "), italic(value)]),
            }
        }
    }
    out.push(roman(format!("{dots}{close}")));
    out
}

/// The long about; lines `Wn  FORM` and the indented lines under them
/// become a list, one item per form. With `only_forms`, only that list.
fn description(roff: &mut Roff, cmd: &clap::Command, only_forms: bool) {
    let Some(about) = cmd.get_long_about().or_else(|| cmd.get_about()) else {
        return;
    };
    let mut in_list = false;
    for line in about.to_string().lines() {
        if let Some((tag, form)) = form_line(line) {
            // The tag is narrow: the form starts on its line.
            roff.control("TP", ["4"]);
            roff.text([bold(tag), roman("  "), bold(BIN), roman(format!(" {form}"))]);
            in_list = true;
        } else if in_list && line.starts_with(' ') {
            roff.text([roman(line.trim())]);
        } else if only_forms {
            in_list = false;
        } else if line.trim().is_empty() {
            // A blank line ends a paragraph, and the list of forms.
            roff.control("PP", []);
            in_list = false;
        } else {
            roff.text([roman(line)]);
        }
    }
}

/// `("W1", "rebuild ...")` of a line `W1  rebuild ...`.
fn form_line(line: &str) -> Option<(&str, &str)> {
    let (tag, form) = line.split_once("  ")?;
    let digits = tag.strip_prefix('W')?;
    (!digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())).then(|| (tag, form.trim()))
}

fn list_section(roff: &mut Roff, title: &str, items: &[(&str, &str)]) {
    roff.control("SH", [title]);
    for (name, what) in items {
        roff.control("TP", []);
        roff.text([bold(*name)]);
        roff.text([roman(*what)]);
    }
}

/// The examples of `command`, or all of them.
fn examples(roff: &mut Roff, command: Option<&str>) {
    let wanted = |line: &str| match command {
        None => true,
        Some(c) => line.starts_with(&format!("{BIN} {c} ")),
    };
    let chosen: Vec<_> = EXAMPLES.iter().filter(|(_, line)| wanted(line)).collect();
    if chosen.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    for (what, line) in chosen {
        roff.control("TP", []);
        roff.text([bold(*line)]);
        roff.text([roman(*what)]);
    }
}

fn see_also_section(roff: &mut Roff, pages: &[String]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        line.extend([bold(page.as_str()), roman("(1)")]);
    }
    roff.text(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_is_a_command_of_the_readme() {
        let readme = include_str!("../../README.md");
        for (_, line) in EXAMPLES {
            assert!(readme.contains(line), "README.md lacks {line:?}");
        }
    }

    #[test]
    fn every_variable_an_option_reads_is_in_the_environment_section() {
        let vars: Vec<String> = super::super::command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|v| v.to_string_lossy().into_owned()))
            .collect();
        assert!(vars.iter().any(|v| v == "KIWI_STACKBUILD_JOBS"), "{vars:?}");
        for var in vars {
            assert!(
                ENVIRONMENT.iter().any(|(name, _)| *name == var),
                "ENVIRONMENT lacks {var}"
            );
        }
    }

    #[test]
    fn form_lines_are_the_rebuild_forms() {
        assert_eq!(form_line("W1  rebuild --root R"), Some(("W1", "rebuild --root R")));
        assert_eq!(form_line("    build D, then"), None);
        assert_eq!(form_line("Wx  no"), None);
        assert_eq!(form_line("--root may be repeated"), None);
    }
}
