//! kiwi-ng: global options, the options after `--` checked against kiwi-ng's
//! own list, and the argv of `system create` and `system build`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{bail, eyre, Result, WrapErr};
use color_eyre::Section;

use super::{run, Output, Tool};

/// The kiwi version the built-in option lists were taken from.
const BUILTIN_FROM: &str = "kiwi 11.1";

/// Options of `kiwi-ng system build` in kiwi 11.1, and whether each takes a
/// value: used only when the installed kiwi-ng's own list cannot be read.
const BUILD_OPTIONS: &[(&str, bool)] = &[
    ("--description", true),
    ("--target-dir", true),
    ("--allow-existing-root", false),
    ("--clear-cache", false),
    ("--ignore-repos", false),
    ("--ignore-repos-used-for-build", false),
    ("--set-repo", true),
    ("--set-repo-credentials", true),
    ("--add-repo", true),
    ("--add-repo-credentials", true),
    ("--add-package", true),
    ("--add-bootstrap-package", true),
    ("--delete-package", true),
    ("--set-container-derived-from", true),
    ("--set-container-tag", true),
    ("--add-container-label", true),
    ("--set-type-attr", true),
    ("--set-release-version", true),
    ("--signing-key", true),
    ("--ca-cert", true),
    ("--ca-target-distribution", true),
];

/// Options of `kiwi-ng system create` in kiwi 11.1 (`--root` is ours to set).
const CREATE_OPTIONS: &[(&str, bool)] = &[("--target-dir", true), ("--signing-key", true)];

/// The options of one kiwi-ng command, and whether each takes a value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Options {
    /// `system build` or `system create`.
    pub command: String,
    /// Where the list comes from, for messages: `kiwi-ng 11.1.6`, or
    /// `kiwi 11.1, built in`.
    pub source: String,
    /// Option names with their leading `--`, and whether each takes a value.
    pub options: Vec<(String, bool)>,
}

impl Options {
    /// The options of `system build` (when `build`) or `system create`: the
    /// installed kiwi-ng's own, read from its `--help` once per kiwi-ng
    /// version and cached; the built-in list of kiwi 11.1 when that fails.
    pub fn of(build: bool) -> Options {
        match Options::installed(build) {
            Ok(options) => options,
            Err(e) => {
                log::debug!("checking kiwi-ng options against the built-in list of {BUILTIN_FROM}: {e:#}");
                Options::builtin(build)
            }
        }
    }

    /// The built-in list, taken from kiwi 11.1.
    pub fn builtin(build: bool) -> Options {
        let table = if build { BUILD_OPTIONS } else { CREATE_OPTIONS };
        Options {
            command: command_name(build).into(),
            source: format!("{BUILTIN_FROM}, built in"),
            options: table.iter().map(|&(n, v)| (n.to_string(), v)).collect(),
        }
    }

    /// What the installed kiwi-ng's `--help` lists, through the cache.
    fn installed(build: bool) -> Result<Options> {
        let program = std::fs::canonicalize(Tool::KiwiNg.locate()?)?;
        let version = version()?;
        let cache = cache_file(&program, &version, build);
        if let Some(options) = cache.as_deref().and_then(read_cached) {
            return Ok(options);
        }
        let options = Options::read_installed(build, &version)?;
        if let Some(path) = cache {
            if let Err(e) = write_cached(&path, &options) {
                log::debug!("not caching kiwi-ng's options in {}: {e:#}", path.display());
            }
        }
        Ok(options)
    }

    /// What the installed kiwi-ng (of `version`) lists in its `--help`,
    /// read now.
    pub fn read_installed(build: bool, version: &str) -> Result<Options> {
        let command = command_name(build);
        let mut args: Vec<OsString> = command.split(' ').map(OsString::from).collect();
        args.push("--help".into());
        // kiwi-ng 11 formats its help to the terminal width: wide enough
        // that no option name is cut short.
        let out = super::run_with_env(
            Tool::KiwiNg,
            &args,
            Output::Capture,
            &[("COLUMNS", "300"), ("NO_COLOR", "1")],
        )?;
        let options = parse_help(&String::from_utf8_lossy(&out));
        if !options.iter().any(|(n, _)| n == "--target-dir") {
            bail!("kiwi-ng {command} --help lists no --target-dir");
        }
        Ok(Options {
            command: command.into(),
            source: format!("kiwi-ng {version}"),
            options,
        })
    }

    fn find(&self, name: &str) -> Option<bool> {
        self.options.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}

fn command_name(build: bool) -> &'static str {
    if build {
        "system build"
    } else {
        "system create"
    }
}

/// The option names a kiwi-ng `--help` lists, and whether each takes a
/// value. kiwi-ng 10 and later print a table (`│ * --name  <type>  text`,
/// where `<bool>` is a flag); older ones print docopt text (`--name=<value>`
/// or `--name` at the start of a line of the options section). `--help`
/// itself is left out.
pub fn parse_help(text: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for line in text.lines() {
        let found = if let Some(row) = line.strip_prefix('│') {
            let mut words = row.split_whitespace().skip_while(|w| *w == "*");
            words
                .next()
                .filter(|w| w.starts_with("--"))
                .map(|name| (name, words.next().is_some_and(|t| t.starts_with('<') && t != "<bool>")))
        } else {
            let indent = line.len() - line.trim_start().len();
            let word = line.split_whitespace().next().unwrap_or_default();
            (indent <= 4 && word.starts_with("--")).then(|| match word.split_once('=') {
                Some((name, _)) => (name, true),
                None => (word, false),
            })
        };
        let Some((name, takes_value)) = found else { continue };
        let plain = name.len() > 2 && name[2..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if plain && name != "--help" && !out.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), takes_value));
        }
    }
    out
}

/// Where the options of `program` at `version` are cached: under
/// `$XDG_CACHE_HOME` (or `~/.cache`), one file per executable, version and
/// command; `None` without a home.
fn cache_file(program: &Path, version: &str, build: bool) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    let program_id = crate::oci::Digest::of(program.as_os_str().as_bytes());
    let version: String = version
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
        .collect();
    let command = if build { "build" } else { "create" };
    Some(base.join(format!(
        "kiwi-stackbuild/kiwi-ng-options/{version}-{command}-{}.json",
        &program_id.hex()[..16]
    )))
}

fn read_cached(path: &Path) -> Option<Options> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_cached(path: &Path, options: &Options) -> Result<()> {
    let dir = path.parent().ok_or_else(|| eyre!("{} has no parent", path.display()))?;
    std::fs::create_dir_all(dir)?;
    crate::oci::layout::write_atomic(path, &serde_json::to_vec_pretty(options)?)
}

/// kiwi-ng's global options, which go in front of `system ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Globals {
    /// `--profile`, repeatable.
    pub profiles: Vec<String>,
    /// `--type`.
    pub image_type: Option<String>,
    /// `--target-arch`.
    pub target_arch: Option<String>,
    /// `--shared-cache-dir`.
    pub shared_cache_dir: Option<PathBuf>,
    /// kiwi-ng's `--config` (a runtime config file).
    pub config: Option<PathBuf>,
    /// `--debug`.
    pub debug: bool,
}

impl Globals {
    /// The global options as kiwi-ng spells them.
    pub fn args(&self) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::new();
        if self.debug {
            out.push("--debug".into());
        }
        for p in &self.profiles {
            out.extend(["--profile".into(), p.into()]);
        }
        let values: [(&str, Option<&OsStr>); 4] = [
            ("--type", self.image_type.as_deref().map(OsStr::new)),
            ("--target-arch", self.target_arch.as_deref().map(OsStr::new)),
            (
                "--shared-cache-dir",
                self.shared_cache_dir.as_deref().map(Path::as_os_str),
            ),
            ("--config", self.config.as_deref().map(Path::as_os_str)),
        ];
        for (name, value) in values {
            if let Some(v) = value {
                out.extend([name.into(), v.to_os_string()]);
            }
        }
        out
    }
}

/// The arguments after `--`, checked: where the result goes, the description
/// when one was given, and the rest as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassThrough {
    /// `--target-dir`.
    pub target_dir: PathBuf,
    /// `--description`, when given after `--`.
    pub description: Option<PathBuf>,
    /// Every other option, in order, `--allow-existing-root` left out (we add it).
    pub rest: Vec<OsString>,
}

/// True when the arguments after `--` name a description (so kiwi-ng will
/// `system build`).
pub fn names_description(args: &[OsString]) -> bool {
    args.iter()
        .any(|a| a == "--description" || a.as_bytes().starts_with(b"--description="))
}

impl PassThrough {
    /// Checks `args` against the options of `system build` (when `build`) or
    /// `system create` of the installed kiwi-ng, before anything slow runs.
    pub fn parse(args: &[OsString], build: bool) -> Result<PassThrough> {
        PassThrough::parse_with(args, &Options::of(build))
    }

    /// These arguments for `system create` on a root that a build with them
    /// prepared: the options of `system build` that `system create` does
    /// not take (those that prepare the root) left out.
    pub fn for_create(&self) -> PassThrough {
        let (build, create) = (Options::of(true), Options::of(false));
        let mut rest = Vec::new();
        let mut it = self.rest.iter();
        while let Some(name) = it.next() {
            let key = name.to_string_lossy();
            let value = if build.find(&key).unwrap_or(false) {
                it.next()
            } else {
                None
            };
            if create.find(&key).is_some() {
                rest.push(name.clone());
                rest.extend(value.cloned());
            }
        }
        PassThrough {
            target_dir: self.target_dir.clone(),
            description: None,
            rest,
        }
    }

    /// Checks `args` against `options`.
    pub fn parse_with(args: &[OsString], options: &Options) -> Result<PassThrough> {
        let command = options.command.as_str();
        let mut target_dir = None;
        let mut description = None;
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let bytes = arg.as_bytes();
            let (name, inline) = match bytes.iter().position(|&b| b == b'=') {
                Some(i) if bytes.starts_with(b"--") => (&bytes[..i], Some(OsStr::from_bytes(&bytes[i + 1..]))),
                _ => (bytes, None),
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let Some(takes_value) = options.find(&name).filter(|_| name != "--root") else {
                return Err(unknown_option(&name, options));
            };
            let value = match (takes_value, inline) {
                (false, Some(_)) => {
                    return Err(eyre!("kiwi-ng {command} option {name} takes no value"))
                        .suggestion(format!("write {name} alone"))
                }
                (false, None) => None,
                (true, Some(v)) => Some(v.to_os_string()),
                (true, None) => {
                    let v = it
                        .next()
                        .cloned()
                        .ok_or_else(|| eyre!("kiwi-ng option {name} needs a value"))
                        .suggestion(format!("give {name} a value: {name} VALUE"))?;
                    let looks_like_option = v.as_bytes().starts_with(b"--");
                    if looks_like_option
                        && options
                            .options
                            .iter()
                            .any(|(n, _)| v.as_bytes().starts_with(n.as_bytes()))
                    {
                        return Err(eyre!(
                            "kiwi-ng option {name} needs a value, not the option {}",
                            v.to_string_lossy()
                        ))
                        .suggestion(format!("give {name} a value: {name} VALUE"));
                    }
                    Some(v)
                }
            };
            match (name.as_str(), value) {
                ("--target-dir", Some(v)) => target_dir = Some(path_once(&name, target_dir.as_ref(), v)?),
                ("--description", Some(v)) => description = Some(path_once(&name, description.as_ref(), v)?),
                ("--allow-existing-root", _) => {}
                (_, v) => {
                    rest.push(OsString::from(&name));
                    rest.extend(v);
                }
            }
        }
        let target_dir = target_dir.ok_or_else(|| {
            eyre!("no --target-dir after --").suggestion("say where kiwi-ng puts the result: -- --target-dir DIR")
        })?;
        Ok(PassThrough {
            target_dir,
            description,
            rest,
        })
    }
}

/// The directory given to `name`: not empty, not like an option, and given
/// once.
fn path_once(name: &str, before: Option<&PathBuf>, value: OsString) -> Result<PathBuf> {
    if before.is_some() {
        return Err(eyre!("{name} is given twice after --")).suggestion(format!("give {name} once"));
    }
    if value.is_empty() {
        return Err(eyre!("{name} is empty")).suggestion(format!("name a directory: {name} DIR"));
    }
    if value.as_bytes().starts_with(b"-") {
        return Err(eyre!(
            "{name} {} looks like an option, not a directory",
            value.to_string_lossy()
        ))
        .suggestion(format!(
            "name a directory: {name} DIR (write ./{} for a directory of that name)",
            value.to_string_lossy()
        ));
    }
    Ok(PathBuf::from(value))
}

fn unknown_option(name: &str, options: &Options) -> color_eyre::Report {
    let command = &options.command;
    let err = eyre!(
        "kiwi-ng {command} has no option {name:?} (options of {})",
        options.source
    );
    if name == "--root" {
        return err.suggestion("kiwi-stackbuild sets the root itself: give the image as --root REF before --");
    }
    if command == "system create" && BUILD_OPTIONS.iter().any(|(n, _)| *n == name) {
        return err.suggestion(format!(
            "{name} is an option of system build: give a --description to build"
        ));
    }
    let names = options
        .options
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "--root");
    if let Some(near) = crate::suggest::closest(name, names) {
        return err.suggestion(format!("did you mean {near}? (see kiwi-ng {command} --help)"));
    }
    err.suggestion(format!(
        "see kiwi-ng {command} --help; kiwi-ng global options such as --profile go before --"
    ))
}

/// The argv of `kiwi-ng GLOBALS system create --root ROOT --target-dir T REST`.
pub fn create_args(globals: &Globals, root: &Path, pass: &PassThrough) -> Vec<OsString> {
    let mut out = globals.args();
    out.extend([
        "system".into(),
        "create".into(),
        "--root".into(),
        root.as_os_str().to_os_string(),
    ]);
    out.extend(["--target-dir".into(), pass.target_dir.as_os_str().to_os_string()]);
    out.extend(pass.rest.iter().cloned());
    out
}

/// The argv of `kiwi-ng GLOBALS system build --description D --target-dir T
/// [--allow-existing-root] REST`.
pub fn build_args(globals: &Globals, description: &Path, existing_root: bool, pass: &PassThrough) -> Vec<OsString> {
    let mut out = globals.args();
    out.extend([
        "system".into(),
        "build".into(),
        "--description".into(),
        description.as_os_str().to_os_string(),
    ]);
    out.extend(["--target-dir".into(), pass.target_dir.as_os_str().to_os_string()]);
    if existing_root {
        out.push("--allow-existing-root".into());
    }
    out.extend(pass.rest.iter().cloned());
    out
}

/// Runs kiwi-ng with `args`, its log streamed to stderr.
pub fn run_kiwi(args: &[OsString], target_dir: &Path) -> Result<()> {
    run(Tool::KiwiNg, args, Output::Stream)
        .wrap_err("the kiwi-ng build failed")
        .suggestion(format!(
            "read the kiwi-ng log above and {}",
            target_dir.join("build/image-root.log").display()
        ))?;
    Ok(())
}

/// The installed kiwi-ng's version, e.g. `11.1.6`: read from the kiwi
/// package beside the Python that runs kiwi-ng, which costs no process;
/// else what `kiwi-ng --version` prints.
pub fn version() -> Result<String> {
    if let Some(v) = version_from_package() {
        return Ok(v);
    }
    let out = run(Tool::KiwiNg, &["--version".into()], Output::Capture)?;
    let text = String::from_utf8_lossy(&out);
    Ok(text.split_whitespace().last().unwrap_or_default().to_string())
}

/// `kiwi/version.py` of the installation whose `#!` interpreter runs the
/// kiwi-ng script: PREFIX/bin/python3 has PREFIX/lib*/python3.*/site-packages.
fn version_from_package() -> Option<String> {
    let script = std::fs::canonicalize(Tool::KiwiNg.locate().ok()?).ok()?;
    let mut head = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(std::fs::File::open(script).ok()?, 512),
        &mut head,
    )
    .ok()?;
    let interpreter = PathBuf::from(head.lines().next()?.strip_prefix("#!")?.split_whitespace().next()?);
    let prefix = interpreter.parent()?.parent()?;
    for lib in ["lib", "lib64"] {
        for entry in std::fs::read_dir(prefix.join(lib)).ok()?.flatten() {
            let file = entry.path().join("site-packages/kiwi/version.py");
            if let Ok(text) = std::fs::read_to_string(&file) {
                return parse_version_py(&text);
            }
        }
    }
    None
}

fn parse_version_py(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.trim_start().starts_with("__version__"))?;
    let value = line.split_once('=')?.1.trim().trim_matches(|c| c == '\'' || c == '"');
    (!value.is_empty()).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::args;

    /// Parses `argv` against the built-in lists, whatever kiwi-ng is installed.
    fn parse(argv: &[&str], build: bool) -> Result<PassThrough> {
        PassThrough::parse_with(&args(argv), &Options::builtin(build))
    }

    /// The shape of kiwi-ng 11's `system create --help` at a wide terminal.
    const TABLE_HELP: &str = "
 Usage: kiwi-ng system create [OPTIONS]

╭─ Options ──────────────────────────────────────────────────────────────╮
│ *  --root            <path>        <directory> The path to the root      │
│ *  --target-dir      <path>        <directory> Where results go          │
│    --signing-key     <list[Path]>  <key-file> A key; see --root above    │
│    --fast-mode       <bool>        A flag                                │
│    --help            <bool>        Show this message and exit.           │
╰────────────────────────────────────────────────────────────────────────╯
";

    /// The shape of an older kiwi-ng's docopt help.
    const DOCOPT_HELP: &str = "usage: kiwi-ng system create -h | --help
       kiwi-ng system create --root=<directory> --target-dir=<directory>
           [--signing-key=<key-file>...]

options:
    --root=<directory>
        the path to the root directory, see also
        --target-dir
    --signing-key=<key-file>
        includes the key
    --quiet
        a flag
    --target-dir=<directory>
        where results go
";

    #[test]
    fn help_tables_and_docopt_text_give_the_options() {
        let want = |pairs: &[(&str, bool)]| pairs.iter().map(|&(n, v)| (n.to_string(), v)).collect::<Vec<_>>();
        assert_eq!(
            parse_help(TABLE_HELP),
            want(&[
                ("--root", true),
                ("--target-dir", true),
                ("--signing-key", true),
                ("--fast-mode", false)
            ])
        );
        assert_eq!(
            parse_help(DOCOPT_HELP),
            want(&[
                ("--root", true),
                ("--signing-key", true),
                ("--quiet", false),
                ("--target-dir", true)
            ])
        );
        assert!(parse_help("fake kiwi-ng: building in\n").is_empty());
    }

    #[test]
    fn options_of_the_installed_kiwi_ng_decide() {
        let options = Options {
            command: "system create".into(),
            source: "kiwi-ng 12.0".into(),
            options: parse_help(TABLE_HELP),
        };
        let pass = PassThrough::parse_with(&args(["--target-dir", "/t", "--fast-mode"]), &options).unwrap();
        // kiwi-ng create has --root, but it is ours to give.
        let err = PassThrough::parse_with(&args(["--target-dir", "/t", "--root", "/r"]), &options).unwrap_err();
        assert!(format!("{err}").contains("has no option \"--root\""), "{err}");
        assert_eq!(pass.rest, args(["--fast-mode"]));
        let err = PassThrough::parse_with(&args(["--target-dir", "/t", "--signing-key"]), &options).unwrap_err();
        assert!(format!("{err}").contains("needs a value"), "{err}");
        let err = PassThrough::parse_with(&args(["--target-dir", "/t", "--clear-cache"]), &options).unwrap_err();
        assert!(
            format!("{err}").ends_with("has no option \"--clear-cache\" (options of kiwi-ng 12.0)"),
            "{err}"
        );
    }

    #[test]
    fn create_command_puts_globals_first() {
        let globals = Globals {
            profiles: vec!["a".into(), "b".into()],
            image_type: Some("tbz".into()),
            shared_cache_dir: Some("/c".into()),
            config: Some("/k.yml".into()),
            debug: true,
            ..Globals::default()
        };
        let pass = parse(&["--target-dir", "/t", "--signing-key=/k"], false).unwrap();
        let want = args([
            "--debug",
            "--profile",
            "a",
            "--profile",
            "b",
            "--type",
            "tbz",
            "--shared-cache-dir",
            "/c",
            "--config",
            "/k.yml",
            "system",
            "create",
            "--root",
            "/t/build/image-root",
            "--target-dir",
            "/t",
            "--signing-key",
            "/k",
        ]);
        assert_eq!(create_args(&globals, Path::new("/t/build/image-root"), &pass), want);
    }

    #[test]
    fn build_command_adds_allow_existing_root_once() {
        let pass = parse(
            &[
                "--description",
                "/d",
                "--allow-existing-root",
                "--target-dir=/t",
                "--add-package",
                "vim",
            ],
            true,
        )
        .unwrap();
        assert_eq!(pass.description.as_deref(), Some(Path::new("/d")));
        let want = args([
            "system",
            "build",
            "--description",
            "/m",
            "--target-dir",
            "/t",
            "--allow-existing-root",
            "--add-package",
            "vim",
        ]);
        assert_eq!(build_args(&Globals::default(), Path::new("/m"), true, &pass), want);
    }

    #[test]
    fn pass_through_errors_name_the_option() {
        let cases: [(&[&str], bool, &str); 14] = [
            (&["--target-dir", "/t", "--bogus"], false, "\"--bogus\""),
            (
                &["--target-dir", "/t", "--add-package", "x"],
                false,
                "\"--add-package\"",
            ),
            (&["--target-dir", "/t", "--root", "/r"], false, "\"--root\""),
            (&["--signing-key", "/k"], false, "no --target-dir"),
            (&["--target-dir"], false, "needs a value"),
            (&["--target-dir", "/t", "--clear-cache=yes"], true, "takes no value"),
            (&["--target-dir", ""], false, "--target-dir is empty"),
            (&["--target-dir="], false, "--target-dir is empty"),
            (
                &["--target-dir", "--signing-key", "/k"],
                false,
                "not the option --signing-key",
            ),
            (&["--target-dir", "/a", "--target-dir", "/b"], false, "given twice"),
            (
                &["--target-dir", "--bogus"],
                false,
                "--target-dir --bogus looks like an option",
            ),
            (&["--target-dir=-x"], false, "--target-dir -x looks like an option"),
            (
                &["--target-dir", "/t", "--description", "-d"],
                true,
                "--description -d looks like an option",
            ),
            (
                &["--target-dir", "/t", "--description", "/d", "--description=/e"],
                true,
                "given twice",
            ),
        ];
        for (argv, build, want) in cases {
            let err = parse(argv, build).unwrap_err();
            assert!(format!("{err}").contains(want), "{argv:?}: {err}");
        }
    }

    #[test]
    fn version_py_is_read() {
        assert_eq!(
            parse_version_py("# c\n__version__ = '11.1.6'\n").as_deref(),
            Some("11.1.6")
        );
        assert_eq!(parse_version_py("__version__ = \"10.2\"").as_deref(), Some("10.2"));
        assert_eq!(parse_version_py("VERSION = 1"), None);
    }

    #[test]
    fn description_after_double_dash_means_build() {
        assert!(names_description(&args(["--description", "d", "--target-dir", "t"])));
        assert!(names_description(&args(["--description=d"])));
        assert!(!names_description(&args(["--target-dir", "t"])));
    }
}
