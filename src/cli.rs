//! The command line: clap types, and the dispatch of each command to its job.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use color_eyre::eyre::{eyre, Result};
use color_eyre::Section;

use crate::description::{self, Document};
use crate::inputs;
use crate::layer::compress::{Format, Settings};
use crate::listing;
use crate::listing::human_size;
use crate::reference::{ImageReference, StashRef, Tag};
use crate::registry::{self, Credentials, RegistryAuth};
use crate::store::{self, Store};
use crate::tools::kiwi::{self, Globals};
use crate::tools::{self, Tool};
use crate::transfer;
use crate::workflow::{self, Rebuild};

mod completion;
mod manpage;

/// Store KIWI root trees as OCI images and build images from them again.
///
/// Arguments after `--` go to kiwi-ng (`system build` when a description is
/// in play, otherwise `system create`) and are checked against kiwi-ng's
/// own options before anything slow starts.
#[derive(Debug, Parser)]
#[command(name = "kiwi-stackbuild", version, max_term_width = 80)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command, listed under their own heading.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The local stash store (an OCI image layout)
    #[arg(long, global = true, env = "KIWI_STACKBUILD_HOME", default_value = store::DEFAULT_HOME, value_name = "DIR")]
    pub stash_home: PathBuf,
    /// kiwi-ng profile to build; repeat for several
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Vec<String>,
    /// kiwi-ng image type to build
    #[arg(long = "type", global = true, value_name = "TYPE")]
    pub image_type: Option<String>,
    /// Image architecture handed to kiwi-ng
    #[arg(long, global = true, value_name = "ARCH")]
    pub target_arch: Option<String>,
    /// kiwi-ng's shared cache directory
    #[arg(long, global = true, value_name = "DIR")]
    pub shared_cache_dir: Option<PathBuf>,
    /// kiwi-ng runtime config file (kiwi-ng --config)
    #[arg(long, global = true, value_name = "FILE")]
    pub kiwi_config: Option<PathBuf>,
    /// Log every step and child command, and run kiwi-ng with --debug
    #[arg(long, global = true)]
    pub debug: bool,
    /// Registry auth file (default: where skopeo and podman keep logins)
    #[arg(long, global = true, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
    /// Registry login. A password written here is visible to other users in
    /// ps while we run: give --creds USER with --password-stdin, or set
    /// KIWI_STACKBUILD_PASSWORD
    #[arg(long, global = true, value_name = "USER[:PASSWORD]")]
    pub creds: Option<String>,
    /// Read the password of --creds USER from stdin (a trailing newline is
    /// dropped)
    #[arg(long, global = true, requires = "creds")]
    pub password_stdin: bool,
    /// Verify registry TLS certificates (=false for a test registry)
    #[arg(long, global = true, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub tls_verify: bool,
    /// Directory with the registry's CA certificate (*.crt)
    #[arg(long, global = true, value_name = "DIR")]
    pub cert_dir: Option<PathBuf>,
    /// Layer compression of stash, rebuild --keep-root and push: gzip (the
    /// default; KIWI's own derived_from import, skopeo with umoci 0.4, reads
    /// only gzip) or zstd. push recompresses only the layers stored
    /// otherwise; without this option it keeps them as stored
    #[arg(
        long,
        global = true,
        env = "KIWI_STACKBUILD_COMPRESSION",
        value_name = "FORMAT",
        alias = "compress-format"
    )]
    pub compression: Option<CompressFormat>,
    /// Compression level: gzip 1-9 (default 1), zstd 1-19 (default 3)
    #[arg(
        long,
        global = true,
        env = "KIWI_STACKBUILD_COMPRESSION_LEVEL",
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub compression_level: Option<i32>,
    /// Threads that read a root and compress a layer, 1-256 (default: the
    /// available cores); the layer is the same for any number
    #[arg(long, global = true, env = "KIWI_STACKBUILD_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub jobs: Option<u16>,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressFormat {
    /// gzip, read by every tool.
    Gzip,
    /// zstd: smaller and faster; podman, skopeo and containerd read it.
    Zstd,
}

impl From<CompressFormat> for Format {
    fn from(f: CompressFormat) -> Format {
        match f {
            CompressFormat::Gzip => Format::Gzip,
            CompressFormat::Zstd => Format::Zstd,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from stored roots and/or a description
    ///
    /// W1  rebuild --description D --keep-root REF -- --target-dir T
    ///     build D, then store its root tree at REF
    /// W2  rebuild --root REF -- --target-dir T
    ///     unpack REF, kiwi-ng system create with its /image
    /// W3  rebuild --root REF -- --description D --target-dir T
    ///     unpack REF, build D on it (no bootstrap)
    /// W4  rebuild --description D -- --target-dir T
    ///     D says derived_from="REF": merge D into REF's description, build
    ///
    /// --root may be repeated to stack images; --keep-root works with all;
    /// --target-dir T may also be given before --, as KIWI users write it.
    #[command(verbatim_doc_comment)]
    Rebuild(RebuildArgs),
    /// Store a KIWI root tree in the local store; list, remove, squash, check
    /// or prune stashes
    Stash(StashArgs),
    /// Build from stashes, as kiwi-ng system stackbuild does
    Stackbuild(StackbuildArgs),
    /// Write the merged description of a derived description, without building
    ///
    /// The base is --base (a description directory or an image reference),
    /// else the image that derived_from names. The result keeps the
    /// bootstrap packages, so kiwi-ng system build builds it from scratch.
    Merge(MergeArgs),
    /// Copy a stash to a registry or any other image reference
    ///
    /// REF is e.g. docker://HOST/NS/NAME:TAG, oci-archive:FILE,
    /// containers-storage:NAME:TAG. A registry gets only the layers it lacks.
    Push(PushArgs),
    /// Copy an image into the local store
    ///
    /// Blobs the store has are not fetched again. Without NAME[:TAG], the
    /// stash is named after the reference's last path component and tag.
    Pull(PullArgs),
    /// Print the input record and hash of a build; compare with a stored root
    ///
    /// The record holds what decides the root a build prepares: the
    /// description and every file beside it (path, type, mode, owner, link
    /// target, content sha256), the profiles, type and architecture, the
    /// arguments after -- that change the root, kiwi-ng's version, the
    /// layer format, each repository's current metadata (apt InRelease,
    /// rpm-md repomd.xml, a local directory's listing) and the base images.
    /// A derived description is merged into its base first. A repository
    /// that cannot be read, or a base that is not a stash (not resolved),
    /// makes the record not reusable, with the reason.
    ///
    /// rebuild --keep-root stores the record on the image, as the labels
    /// io.kiwi-stackbuild.inputs (the hash) and
    /// io.kiwi-stackbuild.inputs.record (the JSON). --against REF reads
    /// them (a stash from the store, any other reference with skopeo
    /// inspect --config) and prints each part that differs. Exit status
    /// with --against: 0 when the inputs are the same, 1 when they differ
    /// (or on an error, which says so).
    Inputs(InputsArgs),
    /// Print a shell completion script (bash, zsh, fish, ...)
    Completions {
        /// The shell
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// Write man pages, one per command, into a directory
    Man {
        /// Where the pages go
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
    },
}

/// `merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The derived description (directory or file)
    #[arg(long, value_name = "DERIVED")]
    pub description: PathBuf,
    /// Where to write the merged description (a new directory)
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// The base: a description directory or an image reference
    #[arg(long, value_name = "DIR_OR_REF")]
    pub base: Option<String>,
}

/// `inputs`.
#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("what").required(true).multiple(true).args(["description", "root"])),
    override_usage = "kiwi-stackbuild inputs [OPTIONS] --description DIR [--root REF]...\n       \
                      [-- KIWI ARGS...]\n       \
                      kiwi-stackbuild inputs [OPTIONS] --root REF... [-- KIWI ARGS...]"
)]
pub struct InputsArgs {
    /// The description to build (a derived one is merged into its base)
    #[arg(long, value_name = "DIR")]
    pub description: Option<PathBuf>,
    /// Image built on; repeat for a stack (lowest first)
    #[arg(long, value_name = "REF")]
    pub root: Vec<ImageReference>,
    /// Print the record as JSON (with --against: the differences)
    #[arg(long)]
    pub json: bool,
    /// Compare with the record stored on REF (a stash name or image
    /// reference); exit status 1 when they differ
    #[arg(long, value_name = "REF")]
    pub against: Option<ImageReference>,
    /// The arguments for kiwi-ng system build, as rebuild takes them
    #[arg(last = true, value_name = "KIWI ARGS")]
    pub kiwi_args: Vec<OsString>,
}

/// `push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The stash to push
    #[arg(value_name = "NAME[:TAG]")]
    pub stash: StashRef,
    /// Where to push it
    #[arg(value_name = "REF")]
    pub destination: ImageReference,
}

/// `pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image to pull
    #[arg(value_name = "REF")]
    pub source: ImageReference,
    /// The stash to store it as
    #[arg(value_name = "NAME[:TAG]")]
    pub stash: Option<StashRef>,
}

/// `rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Image to build on; repeat to stack several (lowest first)
    ///
    /// An image that is no stash is fetched into the store as
    /// fetched/NAME:TAG, so the next rebuild from it fetches no blob again
    /// (see stash --prune).
    #[arg(long, value_name = "REF")]
    pub root: Vec<ImageReference>,
    /// Description to build (W1)
    #[arg(long, value_name = "DIR")]
    pub description: Option<PathBuf>,
    /// Store the resulting root tree as REF (NAME[:TAG])
    ///
    /// A bare NAME is tagged with the description's <version> and latest
    /// (a bare NAME given to --root means NAME:latest).
    #[arg(long, value_name = "REF")]
    pub keep_root: Option<ImageReference>,
    /// Where kiwi-ng puts the result: the same as -- --target-dir DIR
    #[arg(long, value_name = "DIR")]
    pub target_dir: Option<PathBuf>,
    /// Build even when package manager, architecture or distribution differ
    #[arg(long)]
    pub force: bool,
    /// Skip prepare when the --keep-root image was built from the same inputs
    ///
    /// Before anything is built, the input record of this build (see
    /// kiwi-stackbuild inputs) is compared with the one the --keep-root
    /// image carries, read from the store or the registry (a manifest and
    /// a config request, no layer). The same: the image is built from that
    /// root as rebuild --root REF does, without kiwi-ng's prepare, and the
    /// log says "inputs unchanged since REF". Different, absent, or not
    /// readable: the build runs as without --reuse, the log says why, and
    /// the root is kept with the new record.
    #[arg(long, requires = "keep_root")]
    pub reuse: bool,
    /// Arguments for kiwi-ng system build/create (--target-dir is required,
    /// here or before --)
    #[arg(last = true, value_name = "KIWI ARGS")]
    pub kiwi_args: Vec<OsString>,
}

/// `stash`.
#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("action").required(true).args(["root", "list", "rm", "check", "squash", "prune"])),
    override_usage = "kiwi-stackbuild stash [OPTIONS] --root DIR\n       kiwi-stackbuild stash --list [--json]\n       \
                      kiwi-stackbuild stash --rm NAME[:TAG]\n       kiwi-stackbuild stash --squash NAME[:TAG]\n       \
                      kiwi-stackbuild stash --check [--repair]\n       \
                      kiwi-stackbuild stash --prune --older-than DURATION"
)]
pub struct StashArgs {
    /// Root tree of a KIWI build (TARGET/build/image-root)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Tag of the stash
    #[arg(long, value_name = "TAG", default_value = "latest", requires = "root")]
    pub tag: Tag,
    /// Name of the stash (default: <image name> of the description)
    #[arg(long, value_name = "NAME", requires = "root")]
    pub container_name: Option<String>,
    /// Store the input record of a build of DIR with the root
    ///
    /// As rebuild --keep-root does (see kiwi-stackbuild inputs): the
    /// description and every file beside it, kiwi-ng's version, the state
    /// of its repositories, and the profiles among the global options, else
    /// those KIWI wrote into the root's /.profile. A later inputs --against
    /// or rebuild --reuse compares its own inputs with it.
    #[arg(long, value_name = "DIR", requires = "root")]
    pub description: Option<PathBuf>,
    /// List the stashes; broken ones say what is wrong (exit status 3)
    #[arg(long)]
    pub list: bool,
    /// With --list: print JSON
    #[arg(long, requires = "list")]
    pub json: bool,
    /// Remove NAME:TAG, or every tag of NAME (all or none), free unused blobs
    #[arg(long, value_name = "NAME[:TAG]")]
    pub rm: Option<StashRef>,
    /// Rewrite NAME:TAG as an image of one layer with the same tree
    ///
    /// Container runtimes refuse images past about 127 layers, and every
    /// stash on top adds one. The new image keeps the labels and runtime
    /// config; its history is one entry. Other tags of the image before keep
    /// it; blobs no stash uses any more are freed. Needs root. An image of
    /// one layer is left as it is.
    #[arg(long, value_name = "NAME[:TAG]")]
    pub squash: Option<StashRef>,
    /// Verify every blob of the store and report each problem on a line
    ///
    /// Reports refs to missing blobs, blobs whose digest or size is wrong,
    /// blobs no stash uses and temp files interrupted runs left. Changes
    /// nothing and needs only read access. Exits with 3 when it finds a
    /// problem.
    #[arg(long)]
    pub check: bool,
    /// With --check: remove what no stash needs (unused blobs, temp files)
    ///
    /// Never removes a stash or a blob a stash needs: a stash that needs a
    /// missing or corrupt blob is reported with what to do (re-pull or
    /// re-stash it, or stash --rm). Exits with 3 when problems remain.
    #[arg(long, requires = "check")]
    pub repair: bool,
    /// Remove fetched images (fetched/...) that no run used for a while
    ///
    /// Images a rebuild, stackbuild or merge fetched from elsewhere are kept
    /// in the store as fetched/NAME:TAG, so the next run fetches nothing.
    /// This removes those whose last use is older than --older-than, then
    /// the blobs no remaining stash uses. Stashes of your own stay.
    #[arg(long, requires = "older_than")]
    pub prune: bool,
    /// With --prune: how long unused, a number and s, m, h, d or w (30d)
    #[arg(long, value_name = "DURATION", requires = "prune", value_parser = crate::store::fetched::parse_duration)]
    pub older_than: Option<std::time::Duration>,
}

/// `stackbuild`.
#[derive(Debug, Args)]
#[command(
    override_usage = "kiwi-stackbuild stackbuild [OPTIONS] --stash NAME... --target-dir DIR\n       [-- KIWI ARGS... | kiwi KIWI ARGS...]"
)]
pub struct StackbuildArgs {
    /// Stashes to build on, stacked in order
    #[arg(long, required = true, num_args = 1.., value_name = "NAME")]
    pub stash: Vec<StashRef>,
    /// Where kiwi-ng puts the result
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// Description to build on the stashes
    #[arg(long, value_name = "DIR")]
    pub description: Option<PathBuf>,
    /// Pull bare stash names from this registry (HOST[:PORT][/NAMESPACE])
    #[arg(long, value_name = "URI")]
    pub from_registry: Option<String>,
    /// Build even when package manager, architecture or distribution differ
    #[arg(long)]
    pub force: bool,
    /// More arguments for kiwi-ng system build/create, after -- or (as
    /// KIWI 11's stackbuild takes them) after the word kiwi
    #[arg(last = true, value_name = "KIWI ARGS")]
    pub kiwi_args: Vec<OsString>,
}

/// The commands that read none of the global options: their help and man
/// pages do not list them.
const WITHOUT_GLOBALS: [&str; 2] = ["completions", "man"];

/// The command line as the binary parses it: [`Cli`]'s, with the global
/// options hidden from the commands they do not apply to (still accepted
/// there, as everywhere, and ignored).
pub fn command() -> clap::Command {
    let mut cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd.get_arguments().filter(|a| a.is_global_set()).cloned().collect();
    // clap copies a global option into a subcommand only when the
    // subcommand has no option of that id: a hidden local copy keeps it out.
    for name in WITHOUT_GLOBALS {
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.args(globals.iter().map(|a| a.clone().global(false).hide(true)))
        });
    }
    cmd
}

/// Parses `args` (the process's, with [`kiwi_word_as_separator`] applied)
/// with [`command`]; exits on a usage error or after `--help` and
/// `--version`, as clap does.
pub fn parse_from(args: Vec<OsString>) -> Cli {
    let mut matches = command().get_matches_from(args);
    Cli::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut command()).exit())
}

impl GlobalArgs {
    fn kiwi(&self) -> Globals {
        Globals {
            profiles: self.profile.clone(),
            image_type: self.image_type.clone(),
            target_arch: self.target_arch.clone(),
            shared_cache_dir: self.shared_cache_dir.clone(),
            config: self.kiwi_config.clone(),
            debug: self.debug,
        }
    }

    /// How the layers we write are compressed: `--compression` (gzip when
    /// not given) at `--compression-level` on `--jobs` threads.
    fn layer_compression(&self) -> Result<Settings> {
        let format = self.compression.map_or(Format::Gzip, Format::from);
        Settings::new(format, self.compression_level, self.jobs.map(usize::from))
            .suggestion("give --compression-level (or KIWI_STACKBUILD_COMPRESSION_LEVEL) within that range")
    }

    /// What a copy out of the store recompresses its layers to: nothing
    /// without `--compression`, so that they go as stored.
    fn copy_compression(&self) -> Result<Option<Settings>> {
        self.compression.map(|_| self.layer_compression()).transpose()
    }

    fn registry(&self) -> Result<RegistryAuth> {
        if let Some(d) = &self.cert_dir {
            registry::check_cert_dir(d)?;
        }
        let mut stdin = std::io::stdin().lock();
        let password_stdin = self.password_stdin.then_some(&mut stdin as &mut dyn std::io::Read);
        let creds = self
            .creds
            .as_deref()
            .map(|c| Credentials::parse(c, password_stdin))
            .transpose()?;
        RegistryAuth::new(self.authfile.clone(), creds, self.tls_verify, self.cert_dir.clone())
    }
}

/// Runs the parsed command.
pub fn dispatch(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            return completion::print(*shell, &mut command());
        }
        Command::Man { output } => return manpage::write(command(), output),
        _ => {}
    }
    store::check_home(&cli.global.stash_home)?;
    let store = Store::new(&cli.global.stash_home).with_compression(cli.global.layer_compression()?);
    match cli.command {
        Command::Rebuild(a) => {
            let auth = cli.global.registry()?;
            let kiwi_args = with_target_dir(a.target_dir, a.kiwi_args)?;
            let job = Rebuild {
                roots: a.root,
                description: a.description,
                keep_root: a.keep_root,
                force: a.force,
                globals: cli.global.kiwi(),
                kiwi_args,
                compression: cli.global.copy_compression()?,
                reuse: a.reuse,
            };
            workflow::rebuild(&store, &job, &auth)
        }
        Command::Stackbuild(a) => {
            let mut kiwi_args = with_target_dir(Some(a.target_dir), a.kiwi_args)?;
            if let Some(d) = a.description {
                kiwi_args.extend(["--description".into(), d.into()]);
            }
            let roots: Vec<ImageReference> = match &a.from_registry {
                Some(uri) => a.stash.iter().map(|s| s.in_registry(uri)).collect::<Result<_>>()?,
                None => a.stash.into_iter().map(ImageReference::Stash).collect(),
            };
            let auth = cli.global.registry()?;
            let job = Rebuild {
                roots,
                description: None,
                keep_root: None,
                force: a.force,
                globals: cli.global.kiwi(),
                kiwi_args,
                compression: cli.global.copy_compression()?,
                reuse: false,
            };
            workflow::rebuild(&store, &job, &auth)
        }
        Command::Merge(a) => {
            let auth = cli.global.registry()?;
            workflow::merge_preview(&store, &a.description, &a.output, a.base.as_deref(), &auth)
        }
        Command::Push(a) => {
            if let ImageReference::Stash(named) = &a.destination {
                let err = eyre!(
                    "push {}: {named} is a stash name, not a place to push to",
                    a.stash.key()
                );
                return Err(match crate::reference::transport_hint(&named.to_string()) {
                    Some(hint) => err.suggestion(format!("did you mean {hint}?")),
                    None => err
                        .suggestion("give a reference with its transport, e.g. docker://HOST/NAME:TAG or oci:DIR:TAG"),
                });
            }
            tools::require(&[Tool::Skopeo])?;
            let auth = cli.global.registry()?;
            transfer::push(
                &store,
                &a.stash.key(),
                &a.destination,
                &auth,
                cli.global.copy_compression()?,
            )?;
            eprintln!("pushed {} to {}", a.stash.key(), a.destination);
            Ok(())
        }
        Command::Pull(a) => {
            tools::require(&[Tool::Skopeo])?;
            let name = match a.stash {
                Some(n) => n,
                None => a.source.default_stash_name()?,
            };
            let auth = cli.global.registry()?;
            let pulled = transfer::pull(&store, &a.source, &name.key(), &auth)?;
            eprintln!(
                "pulled {} as {}, manifest {} ({} new blobs, {})",
                a.source,
                name.key(),
                pulled.digest.short(),
                pulled.new_blobs,
                human_size(pulled.new_bytes)
            );
            crate::listing::line(&name.key())?;
            Ok(())
        }
        Command::Stash(a) => stash(&store, a, &cli.global.kiwi()),
        Command::Inputs(a) => inputs(&store, a, &cli.global),
        Command::Completions { .. } | Command::Man { .. } => unreachable!("handled above"),
    }
}

/// The command line with KIWI 11's spelling of `system stackbuild` read:
/// it takes kiwi-ng's arguments after the word `kiwi`, so in `stackbuild`
/// the first bare `kiwi` (before any `--`, and not the value of the option
/// before it) is read as `--`. A stash named kiwi after other stash names
/// is written `kiwi:latest`.
pub fn kiwi_word_as_separator(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let args: Vec<OsString> = args.into_iter().collect();
    // The command is built only where there is a `kiwi` to read.
    if !args.iter().any(|a| a == "kiwi") {
        return args;
    }
    let cli = Cli::command();
    let stackbuild = cli.find_subcommand("stackbuild").cloned();
    let takes_value = |option: &str| {
        let long = option.trim_start_matches('-');
        let commands = std::iter::once(&cli).chain(stackbuild.as_ref());
        commands
            .flat_map(|c| c.get_arguments())
            .any(|a| a.get_long() == Some(long) && a.get_action().takes_values() && !a.is_require_equals_set())
    };
    let mut out = Vec::new();
    let mut args = args.into_iter();
    out.extend(args.next());
    let (mut in_stackbuild, mut value_next) = (false, false);
    for arg in args.by_ref() {
        let word = arg.to_str().unwrap_or_default();
        if std::mem::take(&mut value_next) {
            out.push(arg);
            continue;
        }
        if word == "--" {
            out.push(arg);
            break;
        }
        if word.starts_with("--") && !word.contains('=') {
            value_next = takes_value(word);
        } else if word == "kiwi" && in_stackbuild {
            out.push("--".into());
            break;
        } else if !in_stackbuild && !word.starts_with('-') {
            if word != "stackbuild" {
                out.push(arg);
                break;
            }
            in_stackbuild = true;
        }
        out.push(arg);
    }
    out.extend(args);
    out
}

/// The arguments for kiwi-ng with `--target-dir DIR` given before `--`
/// (as KIWI's own stackbuild takes it) put in front: given on both sides,
/// it is refused.
fn with_target_dir(before: Option<PathBuf>, after: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(dir) = before else {
        return Ok(after);
    };
    let named_after = after
        .iter()
        .any(|a| a == "--target-dir" || a.as_encoded_bytes().starts_with(b"--target-dir="));
    if named_after {
        return Err(eyre!("--target-dir is given before and after --"))
            .suggestion(format!("give it once: --target-dir {}", dir.display()));
    }
    let mut args: Vec<OsString> = vec!["--target-dir".into(), dir.into()];
    args.extend(after);
    Ok(args)
}

fn inputs(store: &Store, a: InputsArgs, global: &GlobalArgs) -> Result<()> {
    let auth = global.registry()?;
    // Checked as rebuild checks them; --target-dir is not needed here.
    let mut args = a.kiwi_args.clone();
    if !args
        .iter()
        .any(|x| x == "--target-dir" || x.as_encoded_bytes().starts_with(b"--target-dir="))
    {
        args.extend(["--target-dir".into(), ".".into()]);
    }
    let pass = kiwi::PassThrough::parse(&args, true)?;
    let given = match (&a.description, &pass.description) {
        (Some(_), Some(_)) => {
            return Err(eyre!("two descriptions: --description before and after --"))
                .suggestion("give the description once")
        }
        (d, p) => d.clone().or(p.clone()),
    };
    let mut roots = a.root.clone();
    // Where a derived description is merged, removed on the way out.
    let mut scratch = None;
    let dir = match &given {
        None => None,
        Some(given) => {
            let file = description::find(given)?;
            let doc = Document::parse_file(&file)?;
            match doc.derived_from() {
                Some(base) => {
                    if !roots.is_empty() {
                        return Err(eyre!(
                            "{} is derived (derived_from), and --root names a base too",
                            file.display()
                        ))
                        .suggestion("drop --root: derived_from names the base");
                    }
                    roots.push(base.parse::<ImageReference>()?);
                    let made = scratch.insert(crate::fsutil::private_tempdir(None, ".kiwi-stackbuild-inputs-")?);
                    let merged = made.path().join("merged");
                    workflow::write_merge(store, given, &merged, None, &auth)?;
                    Some(merged)
                }
                None => Some(file.parent().map(PathBuf::from).unwrap_or_else(|| ".".into())),
            }
        }
    };
    let bases = inputs::resolve_bases(store, &roots, &auth)?;
    let record = inputs::of_build(dir.as_deref(), &global.kiwi(), &pass.rest, bases)?;
    let Some(against) = &a.against else {
        return listing::line(&if a.json {
            serde_json::to_string_pretty(&record.to_json())?
        } else {
            record.table().trim_end().to_string()
        });
    };
    if !matches!(against, ImageReference::Stash(_)) {
        tools::require(&[Tool::Skopeo])?;
    }
    let stored = inputs::against(store, against, &auth)?;
    let differences = inputs::differences(&stored, &record);
    if a.json {
        let out = serde_json::json!({
            "against": against.to_string(),
            "stored": stored.hash,
            "hash": record.hash,
            "differences": differences,
        });
        listing::line(&serde_json::to_string_pretty(&out)?)?;
    } else if differences.is_empty() {
        listing::line(&format!("same inputs as {against}: {}", record.hash))?;
    } else {
        listing::line(&differences.join("\n"))?;
    }
    if differences.is_empty() {
        return Ok(());
    }
    Err(inputs::Differ(format!(
        "the inputs differ from those of {against} in {} parts",
        differences.len()
    ))
    .into())
}

fn stash(store: &Store, a: StashArgs, globals: &kiwi::Globals) -> Result<()> {
    if a.list {
        return listing::print(store, a.json);
    }
    if let Some(r) = a.rm {
        return workflow::remove(store, &r);
    }
    if a.check {
        return listing::check(store, a.repair);
    }
    if let Some(r) = a.squash {
        return workflow::squash(store, &r);
    }
    if let Some(age) = a.older_than.filter(|_| a.prune) {
        return workflow::prune(store, age);
    }
    let root = a
        .root
        .ok_or_else(|| eyre!("stash needs --root, --list, --rm, --check, --squash or --prune"))?;
    let done = workflow::stash(
        store,
        &workflow::StashRoot {
            root: &root,
            tag: &a.tag,
            container_name: a.container_name.as_deref(),
            description: a.description.as_deref(),
            globals,
        },
    )?;
    let added = done.layer.as_ref().map_or_else(
        || "no new layer".to_string(),
        |l| format!("new layer {}", human_size(l.size)),
    );
    eprintln!(
        "stashed {} as {} ({} layers, {added}{})",
        root.display(),
        done.key,
        done.layers,
        done.base.as_ref().map(|b| format!(", on {b}")).unwrap_or_default()
    );
    crate::listing::line(&done.key)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    #[test]
    fn the_word_kiwi_ends_the_options_of_stackbuild() {
        let cases: [(&str, &str); 7] = [
            (
                "k stackbuild --stash a --target-dir t kiwi --add-package kiwi",
                "k stackbuild --stash a --target-dir t -- --add-package kiwi",
            ),
            ("k stackbuild --stash a b kiwi --x", "k stackbuild --stash a b -- --x"),
            // The value of an option is no separator.
            (
                "k stackbuild --stash kiwi --target-dir kiwi kiwi",
                "k stackbuild --stash kiwi --target-dir kiwi --",
            ),
            (
                "k --profile kiwi stackbuild --stash a kiwi",
                "k --profile kiwi stackbuild --stash a --",
            ),
            (
                "k --debug stackbuild --stash a kiwi",
                "k --debug stackbuild --stash a --",
            ),
            ("k stackbuild --stash a -- kiwi", "k stackbuild --stash a -- kiwi"),
            ("k rebuild --root a kiwi", "k rebuild --root a kiwi"),
        ];
        for (given, want) in cases {
            let got = kiwi_word_as_separator(given.split(' ').map(OsString::from));
            assert_eq!(got, want.split(' ').map(OsString::from).collect::<Vec<_>>(), "{given}");
        }
    }

    #[test]
    fn every_help_line_fits_80_columns() {
        let mut cmd = command();
        let mut helps = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            helps.push(sub.render_long_help().to_string());
        }
        for help in helps {
            for line in help.lines() {
                assert!(line.chars().count() <= 80, "too long: {line:?}");
            }
        }
    }
}
