//! A real container registry on 127.0.0.1 for tests: Debian's
//! `docker-registry` (distribution 2.8) on a free port, storage in a temp
//! dir, killed on drop. Plain HTTP (clients pass `--tls-verify=false`), or
//! TLS with a CA made here by openssl plus htpasswd (bcrypt) logins.
//!
//! Distribution writes its access log (combined log format) to stdout and
//! its own log to stderr; both go to files in the temp dir, and
//! [`Registry::access_log`] reads the first, so a test can count requests:
//! `"GET /v2/ns/x/blobs/sha256:... HTTP/1.1" 200 ...`.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a registry may take to answer `GET /v2/` after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a start is retried when another process took the port first.
const START_ATTEMPTS: usize = 3;

/// A login the TLS registry accepts.
#[derive(Debug, Clone)]
pub struct Login {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    login: Option<Login>,
}

impl Registry {
    /// A registry speaking plain HTTP, without authentication.
    pub fn plain() -> Registry {
        Registry::start(None)
    }

    /// A registry speaking HTTPS with a certificate for 127.0.0.1 signed by
    /// a CA of its own (see [`Registry::cert_dir`]), accepting only `login`.
    pub fn tls_auth(login: Login) -> Registry {
        Registry::start(Some(login))
    }

    fn start(login: Option<Login>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("registry-")
            .tempdir()
            .expect("creating the registry's temp dir");
        if let Some(l) = &login {
            make_certificates(dir.path());
            write_htpasswd(&dir.path().join("htpasswd"), l);
        }
        let mut last_log = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let config = dir.path().join("config.yml");
            fs::write(&config, config_yml(dir.path(), port, login.is_some())).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(fs::File::create(dir.path().join("access.log")).unwrap())
                .stderr(fs::File::create(dir.path().join("registry.log")).unwrap())
                .spawn()
                .expect("starting docker-registry (contrib/setup.sh installs it)");
            match wait_until_ready(&mut child, port, dir.path()) {
                Ok(()) => {
                    return Registry {
                        child: Some(child),
                        dir,
                        port,
                        login,
                    }
                }
                Err(log) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_log = log;
                    // Another process may have taken the port between our probe
                    // and the registry's bind: then try another one.
                    if !last_log.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("docker-registry did not start:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, the registry part of a `docker://` reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/path`.
    pub fn docker(&self, path: &str) -> String {
        format!("docker://{}/{path}", self.host())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login it accepts (TLS registries only).
    pub fn login(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// A directory holding only the CA certificate as `ca.crt`: what
    /// `--cert-dir` wants (TLS registries only).
    pub fn cert_dir(&self) -> PathBuf {
        assert!(self.login.is_some(), "a plain registry has no certificates");
        self.dir.path().join("certs")
    }

    /// The access log so far, one request a line.
    pub fn access_log(&self) -> Vec<String> {
        let text = fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        text.lines().map(str::to_string).collect()
    }

    /// The registry's own log (errors, startup).
    pub fn server_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Deletes a blob's data from the registry's storage, as a damaged or
    /// garbage-collected registry would lose it: manifests naming it are still
    /// served, a GET of the blob answers 404.
    pub fn lose_blob(&self, digest: &str) {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let data = self
            .dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        fs::remove_file(&data).unwrap_or_else(|e| panic!("removing {}: {e}", data.display()));
    }

    /// Stops the registry: later connections to its port are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The request of an access-log line: `(method, path with query, status)`.
pub fn request(line: &str) -> Option<(&str, &str, u16)> {
    let (_, rest) = line.split_once('"')?;
    let (req, rest) = rest.split_once('"')?;
    let mut parts = req.split(' ');
    let (method, path) = (parts.next()?, parts.next()?);
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some((method, path, status))
}

/// `GET /v2/<repo>/blobs/<digest>` lines of `lines`: the blob downloads.
pub fn blob_gets(lines: &[String], repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/blobs/sha256:");
    lines
        .iter()
        .filter_map(|l| request(l))
        .filter(|(m, p, _)| *m == "GET" && p.starts_with(&prefix))
        .map(|(_, p, _)| p.trim_start_matches(&format!("/v2/{repo}/blobs/")).to_string())
        .collect()
}

/// Requests on `/v2/<repo>/blobs/uploads/`: upload starts (`POST`), chunks
/// (`PATCH`) and ends (`PUT`), whatever their status.
pub fn blob_upload_requests(lines: &[String], repo: &str) -> Vec<(String, String)> {
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    lines
        .iter()
        .filter_map(|l| request(l))
        .filter(|(_, p, _)| p.starts_with(&prefix))
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect()
}

/// The digests of the blobs whose upload completed (`PUT .../uploads/ID?...digest=D`, 201).
pub fn uploaded_blobs(lines: &[String], repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/blobs/uploads/");
    lines
        .iter()
        .filter_map(|l| request(l))
        .filter(|(m, p, s)| *m == "PUT" && *s == 201 && p.starts_with(&prefix))
        .filter_map(|(_, p, _)| {
            let query = p.split_once('?')?.1;
            let d = query.split('&').find_map(|kv| kv.strip_prefix("digest="))?;
            Some(d.replace("%3A", ":").replace("%3a", ":"))
        })
        .collect()
}

/// Polls `GET /v2/` until any HTTP answer comes (401 with auth, and a TLS
/// server answers a plain-HTTP request with 400: both mean it serves).
fn wait_until_ready(child: &mut Child, port: u16, dir: &Path) -> Result<(), String> {
    let log = || fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!("docker-registry exited ({status}):\n{}", log()));
        }
        if http_answers(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "docker-registry did not answer GET /v2/ within {START_TIMEOUT:?}:\n{}",
        log()
    ))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("binding a free port on 127.0.0.1");
    listener.local_addr().unwrap().port()
}

fn http_answers(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}

fn config_yml(dir: &Path, port: u16, tls_auth: bool) -> String {
    let d = dir.display();
    let mut config = format!(
        "version: 0.1
log:
  level: info
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {d}/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: kiwi-stackbuild-test
"
    );
    if tls_auth {
        config.push_str(&format!(
            "  tls:
    certificate: {d}/server/server.crt
    key: {d}/server/server.key
auth:
  htpasswd:
    realm: kiwi-stackbuild-test
    path: {d}/htpasswd
"
        ));
    }
    config
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `certs/ca.crt` (a CA) and `server/server.{crt,key}` (127.0.0.1, IP SAN,
/// signed by it), valid for two days. The CA key stays in `server/`, never
/// in the cert dir: containers/image reads every `*.key` there as a client key.
fn make_certificates(dir: &Path) {
    let (certs, server) = (dir.join("certs"), dir.join("server"));
    fs::create_dir_all(&certs).unwrap();
    fs::create_dir_all(&server).unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "server/ca.key",
        "-out",
        "certs/ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=kiwi-stackbuild test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server/server.key",
        "-out",
        "server/server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &csr);
    fs::write(
        server.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server/server.csr",
            "-CA",
            "certs/ca.crt",
            "-CAkey",
            "server/ca.key",
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            "server/ext.cnf",
            "-out",
            "server/server.crt",
        ],
    );
}

fn write_htpasswd(path: &Path, login: &Login) {
    let out = Command::new("htpasswd")
        .args(["-Bbn", &login.user, &login.password])
        .stdin(Stdio::null())
        .output()
        .expect("running htpasswd (apache2-utils)");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(path, &out.stdout).unwrap();
}
