//! Registry access as skopeo is told it: an auth file, credentials, TLS.
//!
//! A password given to us never reaches a child's argv or a log: it is
//! written into a 0600 auth file in a private (0700) temp dir, and skopeo
//! gets that file's path. The dir is removed on every way out: when the
//! auth is dropped, and by an interrupt (see `interrupt`).

use std::cell::RefCell;
use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{eyre, Result, WrapErr};
use color_eyre::Section;

use crate::reference::ImageReference;

/// A password: never printed, never in an argv.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `--creds USER[:PASSWORD]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: Secret,
}

/// How to reach registries: what the global options said.
#[derive(Debug, Default)]
pub struct RegistryAuth {
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
    /// `--tls-verify=false` turns this off.
    pub tls_verify: bool,
    /// `--cert-dir`.
    pub cert_dir: Option<PathBuf>,
    /// `--creds`, written to an auth file for each registry as it is used.
    creds: Option<CredsFile>,
}

/// Credentials and the private auth file that holds them for the hosts
/// seen so far.
#[derive(Debug)]
struct CredsFile {
    creds: Credentials,
    dir: crate::fsutil::Scratch,
    hosts: RefCell<Vec<String>>,
}

impl CredsFile {
    fn path(&self) -> PathBuf {
        self.dir.path().join("auth.json")
    }

    /// The auth file, holding the credentials for `host` too.
    fn for_host(&self, host: &str) -> Result<PathBuf> {
        let mut hosts = self.hosts.borrow_mut();
        if !hosts.iter().any(|h| h == host) {
            hosts.push(host.to_string());
            let tmp = self.dir.path().join(".auth.json");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_0600()
                .open(&tmp)
                .wrap_err("writing the credentials file")?;
            file.write_all(auth_json(&self.creds, &hosts).as_bytes())?;
            std::fs::rename(&tmp, self.path()).wrap_err("writing the credentials file")?;
        }
        Ok(self.path())
    }
}

/// The name of a credentials directory starts so.
const AUTH_PREFIX: &str = "kiwi-stackbuild-auth-";

/// The environment variable a password may come from instead of `--creds`.
pub const PASSWORD_ENV: &str = "KIWI_STACKBUILD_PASSWORD";

impl Credentials {
    /// Parses `USER[:PASSWORD]`; without a password it is read from
    /// `password_stdin` (`--password-stdin`, see [`read_password`]), else
    /// taken from `KIWI_STACKBUILD_PASSWORD`.
    pub fn parse(text: &str, password_stdin: Option<&mut dyn std::io::Read>) -> Result<Credentials> {
        let (user, password) = match (text.split_once(':'), password_stdin) {
            (Some(_), Some(_)) => {
                return Err(eyre!(
                    "--creds {} has a password, and --password-stdin reads one",
                    user_of(text)
                ))
                .suggestion("write --creds USER with --password-stdin")
            }
            (Some((u, p)), None) => (u.to_string(), Secret(p.to_string())),
            (None, Some(input)) => (text.to_string(), read_password(input)?),
            (None, None) => match std::env::var(PASSWORD_ENV) {
                Ok(p) => (text.to_string(), Secret(p)),
                Err(_) => {
                    return Err(eyre!("--creds {text} has no password")).suggestion(format!(
                        "pass --password-stdin and write the password to stdin, or set {PASSWORD_ENV}"
                    ))
                }
            },
        };
        if user.is_empty() {
            return Err(eyre!("--creds needs a user name before the colon"))
                .suggestion("write --creds USER:PASSWORD, or --creds USER with the password from the environment");
        }
        if password.0.is_empty() {
            return Err(eyre!("--creds {user} has an empty password"))
                .suggestion("write the password after the colon, or use --creds USER with --password-stdin");
        }
        Ok(Credentials { user, password })
    }
}

/// The user part of a `--creds` value, for messages that must not show the
/// password.
fn user_of(text: &str) -> &str {
    text.split_once(':').map_or(text, |(u, _)| u)
}

/// Reads a password as `podman login --password-stdin` does: all of
/// `input`, one trailing newline dropped. An empty password is an error.
pub fn read_password(mut input: impl std::io::Read) -> Result<Secret> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .wrap_err("reading the password from stdin")?;
    let password = text.strip_suffix('\n').unwrap_or(&text);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        return Err(eyre!("--password-stdin read an empty password"))
            .suggestion("write the password to stdin, e.g. printf %s \"$PASSWORD\" | kiwi-stackbuild ...");
    }
    Ok(Secret(password.to_string()))
}

/// The registry host of a `docker://` reference (`docker.io` when none is named).
pub fn registry_host(reference: &ImageReference) -> Option<String> {
    let ImageReference::Docker(rest) = reference else {
        return None;
    };
    Some(crate::reference::DockerRef::split(rest).registry().to_string())
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The JSON of a containers auth file holding `creds` for `hosts`.
pub fn auth_json(creds: &Credentials, hosts: &[String]) -> String {
    let token = base64(format!("{}:{}", creds.user, creds.password.0).as_bytes());
    let auths: serde_json::Map<String, serde_json::Value> = hosts
        .iter()
        .map(|h| (h.clone(), serde_json::json!({ "auth": token })))
        .collect();
    serde_json::json!({ "auths": auths }).to_string()
}

impl RegistryAuth {
    /// The options as given. With `creds`, a private temp dir (0700) will
    /// hold a 0600 auth file with them for each registry used.
    pub fn new(
        authfile: Option<PathBuf>,
        creds: Option<Credentials>,
        tls_verify: bool,
        cert_dir: Option<PathBuf>,
    ) -> Result<RegistryAuth> {
        let creds = match creds {
            Some(creds) => {
                // A run killed with SIGKILL could not remove its password.
                crate::fsutil::remove_stale(None, AUTH_PREFIX);
                let dir = crate::fsutil::private_tempdir(None, AUTH_PREFIX)
                    .wrap_err("creating a private directory for credentials")?;
                Some(CredsFile {
                    creds,
                    dir,
                    hosts: RefCell::new(Vec::new()),
                })
            }
            None => None,
        };
        Ok(RegistryAuth {
            authfile,
            tls_verify,
            cert_dir,
            creds,
        })
    }

    /// Anonymous access with TLS verified: what skopeo does by default.
    pub fn anonymous() -> RegistryAuth {
        RegistryAuth {
            tls_verify: true,
            ..RegistryAuth::default()
        }
    }

    /// skopeo options for one side of a copy (`prefix` is `src-` or `dest-`,
    /// empty for inspect); nothing for references that are not registries.
    pub fn args(&self, prefix: &str, reference: &ImageReference) -> Result<Vec<OsString>> {
        let mut out = Vec::new();
        let Some(host) = registry_host(reference) else {
            return Ok(out);
        };
        let authfile = match &self.creds {
            Some(c) => Some(c.for_host(&host)?),
            None => self.authfile.clone(),
        };
        if let Some(f) = authfile {
            out.push(format!("--{prefix}authfile").into());
            out.push(f.into_os_string());
        }
        if !self.tls_verify {
            out.push(format!("--{prefix}tls-verify=false").into());
        }
        if let Some(d) = &self.cert_dir {
            out.push(format!("--{prefix}cert-dir").into());
            out.push(d.as_os_str().to_os_string());
        }
        Ok(out)
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// What [`explain_skopeo`] says of an image or tag the registry does not have.
pub const NO_SUCH_IMAGE: &str = "the image or tag does not exist";

/// What a skopeo failure means, from its last output: unreachable registry,
/// refused credentials, unknown image, untrusted certificate.
pub fn explain_skopeo(output: &str) -> Option<(String, String)> {
    let o = output.to_lowercase();
    let found = |needles: &[&str]| needles.iter().any(|n| o.contains(n));
    // Most specific first: a port number or a blob digest can look like a
    // status code, and a missing blob must not read as a missing tag.
    if found(&[
        "connection refused",
        "no such host",
        "i/o timeout",
        "network is unreachable",
        "connection reset",
        "no route to host",
    ]) {
        return Some((
            "the registry cannot be reached".into(),
            "check the host and port, and that the registry is running".into(),
        ));
    }
    if found(&[
        "x509:",
        "certificate signed by unknown authority",
        "certificate is not valid",
        "tls: failed to verify",
    ]) {
        return Some((
            "the registry's TLS certificate is not trusted".into(),
            "pass --cert-dir DIR with the registry's CA certificate (ca.crt), or --tls-verify=false for a test registry".into(),
        ));
    }
    if found(&["http response to https client", "server gave http response"]) {
        return Some((
            "the registry speaks plain HTTP, not HTTPS".into(),
            "pass --tls-verify=false for a registry without TLS".into(),
        ));
    }
    if found(&[
        "unauthorized",
        "authentication required",
        "401 unauthorized",
        "status 401",
        "invalid username/password",
        "denied:",
    ]) {
        return Some((
            "the registry refused the credentials (401 unauthorized)".into(),
            "check --creds USER:PASSWORD or the --authfile entry for this registry".into(),
        ));
    }
    if found(&["reading blob", "fetching blob", "blob unknown", "reading config blob"]) {
        return Some((
            "the registry lacks a blob of this image: the image is damaged there".into(),
            "push the image again, or ask the registry's owner to repair it".into(),
        ));
    }
    if found(&[
        "manifest unknown",
        "name unknown",
        "not found",
        "repository name not known",
        "does not exist",
        "no such image",
    ]) {
        return Some((
            NO_SUCH_IMAGE.into(),
            "check the name and tag; skopeo list-tags docker://REPO lists the tags".into(),
        ));
    }
    None
}

/// Checks a `--cert-dir` before anything runs.
pub fn check_cert_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(eyre!("--cert-dir {} is not a directory", dir.display()))
            .suggestion("name the directory that holds the registry's CA certificate (*.crt)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        for (raw, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("user:pa:ss", "dXNlcjpwYTpzcw=="),
        ] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
    }

    #[test]
    fn passwords_come_from_creds_stdin_or_the_environment() {
        let secret = |p: &str| Secret(p.to_string());
        let c = Credentials::parse("u:p:q", None).unwrap();
        assert_eq!((c.user.as_str(), c.password), ("u", secret("p:q")));
        let c = Credentials::parse("u", Some(&mut "s\n".as_bytes())).unwrap();
        assert_eq!((c.user.as_str(), c.password), ("u", secret("s")));
        let both = Credentials::parse("u:hunter2", Some(&mut "s".as_bytes())).unwrap_err();
        assert!(!format!("{both:?}").contains("hunter2"), "{both:?}");
        assert!(Credentials::parse(":p", None).is_err());
        for (input, want) in [
            ("pw\n", Some("pw")),
            ("pw", Some("pw")),
            ("pw\r\n", Some("pw")),
            ("p w\n\n", Some("p w\n")),
            ("\n", None),
            ("", None),
        ] {
            let got = read_password(input.as_bytes()).ok();
            assert_eq!(got, want.map(secret), "{input:?}");
        }
    }

    #[test]
    fn registry_hosts() {
        let cases = [
            ("docker://localhost:5000/a/b:1", Some("localhost:5000")),
            ("docker://registry.example.org/x", Some("registry.example.org")),
            ("docker://debian:bookworm", Some("docker.io")),
            ("docker://library/debian", Some("docker.io")),
            ("oci:/tmp/x", None),
        ];
        for (r, want) in cases {
            assert_eq!(registry_host(&r.parse().unwrap()).as_deref(), want, "{r}");
        }
    }

    #[test]
    fn args_only_for_registries_and_never_the_password() {
        let r: ImageReference = "docker://localhost:5000/a:1".parse().unwrap();
        let creds = Credentials {
            user: "u".into(),
            password: Secret("hunter2".into()),
        };
        let auth = RegistryAuth::new(None, Some(creds), false, Some("/certs".into())).unwrap();
        let args = auth.args("src-", &r).unwrap();
        let file = PathBuf::from(&args[1]);
        let want: Vec<OsString> = vec![
            "--src-authfile".into(),
            file.clone().into(),
            "--src-tls-verify=false".into(),
            "--src-cert-dir".into(),
            "/certs".into(),
        ];
        assert_eq!(args, want);
        assert!(args.iter().all(|a| !a.to_string_lossy().contains("hunter2")));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("localhost:5000") && text.contains(&base64(b"u:hunter2")),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700, "the credentials dir is private");
        assert!(auth.args("src-", &"oci:/x".parse().unwrap()).unwrap().is_empty());
        let other: ImageReference = "docker://example.org/b".parse().unwrap();
        auth.args("dest-", &other).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("localhost:5000") && text.contains("example.org"),
            "{text}"
        );
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn skopeo_failures_are_explained() {
        let cases = [
            ("pinging container registry localhost:1: Get \"https://localhost:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused", "cannot be reached"),
            ("reading manifest 9 in localhost:5000/a: manifest unknown: manifest unknown", "does not exist"),
            ("initializing source docker://localhost:5000/a:1: reading manifest 1 in localhost:5000/a: unauthorized: authentication required", "refused the credentials"),
            ("x509: certificate signed by unknown authority", "not trusted"),
            ("Get \"https://127.0.0.1:40167/v2/\": dial tcp 127.0.0.1:40167: connect: connection refused", "cannot be reached"),
            ("reading blob sha256:4015aa: fetching blob: 404 (Not Found)", "lacks a blob"),
            ("http: server gave HTTP response to HTTPS client", "plain HTTP"),
        ];
        for (out, want) in cases {
            let (msg, _) = explain_skopeo(out).unwrap_or_else(|| panic!("not explained: {out}"));
            assert!(msg.contains(want), "{out} -> {msg}");
        }
        assert!(explain_skopeo("something else").is_none());
    }
}
