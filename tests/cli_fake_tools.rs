//! CLI tests with fake tools: the built binary runs with fake `skopeo`,
//! `umoci` and `kiwi-ng` shell scripts, which record their argv, so these
//! tests check exactly what we ask the tools to do, and what a user reads
//! when something is wrong, in well under a second each.
//!
//! Every test has its own temp dir with the fakes in `bin/`, the store in
//! `store/`, and a fresh directory per run for the recorded argv. The
//! binary's environment is cleared: PATH is only `bin/` (the fakes set their
//! own PATH), so a real skopeo, umoci or kiwi-ng can never be found, and
//! `SKOPEO`, `UMOCI`, `KIWI_NG` name the fakes.
//!
//! The fakes (each appends `argc\0arg\0...` to `$FAKE_ARGV_DIR/TOOL`):
//! - `umoci raw unpack ... --image LAYOUT:REF ROOTFS` copies LAYOUT to
//!   `$FAKE_ARGV_DIR/umoci-layout`, creates ROOTFS and fills it from
//!   `$FAKE_UMOCI_SEED` when that is set;
//! - `kiwi-ng --version` prints version 9.9.9 and `kiwi-ng ... --help`
//!   prints `$FAKE_KIWI_HELP` (a file; nothing when unset), neither of them
//!   recorded, since they only ask; any other call copies its
//!   `--description` to `$FAKE_ARGV_DIR/description`, fills
//!   `TARGET/build/image-root` from `$FAKE_KIWI_ROOT` when set, and exits
//!   with `$FAKE_KIWI_EXIT` (default 0);
//! - `skopeo` prints `$FAKE_SKOPEO_STDERR` and exits 1; with
//!   `$FAKE_SKOPEO_IMAGE` (a layout of one image, see `fake_registry_image`)
//!   it serves that image instead: `inspect` prints its manifest, `copy`
//!   copies the blobs an `oci:` destination lacks (noting each in
//!   `skopeo-copied`) and names the image there.
//!
//! Needs root, as the binary does for `stash` and `rebuild` (CI runs as root).

mod common;

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_kiwi-stackbuild");

const FAKE_UMOCI: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
printf '%s\0' "$#" "$@" >> "$FAKE_ARGV_DIR/umoci"
if [ "$1 $2" != "raw unpack" ]; then
    echo "fake umoci: unexpected call: $*" >&2
    exit 2
fi
image= prev= rootfs=
for a; do
    [ "$prev" = --image ] && image=$a
    prev=$a rootfs=$a
done
cp -rL "${image%:*}" "$FAKE_ARGV_DIR/umoci-layout" || exit 3
mkdir -p "$rootfs" || exit 4
if [ -n "$FAKE_UMOCI_SEED" ]; then
    cp -a "$FAKE_UMOCI_SEED/." "$rootfs/" || exit 5
fi
"#;

const FAKE_KIWI: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
if [ "$1" = --version ]; then
    echo "KIWI (next generation) version 9.9.9"
    exit 0
fi
case " $* " in
    *" --help "*)
        if [ -n "$FAKE_KIWI_HELP" ]; then cat "$FAKE_KIWI_HELP"; fi
        exit 0 ;;
esac
printf '%s\0' "$#" "$@" >> "$FAKE_ARGV_DIR/kiwi-ng"
target= desc=
while [ $# -gt 0 ]; do
    case $1 in
        --target-dir) target=$2; shift ;;
        --description) desc=$2; shift ;;
    esac
    shift
done
echo "fake kiwi-ng: building in $target"
if [ -n "$desc" ]; then
    cp -a "$desc" "$FAKE_ARGV_DIR/description"
fi
if [ -n "$FAKE_KIWI_ROOT" ]; then
    mkdir -p "$target/build/image-root"
    cp -a "$FAKE_KIWI_ROOT/." "$target/build/image-root/"
fi
if [ -n "$FAKE_KIWI_EXIT" ]; then
    echo "fake kiwi-ng: something broke" >&2
    exit "$FAKE_KIWI_EXIT"
fi
"#;

const FAKE_SKOPEO: &str = r#"#!/bin/sh
PATH=/usr/bin:/bin
printf '%s\0' "$#" "$@" >> "$FAKE_ARGV_DIR/skopeo"
if [ -n "$FAKE_SKOPEO_IMAGE" ]; then
    for last; do :; done
    case $1 in
    inspect) exec cat "$FAKE_SKOPEO_IMAGE/manifest.json" ;;
    copy)
        dest=${last#oci:} && dir=${dest%%:*} && name=${dest#*:}
        mkdir -p "$dir/blobs/sha256" || exit 3
        for blob in "$FAKE_SKOPEO_IMAGE"/blobs/sha256/*; do
            if [ ! -e "$dir/blobs/sha256/${blob##*/}" ]; then
                cp "$blob" "$dir/blobs/sha256/" || exit 4
                echo "${blob##*/}" >> "$FAKE_ARGV_DIR/skopeo-copied"
            fi
        done
        sed "s|@NAME@|$name|" "$FAKE_SKOPEO_IMAGE/index.json.in" > "$dir/index.json"
        exit ;;
    esac
fi
echo "${FAKE_SKOPEO_STDERR:-fake skopeo: no registry here}" >&2
exit 1
"#;

/// The description of a minimal KIWI root; `@NAME@` is the image name.
const CONFIG_XML: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<image schemaversion="8.5" name="@NAME@">
    <description type="system">
        <author>A</author>
        <contact>a@b</contact>
        <specification>s</specification>
    </description>
    <preferences>
        <version>1.2.3</version>
        <packagemanager>apt</packagemanager>
        <type image="tbz"/>
    </preferences>
</image>
"#;

/// The label of the kiwi-ng version in a stash.
const KIWI_VERSION_LABEL: &str = "io.kiwi-stackbuild.kiwi-version";
/// The annotation that names a ref in an OCI index.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One test's temp dir: fakes in `bin/`, the store in `store/`.
struct Sandbox {
    dir: TempDir,
    runs: Cell<usize>,
}

/// What one run of the binary did.
struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    /// Where the fakes recorded this run's calls.
    calls: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("cli-fake-tools-")
            .tempdir()
            .expect("creating a temp dir");
        let sandbox = Sandbox {
            dir,
            runs: Cell::new(0),
        };
        fs::create_dir(sandbox.bin()).unwrap();
        for (name, script) in [("umoci", FAKE_UMOCI), ("kiwi-ng", FAKE_KIWI), ("skopeo", FAKE_SKOPEO)] {
            let path = sandbox.bin().join(name);
            fs::write(&path, script).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        sandbox
    }

    /// `rel` inside the sandbox.
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `rel` inside the sandbox, as a string for an argv.
    fn arg(&self, rel: &str) -> String {
        self.path(rel).to_str().expect("temp paths are UTF-8").to_string()
    }

    fn bin(&self) -> PathBuf {
        self.path("bin")
    }

    fn fake(&self, tool: &str) -> PathBuf {
        self.bin().join(tool)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    /// Runs the binary with `args` in the default environment.
    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.run_with(args, |_| {})
    }

    /// Runs the binary with `args`; `tweak` may change the environment.
    fn run_with<S: AsRef<OsStr>>(&self, args: &[S], tweak: impl FnOnce(&mut Command)) -> Run {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let calls = self.path(&format!("calls-{n}"));
        fs::create_dir(&calls).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_clear()
            .env("PATH", self.bin())
            .env("HOME", self.dir.path())
            .env("KIWI_STACKBUILD_HOME", self.store())
            .env("SKOPEO", self.fake("skopeo"))
            .env("UMOCI", self.fake("umoci"))
            .env("KIWI_NG", self.fake("kiwi-ng"))
            .env("FAKE_ARGV_DIR", &calls)
            // These tests check what we ask umoci to do; the built-in unpacker
            // is proven against umoci by the real-tool tests.
            .env("KIWI_STACKBUILD_UNPACKER", "umoci");
        tweak(&mut cmd);
        let out = cmd.output().expect("running kiwi-stackbuild");
        Run {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls,
        }
    }

    /// Stashes `root` (made by `kiwi_tree`) and returns the stash's key.
    fn stash(&self, root: &Path, extra: &[&str]) -> String {
        let mut args = vec!["stash".to_string(), "--root".into(), root.to_str().unwrap().into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let run = self.run(&args);
        run.assert_ok();
        run.stdout.trim_end().to_string()
    }

    /// A description `description/config.xml` of the image `fake-base`,
    /// and the root a build of it makes (`built`, for `$FAKE_KIWI_ROOT`).
    fn description_and_built_root(&self) -> (PathBuf, PathBuf) {
        let description = self.path("description");
        fs::create_dir_all(&description).unwrap();
        fs::write(
            description.join("config.xml"),
            CONFIG_XML.replace("@NAME@", "fake-base"),
        )
        .unwrap();
        let built = self.path("built");
        kiwi_tree(&built, "fake-base");
        (description, built)
    }

    /// `derived/`, a description derived from the stash `fake-base` that
    /// adds a package.
    fn derived_from_fake_base(&self) -> PathBuf {
        let derived = self.path("derived");
        fs::create_dir_all(&derived).unwrap();
        fs::write(
            derived.join("config.xml"),
            "<image schemaversion=\"8.5\" name=\"child\" derived_from=\"fake-base\">\n    \
             <packages type=\"image\"><package name=\"vim\"/></packages>\n</image>\n",
        )
        .unwrap();
        derived
    }

    /// The store's index.json.
    fn index(&self) -> Value {
        read_json(&self.store().join("index.json"))
    }

    /// The manifest digest of the stash `key`.
    fn manifest_digest(&self, key: &str) -> String {
        let index = self.index();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"][REF_NAME] == key)
            .unwrap_or_else(|| panic!("no {key} in the store: {index}"));
        desc["digest"].as_str().unwrap().to_string()
    }

    /// The manifest of the stash `key`.
    fn manifest_of(&self, key: &str) -> Value {
        let index = self.index();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"][REF_NAME] == key)
            .unwrap_or_else(|| panic!("no {key} in the store: {index}"));
        read_blob(&self.store(), desc["digest"].as_str().unwrap())
    }
}

impl Run {
    fn assert_ok(&self) {
        assert!(
            self.status.success(),
            "expected success, got {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Asserts failure with exit status `code`.
    fn assert_fails(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit status {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }

    /// Asserts that stderr contains every one of `texts`.
    fn assert_stderr_has(&self, texts: &[&str]) {
        for text in texts {
            assert!(self.stderr.contains(text), "stderr lacks {text:?}:\n{}", self.stderr);
        }
    }

    /// Asserts that the error report has exactly one message, `message`
    /// (color-eyre prints it as `   0: MESSAGE`, and more causes as `1:`...).
    fn assert_one_line_error(&self, message: &str) {
        self.assert_stderr_has(&[&format!("   0: {message}\n")]);
        assert!(
            !self.stderr.contains("   1: "),
            "expected one error line:\n{}",
            self.stderr
        );
    }

    /// Every call of `tool` in this run, each as its argv (without argv[0]).
    fn calls(&self, tool: &str) -> Vec<Vec<String>> {
        let Ok(bytes) = fs::read(self.calls.join(tool)) else {
            return Vec::new();
        };
        let text = String::from_utf8(bytes).unwrap();
        let mut fields = text.split('\0');
        let mut calls = Vec::new();
        while let Some(count) = fields.next().filter(|c| !c.is_empty()) {
            let count: usize = count
                .parse()
                .unwrap_or_else(|_| panic!("bad record of {tool}: {text:?}"));
            calls.push((0..count).map(|_| fields.next().unwrap().to_string()).collect());
        }
        calls
    }

    /// Asserts that no fake tool ran at all.
    fn assert_no_tool_ran(&self) {
        let files: Vec<_> = fs::read_dir(&self.calls)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(files.is_empty(), "tools ran: {files:?}\nstderr:\n{}", self.stderr);
    }
}

/// Writes a small KIWI root tree at `root` whose `<image name>` is `name`.
fn kiwi_tree(root: &Path, name: &str) {
    for dir in ["dev", "proc", "sys", "etc", "usr/bin", "var/lib/data"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(root.join("image/config.xml"), CONFIG_XML.replace("@NAME@", name)).unwrap();
    fs::write(root.join("etc/os-release"), "NAME=fake\n").unwrap();
    fs::write(root.join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    fs::set_permissions(root.join("usr/bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("var/lib/data/removable"), "gone in the second stash\n").unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn read_blob(layout: &Path, digest: &str) -> Value {
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    read_json(&layout.join("blobs/sha256").join(hex))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Names in `dir` that start with `.kiwi-stackbuild-` (our scratch dirs).
fn scratch_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".kiwi-stackbuild-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `arg` is `TARGET/.kiwi-stackbuild-XXXX/SUFFIX`, a path in
/// the scratch dir of a rebuild into `target`.
fn assert_in_scratch(arg: &str, target: &str, suffix: &str) {
    let prefix = format!("{target}/.kiwi-stackbuild-");
    let middle = arg.strip_prefix(&prefix).and_then(|rest| rest.strip_suffix(suffix));
    assert!(
        middle.is_some_and(|m| !m.is_empty() && !m.contains('/')),
        "{arg:?} is not {prefix}XXXX{suffix}"
    );
}

// ---------------------------------------------------------------- help

/// The subcommands the top-level `--help` lists (without `help`).
fn subcommands(sandbox: &Sandbox) -> Vec<String> {
    let run = sandbox.run(&["--help"]);
    run.assert_ok();
    let listed = run
        .stdout
        .split("Commands:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands: in\n{}", run.stdout));
    listed
        .lines()
        .take_while(|l| !l.trim().is_empty())
        // `  name  about`; wrapped lines of an about start with more spaces.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn help_of_every_command_fits_80_columns() {
    let sandbox = Sandbox::new();
    let listed = subcommands(&sandbox);
    for known in ["rebuild", "stash", "stackbuild", "merge", "push", "pull"] {
        assert!(
            listed.iter().any(|c| c == known),
            "--help does not list {known}: {listed:?}"
        );
    }
    let commands: Vec<Vec<&str>> = std::iter::once(Vec::new())
        .chain(listed.iter().map(|c| vec![c.as_str()]))
        .collect();
    for columns in [None, Some("200")] {
        for command in &commands {
            for flag in ["--help", "-h"] {
                let args: Vec<&str> = command.iter().copied().chain([flag]).collect();
                let run = sandbox.run_with(&args, |c| {
                    if let Some(columns) = columns {
                        c.env("COLUMNS", columns);
                    }
                });
                run.assert_ok();
                assert!(run.stderr.is_empty(), "{args:?} wrote to stderr: {}", run.stderr);
                assert!(
                    run.stdout.contains("Usage: kiwi-stackbuild"),
                    "{args:?}: no usage line:\n{}",
                    run.stdout
                );
                for line in run.stdout.lines() {
                    assert!(
                        line.chars().count() <= 80,
                        "{args:?} (COLUMNS={columns:?}): line of {} columns:\n{line}",
                        line.chars().count()
                    );
                }
                run.assert_no_tool_ran();
            }
        }
    }
}

/// The lines of the `heading:` section of a help text, up to the next one.
fn help_section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| *l != format!("{heading}:"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

#[test]
fn help_lists_global_options_under_their_own_heading() {
    let sandbox = Sandbox::new();
    for (command, own) in [
        ("rebuild", "--keep-root"),
        ("stash", "--list"),
        ("stackbuild", "--from-registry"),
        ("merge", "--base"),
        ("push", "--help"),
        ("pull", "--help"),
    ] {
        let run = sandbox.run(&[command, "--help"]);
        run.assert_ok();
        let options = help_section(&run.stdout, "Options").join("\n");
        let globals = help_section(&run.stdout, "Global options").join("\n");
        assert!(
            options.contains(own),
            "{command}: {own} not under Options:\n{}",
            run.stdout
        );
        for global in ["--stash-home", "--profile", "--creds", "--compression", "--jobs"] {
            assert!(globals.contains(global), "{command}: {global} not under Global options");
            assert!(!options.contains(global), "{command}: {global} under Options");
        }
        let first = |heading: &str| run.stdout.find(&format!("\n{heading}:\n")).unwrap();
        assert!(
            first("Options") < first("Global options"),
            "{command}: own options come first"
        );
    }
    for command in ["man", "completions"] {
        let run = sandbox.run(&[command, "--help"]);
        run.assert_ok();
        for global in ["Global options", "--stash-home", "--creds", "--profile", "--debug"] {
            assert!(
                !run.stdout.contains(global),
                "{command} --help lists {global}:\n{}",
                run.stdout
            );
        }
    }
}

// ---------------------------------------------------------------- completions

/// The words bash's completion function offers for `line`, the last word
/// being the one completed (empty after a trailing space).
fn bash_completes(script: &Path, line: &str) -> Vec<String> {
    let mut words: Vec<&str> = line.split(' ').collect();
    let cword = words.len() - 1;
    let prev = if cword > 0 { words[cword - 1] } else { "" };
    let cur = words[cword];
    words.truncate(cword + 1);
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={cword}\nCOMP_LINE='{line}'\n\
         COMP_POINT=${{#COMP_LINE}}\n_kiwi_stackbuild kiwi-stackbuild '{cur}' '{prev}'\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" ")
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("running bash");
    assert!(
        out.status.success(),
        "bash failed on {line:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_their_options() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["completions", "bash"]);
    run.assert_ok();
    run.assert_no_tool_ran();
    assert!(
        run.stdout.contains("-o default kiwi-stackbuild\n"),
        "the script does not register kiwi-stackbuild:\n{}",
        run.stdout
    );
    let script = sandbox.path("completion.bash");
    fs::write(&script, &run.stdout).unwrap();
    for (line, wanted, unwanted) in [
        ("kiwi-stackbuild re", "rebuild", "stash"),
        ("kiwi-stackbuild st", "stackbuild", "rebuild"),
        ("kiwi-stackbuild stash --l", "--list", "--root"),
        ("kiwi-stackbuild rebuild --ro", "--root", "--list"),
        ("kiwi-stackbuild --debug stackbuild --st", "--stash", "--root"),
        (
            "kiwi-stackbuild stackbuild --stash a --from",
            "--from-registry",
            "--list",
        ),
        ("kiwi-stackbuild completions ", "fish", "--list"),
        ("kiwi-stackbuild pull --compression ", "zstd", "--list"),
    ] {
        let offered = bash_completes(&script, line);
        assert!(
            offered.iter().any(|w| w == wanted),
            "{line:?} does not offer {wanted}: {offered:?}"
        );
        assert!(
            !offered.iter().any(|w| w == unwanted),
            "{line:?} offers {unwanted}: {offered:?}"
        );
    }
}

#[test]
fn zsh_and_fish_scripts_know_the_commands() {
    let sandbox = Sandbox::new();
    for (shell, header) in [
        ("zsh", "#compdef kiwi-stackbuild"),
        ("fish", "complete -c kiwi-stackbuild"),
    ] {
        let run = sandbox.run(&["completions", shell]);
        run.assert_ok();
        assert!(run.stdout.contains(header), "{shell}: no {header:?}:\n{}", run.stdout);
        for command in ["rebuild", "stash", "stackbuild", "merge", "push", "pull"] {
            assert!(run.stdout.contains(command), "{shell}: no {command}");
        }
        assert!(run.stdout.contains("--keep-root") || run.stdout.contains("keep-root"));
    }
}

// ---------------------------------------------------------------- man pages

/// The lines of the roff section `.SH title` of `page`, up to the next one.
fn man_section<'a>(page: &'a str, title: &str) -> Vec<&'a str> {
    let quoted = format!(".SH \"{title}\"");
    let plain = format!(".SH {title}");
    page.lines()
        .skip_while(|l| *l != quoted && *l != plain)
        .skip(1)
        .take_while(|l| !l.starts_with(".SH "))
        .collect()
}

#[test]
fn man_pages_have_the_sections_a_reader_looks_for() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("man");
    let run = sandbox.run(&["man", "--output", &sandbox.arg("man")]);
    run.assert_ok();
    run.assert_no_tool_ran();
    let commands = [
        "rebuild",
        "stash",
        "stackbuild",
        "merge",
        "inputs",
        "push",
        "pull",
        "completions",
        "man",
    ];
    let names: Vec<String> = std::iter::once("kiwi-stackbuild".to_string())
        .chain(commands.iter().map(|c| format!("kiwi-stackbuild-{c}")))
        .collect();
    let mut generated: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    generated.sort();
    let mut wanted: Vec<String> = names.iter().map(|n| format!("{n}.1")).collect();
    wanted.sort();
    assert_eq!(generated, wanted, "no page for help, one for every command");
    for name in &names {
        let page = fs::read_to_string(dir.join(format!("{name}.1"))).unwrap();
        let uses_globals = !name.ends_with("-man") && !name.ends_with("-completions");
        let mut sections = vec!["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXAMPLES", "SEE ALSO"];
        if uses_globals {
            sections.extend(["GLOBAL OPTIONS", "ENVIRONMENT", "FILES"]);
        }
        for section in sections {
            assert!(
                !man_section(&page, section).is_empty(),
                "{name}.1 has no section {section}:\n{page}"
            );
        }
        if !uses_globals {
            assert!(
                !page.contains("GLOBAL OPTIONS") && !page.contains("\\-\\-creds"),
                "{name}.1:\n{page}"
            );
        }
        // Every page named under SEE ALSO was generated.
        for line in man_section(&page, "SEE ALSO") {
            for named in line.split("\\fB").skip(1) {
                let named = named.split("\\fR").next().unwrap().replace("\\-", "-");
                assert!(
                    names.contains(&named),
                    "{name}.1 refers to {named}(1), which is no page"
                );
            }
        }
        assert_eq!(page.matches(".ie \\n(.g .ds Aq").count(), 1, "{name}.1: one preamble");
    }
    let top = fs::read_to_string(dir.join("kiwi-stackbuild.1")).unwrap();
    let environment = man_section(&top, "ENVIRONMENT").join("\n").replace("\\-", "-");
    for var in [
        "KIWI_NG",
        "SKOPEO",
        "UMOCI",
        "KIWI_STACKBUILD_HOME",
        "KIWI_STACKBUILD_PASSWORD",
        "KIWI_STACKBUILD_UNPACKER",
        "SOURCE_DATE_EPOCH",
        "BUILD_DISTURL",
    ] {
        assert!(
            environment.contains(&format!("\\fB{var}\\fR")),
            "ENVIRONMENT lacks {var}"
        );
    }
    let files = man_section(&top, "FILES").join("\n").replace("\\-", "-");
    for path in ["/var/lib/kiwi-stackbuild/stash", "~/.cache/kiwi-stackbuild/"] {
        assert!(files.contains(path), "FILES lacks {path}");
    }
    // The four forms of rebuild are list items of their own, on its page and
    // on the binary's.
    let rebuild = fs::read_to_string(dir.join("kiwi-stackbuild-rebuild.1")).unwrap();
    for page in [&rebuild, &top] {
        let description = man_section(page, "DESCRIPTION");
        for form in ["W1", "W2", "W3", "W4"] {
            let at = description
                .iter()
                .position(|l| l.starts_with(&format!("\\fB{form}\\fR")))
                .unwrap_or_else(|| panic!("no item {form}:\n{}", description.join("\n")));
            assert!(description[at - 1].starts_with(".TP"), "{form} is no list item");
        }
    }
    // Synopses carry the values.
    let synopsis = man_section(&rebuild, "SYNOPSIS").join("\n");
    assert!(synopsis.contains("\\fB\\-\\-root\\fR \\fIREF\\fR"), "{synopsis}");
    assert!(synopsis.contains("\\fB\\-\\-description\\fR \\fIDIR\\fR"), "{synopsis}");
    let stackbuild = fs::read_to_string(dir.join("kiwi-stackbuild-stackbuild.1")).unwrap();
    let synopsis = man_section(&stackbuild, "SYNOPSIS");
    assert_eq!(synopsis.len(), 1, "one form: {synopsis:?}");
    assert!(synopsis[0].contains("\\-\\-stash NAME..."), "{synopsis:?}");
}

// ---------------------------------------------------------------- missing tools

#[test]
fn missing_kiwi_ng_is_one_line_error_with_install_hint() {
    let sandbox = Sandbox::new();
    fs::remove_file(sandbox.fake("kiwi-ng")).unwrap();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(&["rebuild", "--root", "base", "--", "--target-dir", &target], |c| {
        c.env_remove("KIWI_NG");
    });
    run.assert_fails(1);
    run.assert_one_line_error("kiwi-ng not found on PATH");
    run.assert_stderr_has(&["Suggestion: install kiwi (", "or set KIWI_NG to its kiwi-ng"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
    assert!(!sandbox.store().exists(), "the store was created");
}

#[test]
fn umoci_env_naming_no_executable_is_one_line_error_with_install_hint() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(&["rebuild", "--root", "base", "--", "--target-dir", &target], |c| {
        c.env("UMOCI", "/nonexistent/umoci");
    });
    run.assert_fails(1);
    run.assert_one_line_error("UMOCI is set to \"/nonexistent/umoci\", which is not an executable");
    run.assert_stderr_has(&["Suggestion: install umoci (zypper/dnf/apt install umoci), or set UMOCI to its path"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

#[test]
fn umoci_missing_from_path_is_one_line_error_with_install_hint() {
    let sandbox = Sandbox::new();
    fs::remove_file(sandbox.fake("umoci")).unwrap();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(&["stackbuild", "--stash", "base", "--target-dir", &target], |c| {
        c.env_remove("UMOCI");
    });
    run.assert_fails(1);
    run.assert_one_line_error("umoci not found on PATH");
    run.assert_stderr_has(&["Suggestion: install umoci"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

#[test]
fn registry_root_without_skopeo_is_one_line_error_with_install_hint() {
    let sandbox = Sandbox::new();
    fs::remove_file(sandbox.fake("skopeo")).unwrap();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--root",
            "docker://registry.example/kiwi/base:1",
            "--",
            "--target-dir",
            &target,
        ],
        |c| {
            c.env_remove("SKOPEO");
        },
    );
    run.assert_fails(1);
    run.assert_one_line_error("skopeo not found on PATH");
    run.assert_stderr_has(&["Suggestion: install skopeo"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

// ---------------------------------------------------------------- names

#[test]
fn container_name_with_upper_case_suggests_a_valid_name() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    let run = sandbox.run(&[
        "stash",
        "--root",
        root.to_str().unwrap(),
        "--container-name",
        "Hello_World",
    ]);
    run.assert_fails(1);
    run.assert_stderr_has(&["invalid image name \"Hello_World\"", "Suggestion: use \"hello-world\""]);
    run.assert_no_tool_ran();
    assert!(run.stdout.is_empty(), "stdout: {}", run.stdout);
    assert!(!sandbox.store().exists(), "a rejected stash created the store");
}

/// DESIGN §2: "a bad name is an error that suggests a valid one" — also
/// when clap parses it (`--keep-root`, `--root`, `push`/`pull` names).
#[test]
fn bad_reference_on_the_command_line_suggests_a_valid_name() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let run = sandbox.run(&[
        "rebuild",
        "--root",
        "base",
        "--keep-root",
        "Bad Name",
        "--",
        "--target-dir",
        &target,
    ]);
    run.assert_fails(2);
    run.assert_stderr_has(&[
        "invalid value 'Bad Name' for '--keep-root <REF>'",
        "invalid image name \"Bad Name\"",
        "\"bad-name\"",
    ]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

#[test]
fn invalid_image_name_in_config_xml_points_to_container_name() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "My Image");
    let root = root.to_str().unwrap();
    let run = sandbox.run(&["stash", "--root", root]);
    run.assert_fails(1);
    run.assert_stderr_has(&[
        "invalid image name \"My Image\"",
        "use \"my-image\"",
        &format!("the name comes from <image name> in {root}/image/config.xml"),
        "--container-name",
    ]);
    assert!(!sandbox.store().exists(), "a rejected stash created the store");
    // Following the advice works.
    assert_eq!(
        sandbox.stash(Path::new(root), &["--container-name", "my-image"]),
        "my-image:latest"
    );
}

// ---------------------------------------------------------------- target dir and kiwi options

#[test]
fn existing_image_root_is_left_alone_and_no_tool_runs() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let image_root = sandbox.path("target/build/image-root");
    fs::create_dir_all(image_root.join("etc")).unwrap();
    fs::write(image_root.join("etc/marker"), "an earlier build\n").unwrap();
    let before = common::tree::snapshot(&sandbox.path("target"));
    let runs = [
        sandbox.run(&["rebuild", "--root", "base", "--", "--target-dir", &target]),
        sandbox.run(&["stackbuild", "--stash", "base", "--target-dir", &target]),
    ];
    for run in runs {
        run.assert_fails(1);
        run.assert_one_line_error(&format!("{}/build/image-root already exists", target));
        run.assert_stderr_has(&["Suggestion: choose a new --target-dir, or remove the old build first"]);
        run.assert_no_tool_ran();
    }
    common::tree::assert_same_tree(&before, &common::tree::snapshot(&sandbox.path("target")));
}

#[test]
fn a_target_whose_build_dir_links_into_the_store_is_refused() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "base");
    sandbox.stash(&root, &["--tag", "1"]);
    let target = sandbox.path("target");
    fs::create_dir(&target).unwrap();
    std::os::unix::fs::symlink(sandbox.store().join("blobs"), target.join("build")).unwrap();
    let before = common::tree::snapshot(&sandbox.store());
    let run = sandbox.run(&[
        "rebuild",
        "--root",
        "base:1",
        "--",
        "--target-dir",
        target.to_str().unwrap(),
    ]);
    run.assert_fails(1);
    run.assert_one_line_error(&format!(
        "{}/build/image-root lies inside the stash store {}",
        target.display(),
        sandbox.store().display()
    ));
    run.assert_no_tool_ran();
    common::tree::assert_same_tree(&before, &common::tree::snapshot(&sandbox.store()));
}

#[test]
fn unknown_kiwi_option_is_named_before_anything_runs() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let runs = [
        sandbox.run(&["rebuild", "--root", "base", "--", "--target-dir", &target, "--bogus"]),
        sandbox.run(&[
            "stackbuild",
            "--stash",
            "base",
            "--target-dir",
            &target,
            "--",
            "--bogus",
        ]),
    ];
    for run in runs {
        run.assert_fails(1);
        run.assert_one_line_error("kiwi-ng system create has no option \"--bogus\" (options of kiwi 11.1, built in)");
        run.assert_stderr_has(&["Suggestion: see kiwi-ng system create --help"]);
        run.assert_no_tool_ran();
    }
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

/// `kiwi-ng system create --help` of a kiwi-ng that has an option kiwi 11.1
/// lacks and lacks one it has, as kiwi-ng 11 prints it at a wide terminal.
const NEWER_CREATE_HELP: &str = "
 Usage: kiwi-ng system create [OPTIONS]

╭─ Options ─────────────────────────────────────────────────────╮
│ *  --root          <path>   <directory> The root directory     │
│ *  --target-dir    <path>   <directory> Where results go       │
│    --fast-mode     <bool>   A flag of this kiwi-ng             │
│    --help          <bool>   Show this message and exit.        │
╰───────────────────────────────────────────────────────────────╯
";

#[test]
fn kiwi_options_come_from_the_installed_kiwi_ng_and_are_cached() {
    let sandbox = Sandbox::new();
    let help = sandbox.path("help.txt");
    fs::write(&help, NEWER_CREATE_HELP).unwrap();
    let target = sandbox.arg("target");
    let rebuild = |extra: &str, help: &Path| {
        sandbox.run_with(
            &["rebuild", "--root", "base", "--", "--target-dir", &target, extra],
            |c| {
                c.env("FAKE_KIWI_HELP", help);
            },
        )
    };
    // An option this kiwi-ng has passes the check; the run then stops at
    // the missing stash.
    let run = rebuild("--fast-mode", &help);
    run.assert_fails(1);
    run.assert_one_line_error(&format!("no stash base:latest in {}", sandbox.store().display()));
    // One kiwi 11.1 has and this kiwi-ng lacks is refused, naming the version.
    let run = rebuild("--signing-key=/k", &help);
    run.assert_fails(1);
    run.assert_one_line_error("kiwi-ng system create has no option \"--signing-key\" (options of kiwi-ng 9.9.9)");
    run.assert_no_tool_ran();
    let cached: Vec<_> = fs::read_dir(sandbox.path(".cache/kiwi-stackbuild/kiwi-ng-options"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        cached.len() == 1 && cached[0].starts_with("9.9.9-create-"),
        "cache: {cached:?}"
    );
    // The list is read once per kiwi-ng version: without its help text now,
    // the cached list still decides.
    let run = rebuild("--fast-mode", &sandbox.path("no-such-help"));
    run.assert_one_line_error(&format!("no stash base:latest in {}", sandbox.store().display()));
}

#[test]
fn build_option_without_description_belongs_to_system_build() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let run = sandbox.run(&[
        "rebuild",
        "--root",
        "base",
        "--",
        "--target-dir",
        &target,
        "--add-package",
        "vim",
    ]);
    run.assert_fails(1);
    run.assert_one_line_error("kiwi-ng system create has no option \"--add-package\" (options of kiwi 11.1, built in)");
    run.assert_stderr_has(&["Suggestion: --add-package is an option of system build: give a --description to build"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

#[test]
fn missing_target_dir_is_asked_for() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["rebuild", "--root", "base"]);
    run.assert_fails(1);
    run.assert_one_line_error("no --target-dir after --");
    run.assert_stderr_has(&["-- --target-dir DIR"]);
    run.assert_no_tool_ran();
}

#[test]
fn unknown_stash_is_named_and_nothing_is_created() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    sandbox.stash(&root, &["--tag", "1"]);
    let target = sandbox.arg("target");
    let run = sandbox.run(&["rebuild", "--root", "fake-base:2", "--", "--target-dir", &target]);
    run.assert_fails(1);
    run.assert_one_line_error(&format!("no stash fake-base:2 in {}", sandbox.store().display()));
    run.assert_stderr_has(&["Suggestion: known tags: fake-base:1"]);
    run.assert_no_tool_ran();
    assert!(!Path::new(&target).exists(), "the target dir was created");
}

// ---------------------------------------------------------------- W2 and stackbuild

/// The kiwi-ng global options of the W2 tests, as given to us and as
/// kiwi-ng must get them (src/tools/kiwi.rs `Globals::args`).
fn globals(sandbox: &Sandbox) -> (Vec<String>, Vec<String>) {
    let (cache, config) = (sandbox.arg("cache"), sandbox.arg("kiwi.yml"));
    let ours = strings(&[
        "--profile",
        "a",
        "--profile",
        "b",
        "--type",
        "tbz",
        "--shared-cache-dir",
        &cache,
        "--kiwi-config",
        &config,
        "--debug",
    ]);
    let kiwis = strings(&[
        "--debug",
        "--profile",
        "a",
        "--profile",
        "b",
        "--type",
        "tbz",
        "--shared-cache-dir",
        &cache,
        "--config",
        &config,
    ]);
    (ours, kiwis)
}

/// Checks a W2-style run: umoci unpacked exactly the stash's layers into
/// TARGET/build/image-root, then kiwi-ng ran `system create` once with
/// `kiwi_argv`, and the scratch dir is gone.
fn assert_unpacked_then_created(sandbox: &Sandbox, run: &Run, key: &str, target: &str, kiwi_argv: &[String]) {
    run.assert_ok();
    let image_root = format!("{target}/build/image-root");
    let umoci = run.calls("umoci");
    assert_eq!(umoci.len(), 1, "umoci calls: {umoci:?}");
    let argv = &umoci[0];
    assert_eq!(argv.len(), 6, "umoci argv: {argv:?}");
    assert_eq!(
        argv[..4],
        strings(&["raw", "unpack", "--keep-dirlinks", "--image"]),
        "umoci argv: {argv:?}"
    );
    assert_in_scratch(&argv[4], target, "/unpack:root");
    assert_eq!(argv[5], image_root, "umoci argv: {argv:?}");
    // The layout umoci got holds one image, `root`, made of the stash's layers.
    let layout = run.calls.join("umoci-layout");
    let index = read_json(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "{index}");
    assert_eq!(manifests[0]["annotations"][REF_NAME], "root");
    let unpacked = read_blob(&layout, manifests[0]["digest"].as_str().unwrap());
    assert_eq!(unpacked["layers"], sandbox.manifest_of(key)["layers"]);
    assert_eq!(run.calls("kiwi-ng"), vec![kiwi_argv.to_vec()]);
    assert!(run.calls("skopeo").is_empty(), "skopeo ran for a stash");
    assert!(Path::new(&image_root).join("image/config.xml").is_file());
    assert_eq!(
        scratch_dirs(Path::new(target)),
        Vec::<String>::new(),
        "scratch dir left in {target}"
    );
    assert!(
        run.stdout.is_empty(),
        "a rebuild without --keep-root printed: {}",
        run.stdout
    );
    run.assert_stderr_has(&[&format!("fake kiwi-ng: building in {target}")]);
}

#[test]
fn w2_unpacks_with_umoci_and_runs_system_create_with_globals_first() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    let key = sandbox.stash(&root, &[]);
    assert_eq!(key, "fake-base:latest");
    let target = sandbox.arg("target");
    let (ours, kiwis) = globals(&sandbox);
    let mut args = strings(&["rebuild"]);
    args.extend(ours);
    args.extend(strings(&["--root", "fake-base", "--", "--target-dir", &target]));
    let run = sandbox.run_with(&args, |c| {
        c.env("FAKE_UMOCI_SEED", &root);
    });
    let image_root = format!("{target}/build/image-root");
    let mut want = kiwis;
    want.extend(strings(&[
        "system",
        "create",
        "--root",
        &image_root,
        "--target-dir",
        &target,
    ]));
    assert_unpacked_then_created(&sandbox, &run, &key, &target, &want);
    // --debug logs every child as a shell-quoted line.
    let line = std::iter::once(sandbox.fake("kiwi-ng").to_str().unwrap().to_string())
        .chain(want)
        .collect::<Vec<_>>()
        .join(" ");
    run.assert_stderr_has(&[&format!("kiwi-stackbuild: debug: running {line}\n")]);
}

#[test]
fn stackbuild_runs_the_same_commands_as_rebuild_root() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    let key = sandbox.stash(&root, &["--tag", "7"]);
    assert_eq!(key, "fake-base:7");
    let target = sandbox.arg("target");
    let key_file = sandbox.arg("signing.key");
    let (ours, kiwis) = globals(&sandbox);
    // Global options go anywhere before `--`, here before the subcommand.
    let mut args = ours;
    args.extend(strings(&[
        "stackbuild",
        "--stash",
        "fake-base:7",
        "--target-dir",
        &target,
        "--",
        "--signing-key",
        &key_file,
    ]));
    let run = sandbox.run_with(&args, |c| {
        c.env("FAKE_UMOCI_SEED", &root);
    });
    let image_root = format!("{target}/build/image-root");
    let mut want = kiwis;
    want.extend(strings(&[
        "system",
        "create",
        "--root",
        &image_root,
        "--target-dir",
        &target,
        "--signing-key",
        &key_file,
    ]));
    assert_unpacked_then_created(&sandbox, &run, &key, &target, &want);
}

/// kiwi-ng's arguments as KIWI 11's stackbuild takes them (after the word
/// `kiwi`), after `--`, and `rebuild --target-dir` before `--`: the same
/// kiwi-ng argv for every spelling.
#[test]
fn kiwi_word_and_target_dir_before_double_dash_give_the_same_kiwi_ng_argv() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    let key = sandbox.stash(&root, &["--tag", "7"]);
    let key_file = sandbox.arg("signing.key");
    let forms: [&[&str]; 4] = [
        &[
            "stackbuild",
            "--stash",
            "fake-base:7",
            "--target-dir",
            "@T@",
            "--",
            "--signing-key",
            "@K@",
        ],
        &[
            "stackbuild",
            "--stash",
            "fake-base:7",
            "--target-dir",
            "@T@",
            "kiwi",
            "--signing-key",
            "@K@",
        ],
        &[
            "rebuild",
            "--root",
            "fake-base:7",
            "--",
            "--target-dir",
            "@T@",
            "--signing-key",
            "@K@",
        ],
        &[
            "rebuild",
            "--root",
            "fake-base:7",
            "--target-dir",
            "@T@",
            "--",
            "--signing-key",
            "@K@",
        ],
    ];
    for (n, form) in forms.iter().enumerate() {
        let target = sandbox.arg(&format!("target-{n}"));
        let args: Vec<String> = form
            .iter()
            .map(|a| a.replace("@T@", &target).replace("@K@", &key_file))
            .collect();
        let run = sandbox.run_with(&args, |c| {
            c.env("FAKE_UMOCI_SEED", &root);
        });
        let image_root = format!("{target}/build/image-root");
        let want = strings(&[
            "system",
            "create",
            "--root",
            &image_root,
            "--target-dir",
            &target,
            "--signing-key",
            &key_file,
        ]);
        assert_unpacked_then_created(&sandbox, &run, &key, &target, &want);
    }
}

#[test]
fn unpacked_image_without_image_dir_is_refused_and_removed() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    sandbox.stash(&root, &[]);
    let target = sandbox.arg("target");
    // The fake umoci creates an empty root: no /image/config.xml in it.
    let run = sandbox.run(&["rebuild", "--root", "fake-base", "--", "--target-dir", &target]);
    run.assert_fails(1);
    run.assert_one_line_error("fake-base is not a KIWI root tree: it has no /image/config.xml");
    run.assert_stderr_has(&["Suggestion: pass --description to build on it"]);
    assert_eq!(run.calls("umoci").len(), 1, "umoci should have unpacked once");
    assert!(
        run.calls("kiwi-ng").is_empty(),
        "kiwi-ng ran: {:?}",
        run.calls("kiwi-ng")
    );
    let image_root = sandbox.path("target/build/image-root");
    assert!(!image_root.exists(), "{} was left behind", image_root.display());
    assert_eq!(
        scratch_dirs(Path::new(&target)),
        Vec::<String>::new(),
        "scratch dir left in {target}"
    );
}

/// W2 reads the description stored in the image from its layers before
/// anything is unpacked: a symlink out of `/image` stops it there.
#[test]
fn stored_description_linking_out_is_refused_before_the_unpack() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    std::os::unix::fs::symlink("/etc/passwd", root.join("image/config.sh")).unwrap();
    sandbox.stash(&root, &[]);
    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &["rebuild", "--root", "fake-base", "--", "--target-dir", &target],
        |c| {
            c.env("FAKE_UMOCI_SEED", &root);
        },
    );
    run.assert_fails(1);
    run.assert_one_line_error("/image/config.sh points outside the description (/etc/passwd)");
    assert!(run.calls("umoci").is_empty(), "umoci ran: {:?}", run.calls("umoci"));
    assert!(
        run.calls("kiwi-ng").is_empty(),
        "kiwi-ng ran: {:?}",
        run.calls("kiwi-ng")
    );
    assert!(!sandbox.path("target/build").exists(), "the target has a build dir");
    assert_eq!(
        scratch_dirs(Path::new(&target)),
        Vec::<String>::new(),
        "scratch dir left in {target}"
    );
}

#[test]
fn failing_kiwi_ng_shows_its_command_and_output() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    sandbox.stash(&root, &[]);
    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &["rebuild", "--root", "fake-base", "--", "--target-dir", &target],
        |c| {
            c.env("FAKE_UMOCI_SEED", &root).env("FAKE_KIWI_EXIT", "3");
        },
    );
    run.assert_fails(1);
    run.assert_stderr_has(&[
        "   0: the kiwi-ng build failed\n",
        "   1: kiwi-ng failed: it exited with 3\n",
        &format!(
            "Command:\n   {} system create --root {target}/build/image-root --target-dir {target}",
            sandbox.fake("kiwi-ng").display()
        ),
        "Its last output:",
        "fake kiwi-ng: something broke",
        &format!("{target}/build/image-root.log"),
    ]);
    assert_eq!(run.calls("kiwi-ng").len(), 1);
    assert_eq!(
        scratch_dirs(Path::new(&target)),
        Vec::<String>::new(),
        "scratch dir left in {target}"
    );
}

// ---------------------------------------------------------------- W1 and W3

#[test]
fn w1_builds_the_description_and_keeps_the_root_tagged_with_its_version() {
    let sandbox = Sandbox::new();
    let (description, built) = sandbox.description_and_built_root();
    let (description, target) = (description.to_str().unwrap(), sandbox.arg("target"));
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--description",
            description,
            "--keep-root",
            "kept",
            "--",
            "--target-dir",
            &target,
        ],
        |c| {
            c.env("FAKE_KIWI_ROOT", &built);
        },
    );
    run.assert_ok();
    let kiwi = run.calls("kiwi-ng");
    assert_eq!(
        kiwi[0],
        strings(&["system", "build", "--description", description, "--target-dir", &target])
    );
    assert_eq!(kiwi.len(), 1, "kiwi-ng calls: {kiwi:?}");
    assert!(run.calls("umoci").is_empty() && run.calls("skopeo").is_empty());
    // A bare name is tagged with the <version> and `latest`, one manifest,
    // so that `--root kept` (kept:latest) finds it.
    assert_eq!(run.stdout, "kept:1.2.3\nkept:latest\n");
    let manifest = sandbox.manifest_of("kept:1.2.3");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(sandbox.manifest_of("kept:latest"), manifest);
    let index = sandbox.index();
    let digests: Vec<&Value> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["digest"])
        .collect();
    assert!(digests.len() == 2 && digests[0] == digests[1], "index: {digests:?}");
    let again = sandbox.run(&[
        "rebuild",
        "--root",
        "kept",
        "--",
        "--target-dir",
        &sandbox.arg("target2"),
    ]);
    again.assert_fails(1);
    assert!(
        !again.stderr.contains("no stash"),
        "--root kept not found:\n{}",
        again.stderr
    );
}

#[test]
fn keep_root_with_a_tag_stores_that_tag_alone() {
    let sandbox = Sandbox::new();
    let (description, built) = sandbox.description_and_built_root();
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--description",
            description.to_str().unwrap(),
            "--keep-root",
            "kept:7",
            "--",
            "--target-dir",
            &sandbox.arg("target"),
        ],
        |c| {
            c.env("FAKE_KIWI_ROOT", &built);
        },
    );
    run.assert_ok();
    assert_eq!(run.stdout, "kept:7\n");
    assert_eq!(sandbox.index()["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn w3_builds_on_the_root_without_bootstrap_packages() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    sandbox.stash(&root, &[]);
    let description = sandbox.path("description");
    fs::create_dir_all(&description).unwrap();
    let packages = "<packages type=\"bootstrap\"><package name=\"debootstrap-me\"/></packages>\n    \
                    <packages type=\"image\"><package name=\"vim\"/></packages>\n</image>";
    let config = CONFIG_XML.replace("@NAME@", "on-top").replace("</image>", packages);
    fs::write(description.join("config.xml"), config).unwrap();
    fs::write(description.join("config.sh"), "#!/bin/sh\n").unwrap();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--root",
            "fake-base",
            "--",
            "--description",
            description.to_str().unwrap(),
            "--target-dir",
            &target,
        ],
        |c| {
            c.env("FAKE_UMOCI_SEED", &root);
        },
    );
    run.assert_ok();
    let kiwi = run.calls("kiwi-ng");
    assert_eq!(kiwi.len(), 1, "kiwi-ng calls: {kiwi:?}");
    let argv = &kiwi[0];
    assert_eq!(argv.len(), 7, "kiwi-ng argv: {argv:?}");
    assert_eq!(argv[..3], strings(&["system", "build", "--description"]));
    assert_in_scratch(&argv[3], &target, "/description");
    assert_eq!(argv[4..], strings(&["--target-dir", &target, "--allow-existing-root"]));
    // kiwi-ng got a copy of the description without the bootstrap packages.
    let seen = run.calls.join("description");
    let handed = fs::read_to_string(seen.join("config.xml")).unwrap();
    assert!(
        !handed.contains("bootstrap"),
        "bootstrap packages reached kiwi-ng:\n{handed}"
    );
    assert!(
        handed.contains("<package name=\"vim\"/>"),
        "image packages lost:\n{handed}"
    );
    assert!(
        seen.join("config.sh").is_file(),
        "config.sh not copied with the description"
    );
    run.assert_stderr_has(&["dropped <packages type=\"bootstrap\">"]);
    // The user's description is untouched.
    assert!(fs::read_to_string(description.join("config.xml"))
        .unwrap()
        .contains("debootstrap-me"));
}

#[test]
fn w4_keeps_bootstrap_packages_in_the_merge_and_drops_them_from_kiwi_ngs_copy() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    let bootstrap = "<packages type=\"bootstrap\"><package name=\"debootstrap-me\"/></packages>";
    let stored = CONFIG_XML
        .replace("@NAME@", "fake-base")
        .replace("</image>", &format!("    {bootstrap}\n</image>"));
    fs::write(root.join("image/config.xml"), stored).unwrap();
    sandbox.stash(&root, &[]);
    let derived = sandbox.derived_from_fake_base();
    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--description",
            derived.to_str().unwrap(),
            "--",
            "--target-dir",
            &target,
        ],
        |c| {
            c.env("FAKE_UMOCI_SEED", &root);
        },
    );
    run.assert_ok();
    let kiwi = run.calls("kiwi-ng");
    assert_eq!(kiwi.len(), 1, "kiwi-ng calls: {kiwi:?}");
    assert_in_scratch(&kiwi[0][3], &target, "/description");
    // T/build/merged-description is the merge: bootstrap kept ...
    let merged = fs::read_to_string(Path::new(&target).join("build/merged-description/config.xml")).unwrap();
    assert_eq!(merged.matches(bootstrap).count(), 1, "{merged}");
    assert!(merged.contains("<package name=\"vim\"/>"), "{merged}");
    // ... and kiwi-ng built the same description without it.
    let handed = fs::read_to_string(run.calls.join("description/config.xml")).unwrap();
    assert!(
        !handed.contains("bootstrap"),
        "bootstrap packages reached kiwi-ng:\n{handed}"
    );
    assert_eq!(handed, merged.replace(&format!("    {bootstrap}\n"), ""));
    run.assert_stderr_has(&["dropped <packages type=\"bootstrap\">"]);
}

// ---------------------------------------------------------------- stash --list and --rm

/// `stash --list | head -0`: the reader is gone before the first line.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "piped");
    sandbox.stash(&root, &["--tag", "1"]);
    for args in [
        &["stash", "--list"][..],
        &["stash", "--list", "--json"],
        &["stash", "--check"],
    ] {
        let run = sandbox.run_with(args, |c| {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            c.stdout(writer);
        });
        run.assert_ok();
        assert!(!run.stderr.contains("panicked"), "{args:?}:\n{}", run.stderr);
    }
}

#[test]
fn list_of_a_missing_store_is_empty_and_creates_nothing() {
    let sandbox = Sandbox::new();
    let home = sandbox.path("nowhere");
    let home = home.to_str().unwrap();
    for args in [
        ["stash", "--list", "--stash-home", home].as_slice(),
        &["--stash-home", home, "stash", "--list", "--json"],
    ] {
        let run = sandbox.run(args);
        run.assert_ok();
        run.assert_no_tool_ran();
        if args.contains(&"--json") {
            assert_eq!(run.stdout, "[]\n");
        } else {
            assert_eq!(run.stdout, "");
            run.assert_stderr_has(&[&format!("no stashes in {home}\n")]);
        }
    }
    assert!(!Path::new(home).exists(), "listing created {home}");
    assert!(
        !sandbox.store().exists(),
        "listing created KIWI_STACKBUILD_HOME though --stash-home was given"
    );
}

#[test]
fn removing_from_a_missing_store_fails_and_creates_nothing() {
    let sandbox = Sandbox::new();
    for stash in ["fake-base:1", "fake-base"] {
        let run = sandbox.run(&["stash", "--rm", stash]);
        run.assert_fails(1);
        let message = if stash.contains(':') {
            "no stash fake-base:1 in"
        } else {
            "no stash named fake-base in"
        };
        run.assert_stderr_has(&[&format!("   0: {message} {}\n", sandbox.store().display())]);
        run.assert_no_tool_ran();
        assert!(
            !sandbox.store().exists(),
            "stash --rm {stash} created the store {}",
            sandbox.store().display()
        );
    }
}

#[test]
fn list_of_an_empty_store_says_no_stashes() {
    let sandbox = Sandbox::new();
    let store = sandbox.store();
    fs::create_dir_all(store.join("blobs/sha256")).unwrap();
    fs::write(store.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(store.join("index.json"), r#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
    let run = sandbox.run(&["stash", "--list"]);
    run.assert_ok();
    assert_eq!(run.stdout, "");
    run.assert_stderr_has(&[&format!("no stashes in {}\n", store.display())]);
    let run = sandbox.run(&["stash", "--list", "--json"]);
    run.assert_ok();
    assert_eq!(run.stdout, "[]\n");
}

#[test]
fn stash_twice_then_list_and_remove_everything() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    assert_eq!(sandbox.stash(&root, &["--tag", "1"]), "fake-base:1");
    fs::remove_file(root.join("var/lib/data/removable")).unwrap();
    let run = sandbox.run(&["stash", "--root", root.to_str().unwrap(), "--tag", "2"]);
    run.assert_ok();
    assert_eq!(run.stdout, "fake-base:2\n");
    run.assert_stderr_has(&[
        &format!("stashed {} as fake-base:2 (2 layers", root.display()),
        ", on fake-base:1)",
    ]);

    let run = sandbox.run(&["stash", "--list", "--json"]);
    run.assert_ok();
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    let entries = list.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{list:#}");
    let (first, second) = (&entries[0], &entries[1]);
    assert_eq!(first["reference"], "fake-base:1");
    assert_eq!(first["layers"], 1);
    assert_eq!(first["base"], Value::Null);
    assert_eq!(second["reference"], "fake-base:2");
    assert_eq!(second["layers"], 2);
    let first_digest = first["digest"].as_str().unwrap();
    assert_eq!(second["base"], format!("fake-base:1@{first_digest}"));
    for entry in entries {
        let labels = &entry["labels"];
        assert_eq!(labels[KIWI_VERSION_LABEL], "9.9.9", "{entry:#}");
        assert_eq!(labels["io.kiwi-stackbuild.image.name"], "fake-base");
        assert_eq!(labels["io.kiwi-stackbuild.image.version"], "1.2.3");
        assert_eq!(labels["io.kiwi-stackbuild.package-manager"], "apt");
    }
    // The second stash shares the first's layer.
    let layers = |key: &str| sandbox.manifest_of(key)["layers"].as_array().unwrap().clone();
    assert_eq!(layers("fake-base:2")[0], layers("fake-base:1")[0]);

    let run = sandbox.run(&["stash", "--list"]);
    run.assert_ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with("STASH ") && lines[0].ends_with("  BASE"),
        "header: {:?}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("fake-base:1 ") && lines[1].ends_with("  -"),
        "{:?}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("fake-base:2 ") && lines[2].ends_with("  fake-base:1"),
        "{:?}",
        lines[2]
    );

    // The first tag goes; its layer stays, since the second uses it.
    let run = sandbox.run(&["stash", "--rm", "fake-base:1"]);
    run.assert_ok();
    run.assert_stderr_has(&["removed fake-base:1 (2 unused blobs freed)\n"]);
    let run = sandbox.run(&["stash", "--list", "--json"]);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    let refs: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, ["fake-base:2"]);
    for layer in layers("fake-base:2") {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        assert!(
            sandbox.store().join("blobs/sha256").join(&hex).is_file(),
            "layer {hex} of fake-base:2 was freed"
        );
    }

    // A bare name removes every tag left.
    let run = sandbox.run(&["stash", "--rm", "fake-base"]);
    run.assert_ok();
    run.assert_stderr_has(&["removed fake-base:2 (4 unused blobs freed)\n"]);
    let blobs: Vec<_> = fs::read_dir(sandbox.store().join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(blobs.is_empty(), "blobs left in an empty store: {blobs:?}");
    let run = sandbox.run(&["stash", "--list"]);
    run.assert_ok();
    assert_eq!(run.stdout, "");
    run.assert_stderr_has(&["no stashes in "]);

    let run = sandbox.run(&["stash", "--rm", "fake-base"]);
    run.assert_fails(1);
    run.assert_one_line_error(&format!("no stash named fake-base in {}", sandbox.store().display()));
    let run = sandbox.run(&["stash", "--rm", "fake-base:1"]);
    run.assert_fails(1);
    run.assert_one_line_error(&format!("no stash fake-base:1 in {}", sandbox.store().display()));
    run.assert_stderr_has(&["Suggestion: the store is empty"]);
}

/// Not being root is a one-line error with a suggestion before any work.
#[test]
fn not_root_is_refused_before_any_work() {
    use std::os::unix::fs::PermissionsExt;
    // A place the unprivileged user can reach: test temp dirs may be private.
    let dir = tempfile::Builder::new()
        .prefix("kiwi-stackbuild-nobody-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("kiwi-stackbuild");
    fs::copy(BIN, &bin).unwrap();
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("image")).unwrap();
    fs::write(root.join("image/config.xml"), "<image name=\"x\"/>").unwrap();
    let target = dir.path().join("target");
    let cases: [&[&str]; 2] = [
        &["stash", "--root", root.to_str().unwrap()],
        &["rebuild", "--root", "x", "--", "--target-dir", target.to_str().unwrap()],
    ];
    for args in cases {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KIWI_STACKBUILD_HOME", dir.path().join("store"))
            .env("KIWI_NG", "/bin/true")
            .env("UMOCI", "/bin/true")
            .env("SKOPEO", "/bin/true")
            .output()
            .expect("running setpriv");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran as nobody");
        assert!(
            stderr.contains("needs root") && stderr.contains("run it as root"),
            "{args:?}: {stderr}"
        );
        assert!(
            !target.exists() && !dir.path().join("store").exists(),
            "{args:?} started work"
        );
    }
}

#[test]
fn bad_target_dirs_are_refused_before_anything_runs() {
    let sandbox = Sandbox::new();
    let target = sandbox.arg("target");
    let in_store = format!("{}/builds/t", sandbox.arg("store"));
    fs::create_dir_all(sandbox.store()).unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--target-dir", ""], "--target-dir is empty"),
        (
            &["--target-dir", "--signing-key", "/k"],
            "kiwi-ng option --target-dir needs a value, not the option --signing-key",
        ),
        (
            &["--target-dir", &target, "--target-dir", "/elsewhere"],
            "--target-dir is given twice after --",
        ),
        (&["--target-dir", &in_store], "is inside the stash store"),
        (
            &["--target-dir", &format!("{}/../store/x", sandbox.arg("bin"))],
            "is inside the stash store",
        ),
    ];
    for (after, message) in cases {
        let mut argv = vec!["rebuild", "--root", "base", "--"];
        argv.extend_from_slice(after);
        let run = sandbox.run(&argv);
        run.assert_fails(1);
        run.assert_stderr_has(&[message, "Suggestion: "]);
        assert!(
            !run.stderr.contains("   1: "),
            "more than one error line:\n{}",
            run.stderr
        );
        run.assert_no_tool_ran();
        assert!(!Path::new(&target).exists(), "{after:?} created the target");
        let made: Vec<_> = fs::read_dir(sandbox.store()).unwrap().collect();
        assert!(made.is_empty(), "{after:?} changed the store: {made:?}");
    }
}

// ---------------------------------------------------------------- bad arguments, one table

/// Bad command lines: the arguments (`@ROOT@`, `@TARGET@`, `@STORE@`,
/// `@FILE@`, `@DESC@` and `@EMPTY@` stand for sandbox paths) and what the
/// error's one line must say.
#[rustfmt::skip]
const BAD: &[(&[&str], &str)] = &[
    // Stash names, tags and references.
    (&["stash", "--root", "@ROOT@", "--container-name", "Bad Name"], "invalid image name \"Bad Name\", use \"bad-name\""),
    (&["stash", "--root", "@ROOT@", "--tag", "-x"], "unexpected argument '-x' found"),
    (&["stash", "--root", "@ROOT@", "--tag", "a b"], "invalid tag \"a b\", use \"a-b\""),
    (&["stash", "--rm", "nosuch:1"], "no stash nosuch:1"),
    (&["stash", "--rm", "base:nosuch"], "no stash base:nosuch"),
    (&["stash", "--rm", "UPPER"], "invalid image name \"UPPER\", use \"upper\""),
    (&["stash", "--squash", "nosuch:1"], "no stash nosuch:1"),
    (&["stash", "--squash", "base:nosuch"], "no stash base:nosuch"),
    (&["stash", "--squash", "UPPER"], "invalid image name \"UPPER\", use \"upper\""),
    (&["stash", "--squash", "base:"], "invalid tag \"\", use \"latest\""),
    (&["rebuild", "--root", "base:", "--", "--target-dir", "@TARGET@"], "invalid tag \"\", use \"latest\""),
    (&["rebuild", "--root", "base:nosuch", "--", "--target-dir", "@TARGET@"], "no stash base:nosuch"),
    (&["rebuild", "--root", "nosuch", "--", "--target-dir", "@TARGET@"], "no stash nosuch:latest"),
    (&["rebuild", "--root", "base@sha256:zz", "--", "--target-dir", "@TARGET@"], "invalid image name \"base@sha256\""),
    (&["rebuild", "--root", "ftp://host/x", "--", "--target-dir", "@TARGET@"], "ftp:// is no transport we know"),
    (&["rebuild", "--root", "docker://", "--", "--target-dir", "@TARGET@"], "docker://: no repository after the registry host"),
    (&["rebuild", "--root", "oci:", "--", "--target-dir", "@TARGET@"], "oci: needs a directory"),
    (&["rebuild", "--root", "base:1", "--keep-root", "Bad:Tag", "--", "--target-dir", "@TARGET@"], "invalid image name \"Bad\", use \"bad\""),
    (&["push", "nosuch:1", "oci:@EMPTY@/out:1"], "no stash nosuch:1"),
    (&["push", "base:1", "nowhere"], "nowhere is a stash name, not a place to push to"),
    (&["pull", "docker://registry.example/x:1", "Bad Name"], "invalid image name \"Bad Name\""),
    (&["pull", "notareference"], "notareference names no image"),
    (&["stackbuild", "--stash", "nosuch", "--target-dir", "@TARGET@"], "no stash nosuch"),
    // Paths.
    (&["stash", "--root", "@EMPTY@/missing"], "empty/missing does not exist"),
    (&["stash", "--root", "@FILE@"], "/file is not a directory"),
    (&["stash", "--root", "@EMPTY@"], "is not a KIWI root tree"),
    (&["--stash-home", "@FILE@", "stash", "--list"], "is not a directory"),
    (&["--stash-home", "@FILE@/sub", "stash", "--list"], "/file/sub lies below a file"),
    (&["--stash-home", "@EMPTY@/../dangling", "stash", "--list"], "/dangling is a symlink to nothing"),
    (&["rebuild", "--description", "@EMPTY@/missing", "--", "--target-dir", "@TARGET@"], "missing does not exist"),
    (&["rebuild", "--description", "@EMPTY@", "--", "--target-dir", "@TARGET@"], "no KIWI description"),
    (&["merge", "--description", "@EMPTY@/missing", "--output", "@EMPTY@/out"], "missing does not exist"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@STORE@/inside"], "inside the stash store"),
    (&["--cert-dir", "@EMPTY@/missing", "pull", "docker://registry.example/x:1"], "is not a directory"),
    // Options after `--`.
    (&["rebuild", "--root", "base:1", "--", "--target-dir", ""], "--target-dir is empty"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir="], "--target-dir is empty"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "--signing-key", "k"], "not the option --signing-key"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "--bogus"], "--target-dir --bogus looks like an option, not a directory"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "-x"], "--target-dir -x looks like an option, not a directory"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--target-dir", "@TARGET@2"], "given twice"),
    (&["rebuild", "--root", "base:1", "--", "--signing-key", "k"], "no --target-dir"),
    (&["rebuild", "--root", "base:1"], "no --target-dir"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--bogus"], "has no option \"--bogus\""),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--add-package", "vim"], "has no option \"--add-package\""),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--root", "/r"], "has no option \"--root\""),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--signing-key"], "needs a value"),
    (&["rebuild", "--description", "@DESC@", "--", "--target-dir", "@TARGET@", "--clear-cache=yes"], "takes no value"),
    (&["rebuild", "--description", "@DESC@", "--", "--description", "@DESC@", "--target-dir", "@TARGET@"], "two descriptions"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--description"], "needs a value"),
    // Our own options.
    (&["rebuild", "--", "--target-dir", "@TARGET@"], "nothing to build: no --root and no --description"),
    (&["--tls-verify=maybe", "stash", "--list"], "invalid value 'maybe' for '--tls-verify"),
    (&["--compression", "lz4", "stash", "--list"], "invalid value 'lz4' for '--compression"),
    (&["--compress-format", "lz4", "stash", "--list"], "invalid value 'lz4' for '--compression"),
    (&["--compression", "zstd", "--compression-level", "20", "stash", "--list"], "compression level 20 is not a zstd level: give 1 to 19"),
    (&["--compression-level", "0", "stash", "--list"], "compression level 0 is not a gzip level: give 1 to 9"),
    (&["--jobs", "0", "stash", "--list"], "invalid value '0' for '--jobs"),
    (&["--jobs", "257", "stash", "--list"], "invalid value '257' for '--jobs"),
    (&["--creds", ":secret", "pull", "docker://registry.example/x:1"], "--creds needs a user name before the colon"),
    (&["--creds", "user", "pull", "docker://registry.example/x:1"], "has no password"),
    (&["--creds", "user:", "pull", "docker://registry.example/x:1"], "--creds user has an empty password"),
    (&["stash", "--list", "--rm", "base:1"], "'--list' cannot be used with '--rm"),
    (&["stash", "--squash", "base:1", "--rm", "base:1"], "'--squash <NAME[:TAG]>' cannot be used with '--rm"),
    (&["stash", "--tag", "t"], "required arguments were not provided:   <--root <DIR>|--list"),
    (&["completions", "nosh"], "invalid value 'nosh' for '<SHELL>'"),
];

/// Bad command lines whose error says what was most likely meant: the
/// arguments (as in [`BAD`], and `@LAYOUT@` for an OCI layout directory),
/// the error's one line, and the suggestion it must print.
#[rustfmt::skip]
const SUGGESTED: &[(&[&str], &str, &str)] = &[
    // A misspelled stash name: the closest ref of the store.
    (&["stash", "--rm", "basse:1"], "no stash basse:1", "Suggestion: did you mean base:1?"),
    (&["stash", "--squash", "basse:1"], "no stash basse:1", "Suggestion: did you mean base:1?"),
    (&["rebuild", "--root", "basse:1", "--", "--target-dir", "@TARGET@"], "no stash basse:1", "Suggestion: did you mean base:1?"),
    (&["stackbuild", "--stash", "bas:1", "--target-dir", "@TARGET@"], "no stash bas:1", "Suggestion: did you mean base:1?"),
    (&["push", "bse:1", "oci:@EMPTY@/out:1"], "no stash bse:1", "Suggestion: did you mean base:1?"),
    // A reference without its transport: the transport that fits.
    (&["rebuild", "--root", "127.0.0.1:55075/kiwi/debian-base", "--", "--target-dir", "@TARGET@"],
     "did you mean docker://127.0.0.1:55075/kiwi/debian-base?", "try '--help'"),
    (&["rebuild", "--root", "registry.example.org/kiwi/base", "--", "--target-dir", "@TARGET@"],
     "no stash registry.example.org/kiwi/base:latest", "Suggestion: did you mean docker://registry.example.org/kiwi/base?"),
    (&["push", "base:1", "/srv/out/x.tar"], "did you mean oci-archive:/srv/out/x.tar?", "try '--help'"),
    (&["push", "base:1", "x.tar"], "x.tar is a stash name, not a place to push to", "Suggestion: did you mean oci-archive:x.tar?"),
    (&["rebuild", "--root", "@LAYOUT@", "--", "--target-dir", "@TARGET@"], "did you mean oci:@LAYOUT@?", "try '--help'"),
    (&["pull", "@FILE@"], "did you mean oci-archive:@FILE@?", "try '--help'"),
    // kiwi-ng options after `--`, against the command that will run.
    (&["rebuild", "--description", "@DESC@", "--", "--target-dir", "@TARGET@", "--add-pakage", "vim"],
     "kiwi-ng system build has no option \"--add-pakage\"", "Suggestion: did you mean --add-package? (see kiwi-ng system build --help)"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--signing-kye", "k"],
     "kiwi-ng system create has no option \"--signing-kye\"", "Suggestion: did you mean --signing-key? (see kiwi-ng system create --help)"),
    (&["rebuild", "--root", "base:1", "--", "--target-dir", "@TARGET@", "--bogus"],
     "kiwi-ng system create has no option \"--bogus\"", "Suggestion: see kiwi-ng system create --help"),
    (&["stackbuild", "--stash", "base:1", "--target-dir", "@TARGET@", "kiwi", "--bogus"],
     "kiwi-ng system create has no option \"--bogus\"", "Suggestion: see kiwi-ng system create --help"),
    // Subcommands and our own options (clap's suggestions).
    (&["rebuid", "--root", "base:1"], "unrecognized subcommand 'rebuid'", "tip: a similar subcommand exists: 'rebuild'"),
    (&["stash", "--lst"], "unexpected argument '--lst' found", "tip: a similar argument exists: '--list'"),
    // --target-dir before `--`: accepted, so given on both sides it is one too many.
    (&["rebuild", "--root", "base:1", "--target-dir", "@TARGET@", "--", "--target-dir", "@TARGET@"],
     "--target-dir is given before and after --", "Suggestion: give it once: --target-dir"),
    (&["stackbuild", "--stash", "base:1", "--target-dir", "@TARGET@", "--", "--target-dir=@TARGET@"],
     "--target-dir is given before and after --", "Suggestion: give it once: --target-dir"),
];

#[test]
fn bad_arguments_are_one_line_errors_that_change_nothing() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "base");
    sandbox.stash(&root, &["--tag", "1"]);
    fs::create_dir(sandbox.path("empty")).unwrap();
    fs::write(sandbox.path("file"), "a file\n").unwrap();
    std::os::unix::fs::symlink("nowhere", sandbox.path("dangling")).unwrap();
    let desc = sandbox.path("desc");
    fs::create_dir(&desc).unwrap();
    fs::write(desc.join("config.xml"), CONFIG_XML.replace("@NAME@", "desc")).unwrap();
    let layout = sandbox.path("layout");
    fs::create_dir(&layout).unwrap();
    fs::write(layout.join("oci-layout"), "{\"imageLayoutVersion\": \"1.0.0\"}").unwrap();
    let target = sandbox.path("target");
    let snapshot = || {
        (
            common::tree::snapshot(&sandbox.store()),
            common::tree::snapshot(&sandbox.path("empty")),
        )
    };
    let before = snapshot();
    let fill = |arg: &str| {
        arg.replace("@ROOT@", &sandbox.arg("root"))
            .replace("@TARGET@", target.to_str().unwrap())
            .replace("@STORE@", &sandbox.arg("store"))
            .replace("@FILE@", &sandbox.arg("file"))
            .replace("@DESC@", desc.to_str().unwrap())
            .replace("@EMPTY@", &sandbox.arg("empty"))
            .replace("@LAYOUT@", &sandbox.arg("layout"))
    };
    let mut wrong = Vec::new();
    let rows = BAD.iter().map(|&(bad, says)| (bad, says, None));
    let rows = rows.chain(SUGGESTED.iter().map(|&(bad, says, hint)| (bad, says, Some(hint))));
    for (bad, says, hint) in rows {
        let args: Vec<String> = bad.iter().map(|a| fill(a)).collect();
        let says = fill(says);
        let run = sandbox.run(&args);
        let lines: Vec<&str> = run.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        // color-eyre: "Error:", "   0: MESSAGE", "Suggestion: ..."; clap:
        // "error: MESSAGE" (what is missing may follow on indented lines), a
        // usage or tip, "For more information, try '--help'."
        let (message, suggested) = if lines.first().is_some_and(|l| l.trim_end() == "Error:") {
            let message = lines.get(1).and_then(|l| l.trim_start().strip_prefix("0: "));
            let one = !run.stderr.contains("   1: ");
            (
                message.filter(|_| one).map(str::to_string),
                run.stderr.contains("Suggestion: "),
            )
        } else {
            let message = lines.first().and_then(|l| l.strip_prefix("error: ")).map(|first| {
                let more = lines[1..].iter().take_while(|l| l.starts_with("  "));
                std::iter::once(first)
                    .chain(more.copied())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            (
                message,
                run.stderr.contains("try '--help'") || run.stderr.contains("tip: "),
            )
        };
        let ok = !run.status.success()
            && run.status.code().is_some()
            && message.as_deref().is_some_and(|m| m.contains(&says))
            && suggested
            && hint.is_none_or(|h| run.stderr.contains(&fill(h)));
        if !ok {
            wrong.push(format!("{args:?}: exit {}\n{}", run.status, run.stderr));
        }
        assert!(!target.exists(), "{args:?} created the target");
        assert_eq!(
            snapshot(),
            before,
            "{args:?} changed the store or a directory it was given"
        );
    }
    assert!(BAD.len() >= 40);
    assert!(
        wrong.is_empty(),
        "{} of {} not as expected:\n\n{}",
        wrong.len(),
        BAD.len() + SUGGESTED.len(),
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------- fetched images

/// A stash `fake-base:latest` made in a store of its own, laid out as
/// `$FAKE_SKOPEO_IMAGE` wants it: its blobs, its manifest, and an index
/// naming it `@NAME@`. Returns the dir and the manifest's digest.
fn fake_registry_image(sandbox: &Sandbox) -> (PathBuf, String) {
    fake_registry_image_of(sandbox, "remote")
}

/// [`fake_registry_image`] of a tree of its own, `NAME-root`, in `NAME-image`.
fn fake_registry_image_of(sandbox: &Sandbox, name: &str) -> (PathBuf, String) {
    let root = sandbox.path(&format!("{name}-root"));
    kiwi_tree(&root, "fake-base");
    fs::write(root.join("etc/image-name"), name).unwrap();
    let home = sandbox.path(&format!("{name}-store"));
    let run = sandbox.run_with(&["stash", "--root", root.to_str().unwrap()], |c| {
        c.env("KIWI_STACKBUILD_HOME", &home);
    });
    run.assert_ok();
    let index = read_json(&home.join("index.json"));
    let mut desc = index["manifests"][0].clone();
    desc["annotations"][REF_NAME] = "@NAME@".into();
    let digest = desc["digest"].as_str().unwrap().to_string();
    let image = sandbox.path(&format!("{name}-image"));
    fs::create_dir(&image).unwrap();
    let copied = Command::new("cp")
        .arg("-a")
        .arg(home.join("blobs"))
        .arg(&image)
        .status();
    assert!(copied.unwrap().success());
    let hex = digest.strip_prefix("sha256:").unwrap();
    fs::copy(home.join("blobs/sha256").join(hex), image.join("manifest.json")).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    fs::write(image.join("index.json.in"), index.to_string()).unwrap();
    (image, digest)
}

/// A rebuild from a registry keeps the image in the store: the first copies
/// every blob, by the digest it looked at; the second asks for the manifest
/// only and copies nothing; `stash --list` names it and its source.
#[test]
fn a_second_rebuild_from_a_registry_copies_no_blob() {
    let sandbox = Sandbox::new();
    let (image, digest) = fake_registry_image(&sandbox);
    let remote = "docker://registry.example/kiwi/base:1";
    let rebuild = |target: &str| {
        let target = sandbox.arg(target);
        let run = sandbox.run_with(&["rebuild", "--root", remote, "--", "--target-dir", &target], |c| {
            c.env("FAKE_SKOPEO_IMAGE", &image)
                .env("FAKE_UMOCI_SEED", sandbox.path("remote-root"));
        });
        run.assert_ok();
        let copied = fs::read_to_string(run.calls.join("skopeo-copied")).unwrap_or_default();
        let copied: Vec<String> = copied.lines().map(str::to_string).collect();
        (run, copied)
    };
    let (first, copied) = rebuild("t1");
    let skopeo = first.calls("skopeo");
    assert_eq!(skopeo.len(), 2, "{skopeo:?}");
    assert_eq!(skopeo[0], strings(&["inspect", "--raw", remote]));
    assert_eq!(skopeo[1][0], "copy");
    let pinned = format!("docker://registry.example/kiwi/base@{digest}");
    assert_eq!(skopeo[1][skopeo[1].len() - 2], pinned, "{skopeo:?}");
    let all = fs::read_dir(image.join("blobs/sha256")).unwrap().count();
    assert_eq!(copied.len(), all, "an empty store needs every blob: {copied:?}");

    let (second, copied) = rebuild("t2");
    assert_eq!(second.calls("skopeo"), vec![strings(&["inspect", "--raw", remote])]);
    assert!(copied.is_empty(), "the second rebuild copied {copied:?}");
    assert!(second.stderr.contains("nothing to fetch"), "{}", second.stderr);
    // Both unpacked the image's layers.
    let key = "fetched/registry-example/kiwi/base:1";
    for run in [&first, &second] {
        let layout = run.calls.join("umoci-layout");
        let index = read_json(&layout.join("index.json"));
        let unpacked = read_blob(&layout, index["manifests"][0]["digest"].as_str().unwrap());
        assert_eq!(unpacked["layers"], sandbox.manifest_of(key)["layers"]);
    }

    let list = sandbox.run(&["stash", "--list", "--json"]);
    list.assert_ok();
    let entries: Vec<Value> = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["reference"], key);
    assert_eq!(entries[0]["digest"], digest.as_str());
    assert_eq!(entries[0]["fetched_from"], remote);
    assert!(
        entries[0]["last_used"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{entries:?}"
    );
    let table = sandbox.run(&["stash", "--list"]);
    assert!(
        table.stdout.contains(&format!("fetched from {remote}")),
        "{}",
        table.stdout
    );
}

/// A fetch never replaces a stash of the user's that has the name a
/// fetched image would get.
#[test]
fn a_fetch_does_not_replace_a_stash_of_that_name() {
    let sandbox = Sandbox::new();
    let (image, _) = fake_registry_image(&sandbox);
    let root = sandbox.path("mine");
    kiwi_tree(&root, "fake-base");
    let key = sandbox.stash(
        &root,
        &["--container-name", "fetched/registry-example/kiwi/base", "--tag", "1"],
    );
    let before = sandbox.index();
    let target = sandbox.arg("t");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--root",
            "docker://registry.example/kiwi/base:1",
            "--",
            "--target-dir",
            &target,
        ],
        |c| {
            c.env("FAKE_SKOPEO_IMAGE", &image)
                .env("FAKE_UMOCI_SEED", sandbox.path("remote-root"));
        },
    );
    run.assert_fails(1);
    run.assert_stderr_has(&[&format!("the store has a stash {key} of its own")]);
    assert_eq!(sandbox.index(), before, "the store changed");
}

/// `stash --prune --older-than` drops the fetched images whose last use is
/// older than that, and the blobs only they used; stashes of the user's
/// stay however old; `--rm` removes a fetched image by its name.
#[test]
fn prune_drops_only_fetched_images_unused_for_that_long() {
    let sandbox = Sandbox::new();
    let (image, _) = fake_registry_image(&sandbox);
    let fetch = |remote: &str, target: &str| {
        let target = sandbox.arg(target);
        let run = sandbox.run_with(&["rebuild", "--root", remote, "--", "--target-dir", &target], |c| {
            c.env("FAKE_SKOPEO_IMAGE", &image)
                .env("FAKE_UMOCI_SEED", sandbox.path("remote-root"));
        });
        run.assert_ok();
        run
    };
    fetch("docker://registry.example/kiwi/base:1", "t1");
    // The same image from elsewhere: the store has it, so it is only named.
    let again = fetch("docker://mirror.example/base:1", "t2");
    assert_eq!(again.calls("skopeo").len(), 1, "{:?}", again.calls("skopeo"));
    let root = sandbox.path("mine");
    kiwi_tree(&root, "mine");
    let mine = sandbox.stash(&root, &[]);
    let (old, recent) = ("fetched/registry-example/kiwi/base:1", "fetched/mirror-example/base:1");

    // Set the old one's last use, and the user's stash's creation, 40 days back.
    let mut index = sandbox.index();
    for d in index["manifests"].as_array_mut().unwrap() {
        let name = d["annotations"][REF_NAME].as_str().unwrap().to_string();
        if name == old || name == mine {
            d["annotations"]["io.kiwi-stackbuild.last-used"] = "2000-01-01T00:00:00Z".into();
            d["annotations"]["io.kiwi-stackbuild.fetched-at"] = "2000-01-01T00:00:00Z".into();
        }
    }
    fs::write(sandbox.store().join("index.json"), index.to_string()).unwrap();
    let refs = |s: &Sandbox| -> Vec<String> {
        let index = s.index();
        let mut names: Vec<String> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["annotations"][REF_NAME].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    let blobs = || fs::read_dir(sandbox.store().join("blobs/sha256")).unwrap().count();
    let blobs_before = blobs();

    let run = sandbox.run(&["stash", "--prune", "--older-than", "30d"]);
    run.assert_ok();
    assert_eq!(run.stdout.trim(), old, "{}", run.stderr);
    let mut want = vec![mine.clone(), recent.to_string()];
    want.sort();
    assert_eq!(refs(&sandbox), want);
    assert_eq!(blobs(), blobs_before, "a blob the recent fetch needs went");

    // Nothing is old enough now; with 0s every fetched image is.
    let run = sandbox.run(&["stash", "--prune", "--older-than", "30d"]);
    run.assert_ok();
    assert!(
        run.stdout.is_empty() && run.stderr.contains("nothing removed"),
        "{}",
        run.stderr
    );
    let run = sandbox.run(&["stash", "--rm", recent]);
    run.assert_ok();
    assert_eq!(refs(&sandbox), vec![mine.clone()]);
    assert!(blobs() < blobs_before, "the fetched image's blobs stayed");
    let run = sandbox.run(&["stash", "--prune", "--older-than", "0s"]);
    run.assert_ok();
    assert_eq!(refs(&sandbox), vec![mine], "prune removed a stash of the user's");

    let run = sandbox.run(&["stash", "--prune", "--older-than", "30"]);
    run.assert_fails(2);
    run.assert_stderr_has(&["invalid duration \"30\""]);
    let run = sandbox.run(&["stash", "--prune"]);
    run.assert_fails(2);
}

/// A blob whose content is not what its digest says never enters the
/// store: the fetch fails naming it, and no ref or blob is left.
#[test]
fn a_corrupt_blob_from_a_registry_is_not_kept() {
    let sandbox = Sandbox::new();
    let (image, digest) = fake_registry_image(&sandbox);
    let manifest = read_json(&image.join("manifest.json"));
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_string();
    let path = image.join("blobs/sha256").join(layer.strip_prefix("sha256:").unwrap());
    let mut bytes = fs::read(&path).unwrap();
    bytes.push(0);
    fs::write(&path, bytes).unwrap();
    let target = sandbox.arg("t");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--root",
            "docker://registry.example/kiwi/base:1",
            "--",
            "--target-dir",
            &target,
        ],
        |c| {
            c.env("FAKE_SKOPEO_IMAGE", &image);
        },
    );
    run.assert_fails(1);
    run.assert_stderr_has(&[&format!(
        "the blob {layer} that docker://registry.example/kiwi/base:1 gave is corrupt"
    )]);
    assert_eq!(
        sandbox.index()["manifests"],
        serde_json::json!([]),
        "{digest} got a ref"
    );
    let left: Vec<_> = fs::read_dir(sandbox.store().join("blobs/sha256")).unwrap().collect();
    assert!(left.is_empty(), "blobs left: {left:?}");
    let temps: Vec<String> = fs::read_dir(sandbox.store())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(temps.is_empty(), "left in the store: {temps:?}");
}

/// When the tag names another image at the source, the next rebuild fetches
/// that one under the same name and frees the blobs only the old one used.
#[test]
fn a_tag_that_moved_is_fetched_again_and_the_old_image_freed() {
    let sandbox = Sandbox::new();
    let (old, _) = fake_registry_image_of(&sandbox, "old");
    let (new, new_digest) = fake_registry_image_of(&sandbox, "new");
    let remote = "docker://registry.example/kiwi/base:1";
    let rebuild = |image: &Path, target: &str| {
        let target = sandbox.arg(target);
        let run = sandbox.run_with(&["rebuild", "--root", remote, "--", "--target-dir", &target], |c| {
            c.env("FAKE_SKOPEO_IMAGE", image)
                .env("FAKE_UMOCI_SEED", sandbox.path("old-root"));
        });
        run.assert_ok();
        run
    };
    rebuild(&old, "t1");
    let names = |dir: &Path| -> std::collections::BTreeSet<String> {
        fs::read_dir(dir.join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let run = rebuild(&new, "t2");
    assert_eq!(run.calls("skopeo").len(), 2, "the moved tag was not fetched again");
    let key = "fetched/registry-example/kiwi/base:1";
    let index = sandbox.index();
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["annotations"][REF_NAME], key);
    assert_eq!(entries[0]["digest"], new_digest.as_str());
    assert_eq!(
        names(&sandbox.store()),
        names(&new),
        "the old image's blobs were not freed"
    );
}

/// A push sends the layers as stored unless a compression is asked for;
/// then skopeo copies a layout we recompressed, every digest kept, and is
/// never asked to compress itself. `--compress-format` is the same option.
#[test]
fn a_push_asks_skopeo_to_keep_digests_and_never_to_compress() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "base");
    sandbox.stash(&root, &["--tag", "1"]);
    let dest = format!("oci:{}:base", sandbox.path("out").display());
    let store_source = format!("oci:{}:base:1", sandbox.store().display());
    for (options, preserved, from_store) in [
        (&[][..], false, true),
        (&["--compression", "gzip"][..], true, true),
        (&["--compression", "zstd"][..], true, false),
        (&["--compress-format", "zstd", "--jobs", "1"][..], true, false),
    ] {
        let mut args = options.to_vec();
        args.extend(["push", "base:1", &dest]);
        let run = sandbox.run(&args);
        run.assert_fails(1);
        let calls = run.calls("skopeo");
        assert_eq!(calls.len(), 1, "{options:?}: {calls:?}");
        let argv = &calls[0];
        assert!(!argv.iter().any(|a| a.contains("compress")), "{options:?}: {argv:?}");
        assert_eq!(
            argv.iter().any(|a| a == "--preserve-digests"),
            preserved,
            "{options:?}: {argv:?}"
        );
        let source = &argv[argv.len() - 2];
        assert_eq!(argv.last().unwrap(), &dest);
        // Pinned or not, a source in the store ends with the stash's name.
        let recompressed = source.contains("kiwi-stackbuild-push-");
        assert_eq!(
            !recompressed, from_store,
            "{options:?}: {source} (store {store_source})"
        );
        assert!(source.ends_with(":base:1"), "{options:?}: {source}");
    }
}

/// The hash `inputs --json` prints for `args`.
fn inputs_json(sandbox: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["inputs", "--json"];
    all.extend(args);
    let run = sandbox.run(&all);
    run.assert_ok();
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn inputs_of_a_kept_root_are_stored_with_it_and_compared() {
    let sandbox = Sandbox::new();
    let (description, built) = sandbox.description_and_built_root();
    fs::write(description.join("config.sh"), "#!/bin/sh\ntrue\n").unwrap();
    fs::create_dir_all(description.join("root/etc")).unwrap();
    fs::write(description.join("root/etc/motd"), "hello\n").unwrap();
    let desc = description.to_str().unwrap();
    let before = inputs_json(&sandbox, &["--description", desc, "--", "--add-package", "vim"]);
    let hash = before["hash"].as_str().unwrap().to_string();
    assert!(hash.starts_with("sha256:"), "{before}");
    assert_eq!(before["parts"]["kiwi-ng"], "9.9.9");
    assert_eq!(before["parts"]["args"], serde_json::json!(["--add-package=vim"]));
    assert_eq!(before["parts"]["config.sh"]["type"], "file");
    assert_eq!(before["reusable"], true, "{before}");
    // The table names the same hash and parts.
    let table = sandbox.run(&["inputs", "--description", desc, "--", "--add-package", "vim"]);
    table.assert_ok();
    assert!(
        table.stdout.starts_with(&format!("inputs {hash}\n")),
        "{}",
        table.stdout
    );
    assert!(table.stdout.contains("\nroot/etc/motd "), "{}", table.stdout);

    let target = sandbox.arg("target");
    let run = sandbox.run_with(
        &[
            "rebuild",
            "--description",
            desc,
            "--keep-root",
            "kept",
            "--",
            "--target-dir",
            &target,
            "--add-package",
            "vim",
        ],
        |c| {
            c.env("FAKE_KIWI_ROOT", &built);
        },
    );
    run.assert_ok();
    let manifest = sandbox.manifest_of("kept:latest");
    let config = read_blob(&sandbox.store(), manifest["config"]["digest"].as_str().unwrap());
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["io.kiwi-stackbuild.inputs"], hash.as_str(), "{labels}");
    let record: Value = serde_json::from_str(labels["io.kiwi-stackbuild.inputs.record"].as_str().unwrap()).unwrap();
    assert_eq!(record["parts"], before["parts"]);

    // The same inputs (the target does not count): status 0.
    let same = sandbox.run(&[
        "inputs",
        "--description",
        desc,
        "--against",
        "kept",
        "--",
        "--target-dir",
        "/elsewhere",
        "--add-package",
        "vim",
    ]);
    same.assert_ok();
    assert_eq!(same.stdout, format!("same inputs as kept: {hash}\n"));

    // Each change named, status 1.
    fs::write(description.join("config.sh"), "#!/bin/sh\nfalse\n").unwrap();
    fs::write(description.join("root/etc/issue"), "x\n").unwrap();
    let changed = sandbox.run(&[
        "inputs",
        "--profile",
        "big",
        "--description",
        desc,
        "--against",
        "kept:1.2.3",
    ]);
    changed.assert_fails(1);
    assert_eq!(
        changed.stdout,
        "args [\"--add-package=vim\"] -> []\nconfig.sh: content, size changed\nprofiles [] -> [\"big\"]\nroot/etc/issue added\n"
    );
    changed.assert_stderr_has(&["the inputs differ from those of kept:1.2.3 in 4 parts"]);

    // A stash without a record is an error that says so.
    let plain = sandbox.stash(&built, &["--container-name", "plain"]);
    let none = sandbox.run(&["inputs", "--description", desc, "--against", &plain]);
    none.assert_fails(1);
    none.assert_stderr_has(&["carries no input record (label io.kiwi-stackbuild.inputs.record)"]);
}

/// W3 and W4 store the record of what they built on: `inputs` with the
/// same description (merged again for W4) and base says the same, and a
/// new stash of the base is named.
#[test]
fn inputs_of_builds_on_a_stash_name_their_base() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    fs::write(root.join("image/config.sh"), "#!/bin/sh\n").unwrap();
    sandbox.stash(&root, &[]);
    let derived = sandbox.derived_from_fake_base();
    fs::create_dir_all(derived.join("root/etc")).unwrap();
    fs::write(derived.join("root/etc/motd"), "child\n").unwrap();
    let (description, _) = sandbox.description_and_built_root();
    let (d4, d3) = (derived.to_str().unwrap(), description.to_str().unwrap());
    let seeded = |c: &mut Command| {
        c.env("FAKE_UMOCI_SEED", &root);
    };
    let (t4, t3) = (sandbox.arg("t4"), sandbox.arg("t3"));
    let w4 = [
        "rebuild",
        "--description",
        d4,
        "--keep-root",
        "w4:1",
        "--",
        "--target-dir",
        &t4,
    ];
    sandbox.run_with(&w4, seeded).assert_ok();
    let w3 = [
        "rebuild",
        "--root",
        "fake-base",
        "--keep-root",
        "w3:1",
        "--",
        "--description",
        d3,
        "--target-dir",
        &t3,
    ];
    sandbox.run_with(&w3, seeded).assert_ok();

    let record = inputs_json(&sandbox, &["--description", d4]);
    // The merge: the base's config.sh and the derived root/ overlay.
    assert_eq!(record["parts"]["config.sh"]["type"], "file", "{record}");
    assert_eq!(record["parts"]["root/etc/motd"]["type"], "file", "{record}");
    let base = sandbox.manifest_digest("fake-base:latest");
    assert_eq!(
        record["parts"]["base images"],
        serde_json::json!([format!("fake-base:latest@{base}")])
    );
    for (args, kept) in [
        (vec!["--description", d4], "w4:1"),
        (vec!["--root", "fake-base", "--description", d3], "w3:1"),
    ] {
        let mut all = vec!["inputs"];
        all.extend(&args);
        all.extend(["--against", kept]);
        let same = sandbox.run(&all);
        same.assert_ok();
        assert!(
            same.stdout.starts_with(&format!("same inputs as {kept}: sha256:")),
            "{}",
            same.stdout
        );
    }

    // A new stash of the base: both builds' base changed.
    fs::write(root.join("etc/motd"), "new\n").unwrap();
    sandbox.stash(&root, &[]);
    let new_base = sandbox.manifest_digest("fake-base:latest");
    assert_ne!(new_base, base);
    let changed = sandbox.run(&["inputs", "--description", d4, "--against", "w4:1"]);
    changed.assert_fails(1);
    assert_eq!(
        changed.stdout,
        format!("base images [\"fake-base:latest@{base}\"] -> [\"fake-base:latest@{new_base}\"]\n")
    );
    // A registry image is not resolved: the record is not reusable.
    let by_ref = inputs_json(
        &sandbox,
        &["--root", "docker://example.invalid/base:1", "--description", d3],
    );
    assert_eq!(by_ref["reusable"], false);
    assert_eq!(
        by_ref["not reusable"],
        serde_json::json!(["base image docker://example.invalid/base:1: by reference, not resolved"])
    );
}

/// `--reuse`: the first build runs and keeps its record; the same inputs
/// again run `system create` on the kept root (no `system build`, none of
/// the options that prepare a root) and tag it as the build would have;
/// a changed config.sh builds again and says what changed.
#[test]
fn reuse_skips_prepare_only_while_the_inputs_are_unchanged() {
    let sandbox = Sandbox::new();
    let (description, built) = sandbox.description_and_built_root();
    fs::write(description.join("config.sh"), "#!/bin/sh\ntrue\n").unwrap();
    let desc = description.to_str().unwrap();
    let build_with = |target: &str, globals: &[&str], after: &[&str]| {
        let target = sandbox.arg(target);
        let mut args = globals.to_vec();
        args.extend([
            "rebuild",
            "--description",
            desc,
            "--keep-root",
            "kept",
            "--reuse",
            "--",
            "--target-dir",
            &target,
            "--add-package",
            "vim",
        ]);
        args.extend(after);
        sandbox.run_with(&args, |c| {
            c.env("FAKE_KIWI_ROOT", &built).env("FAKE_UMOCI_SEED", &built);
        })
    };
    let build = |target: &str| build_with(target, &[], &[]);
    // The word after `system` of each kiwi-ng call.
    let verbs = |run: &Run| -> Vec<String> {
        let calls = run.calls("kiwi-ng");
        let after_system = |c: &Vec<String>| c.iter().skip_while(|a| *a != "system").nth(1).cloned();
        calls.iter().filter_map(after_system).collect()
    };

    let first = build("t1");
    first.assert_ok();
    first.assert_stderr_has(&["--reuse: there is no kept:1.2.3 yet: building"]);
    assert_eq!(verbs(&first), ["build"]);
    let kept = sandbox.manifest_digest("kept:1.2.3");

    let second = build("t2");
    second.assert_ok();
    second.assert_stderr_has(&["inputs unchanged since kept:1.2.3, built ", ": skipping prepare"]);
    let t2 = sandbox.arg("t2");
    let root2 = format!("{t2}/build/image-root");
    assert_eq!(
        second.calls("kiwi-ng"),
        vec![strings(&["system", "create", "--root", &root2, "--target-dir", &t2])],
        "{}",
        second.stderr
    );
    assert_eq!(second.stdout, "kept:1.2.3\nkept:latest\n");
    assert_eq!(
        sandbox.manifest_digest("kept:1.2.3"),
        kept,
        "a reused build stored again"
    );
    assert_eq!(sandbox.manifest_digest("kept:latest"), kept);

    fs::write(description.join("config.sh"), "#!/bin/sh\nfalse\n").unwrap();
    let third = build("t3");
    third.assert_ok();
    third.assert_stderr_has(&[
        "--reuse: the inputs changed since kept:1.2.3 (config.sh: content, size changed): building",
    ]);
    assert_eq!(verbs(&third), ["build"]);
    // Each other change builds in full too, and is named.
    fs::create_dir_all(description.join("root/etc")).unwrap();
    fs::write(description.join("root/etc/motd"), "hello\n").unwrap();
    let changes: [(&[&str], &[&str], &str); 3] = [
        (&[], &[], "(root added; root/etc added; root/etc/motd added)"),
        (
            &[],
            &["--add-package", "xz"],
            "(args [\"--add-package=vim\"] -> [\"--add-package=vim\",\"--add-package=xz\"])",
        ),
        (
            &["--profile", "big"],
            &["--add-package", "xz"],
            "(profiles [] -> [\"big\"])",
        ),
    ];
    for (n, (globals, after, named)) in changes.into_iter().enumerate() {
        let run = build_with(&format!("change-{n}"), globals, after);
        run.assert_ok();
        run.assert_stderr_has(&[&format!(
            "--reuse: the inputs changed since kept:1.2.3 {named}: building"
        )]);
        assert_eq!(verbs(&run), ["build"], "{named}");
    }

    // --reuse compares with what --keep-root names: without it, nothing to compare.
    let alone = sandbox.run(&["rebuild", "--description", desc, "--reuse", "--", "--target-dir", "/t"]);
    alone.assert_fails(2);
    alone.assert_stderr_has(&["--keep-root"]);
}

/// `--reuse` on builds over stashes: W3 on a stack of two and W4 on its
/// base reuse what they kept while their bases stay, and build again once
/// a base is stashed anew, saying which base changed.
#[test]
fn reuse_of_builds_on_stashes_follows_their_bases() {
    let sandbox = Sandbox::new();
    let root = sandbox.path("root");
    kiwi_tree(&root, "fake-base");
    sandbox.stash(&root, &[]);
    let top = sandbox.path("top");
    kiwi_tree(&top, "fake-top");
    sandbox.stash(&top, &[]);
    let derived = sandbox.derived_from_fake_base();
    let (description, _) = sandbox.description_and_built_root();
    let (d4, d3) = (
        derived.to_str().unwrap().to_string(),
        description.to_str().unwrap().to_string(),
    );
    let build = |target: &str, w4: bool| {
        let target = sandbox.arg(target);
        let mut args: Vec<&str> = vec!["rebuild"];
        if w4 {
            args.extend(["--description", &d4, "--keep-root", "w4:1"]);
        } else {
            args.extend(["--root", "fake-base", "--root", "fake-top", "--keep-root", "w3:1"]);
        }
        args.extend(["--reuse", "--", "--target-dir", &target]);
        if !w4 {
            args.extend(["--description", &d3]);
        }
        let run = sandbox.run_with(&args, |c| {
            c.env("FAKE_UMOCI_SEED", &root);
        });
        run.assert_ok();
        let verbs: Vec<String> = run.calls("kiwi-ng").iter().map(|c| c[1].clone()).collect();
        (run, verbs)
    };
    for (w4, kept) in [(false, "w3:1"), (true, "w4:1")] {
        let (_, verbs) = build(&format!("{kept}-a"), w4);
        assert_eq!(verbs, ["build"], "{kept}");
        let (run, verbs) = build(&format!("{kept}-b"), w4);
        assert_eq!(verbs, ["create"], "{kept}: {}", run.stderr);
        run.assert_stderr_has(&[&format!("inputs unchanged since {kept}, built ")]);
    }
    // A new stash of the base: both build again, and say why.
    fs::write(root.join("etc/motd"), "new\n").unwrap();
    sandbox.stash(&root, &[]);
    for (w4, kept) in [(false, "w3:1"), (true, "w4:1")] {
        let (run, verbs) = build(&format!("{kept}-c"), w4);
        assert_eq!(verbs, ["build"], "{kept}: {}", run.stderr);
        run.assert_stderr_has(&[&format!("--reuse: the inputs changed since {kept} (base images ")]);
    }
}
