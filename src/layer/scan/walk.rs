//! The walk of a scan: directories are read on several threads, each entry
//! relative to its directory's open handle (no path is resolved from the
//! root again but for xattrs), and the entries handed over in walk order
//! whatever thread read them.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use color_eyre::eyre::{eyre, Result, WrapErr};
use rustix::fs::{self, AtFlags, Dir, FileType, OFlags, Statx, StatxFlags};

use super::{read_xattrs, Previous, Stamp};
use crate::layer::{Kind, Meta, Time};

/// What every thread of a walk reads by.
pub(super) struct Context<'a> {
    pub root: &'a Path,
    pub root_dev: u64,
    pub mounts: &'a HashSet<Vec<u8>>,
    pub previous: Option<Previous<'a>>,
}

/// One entry as read.
pub(super) struct Read {
    pub meta: Meta,
    /// What a mount hides: no content is read.
    pub hidden: bool,
    /// The inode number of a file with several names.
    pub link: Option<u64>,
    pub stamp: Option<Stamp>,
    /// Taken from the previous scan's record, not read.
    pub reused: bool,
    /// A directory to go into.
    pub descend: bool,
}

/// The status of `name` in `dir`, not following a symlink.
pub(super) fn stat(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> std::io::Result<Statx> {
    let want = StatxFlags::TYPE
        | StatxFlags::MODE
        | StatxFlags::NLINK
        | StatxFlags::UID
        | StatxFlags::GID
        | StatxFlags::MTIME
        | StatxFlags::CTIME
        | StatxFlags::INO
        | StatxFlags::SIZE;
    Ok(fs::statx(dir, name, flags | AtFlags::SYMLINK_NOFOLLOW, want)?)
}

/// A device number of a status, as one number.
pub(super) fn device(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 32) | u64::from(minor)
}

impl Context<'_> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// Reads the entry `rel`, `name` in `dir`, whose status is `st`; `None`
    /// for a socket, which cannot be stored. What is mounted is kept as its
    /// mount point: a directory without its contents or a file without
    /// content.
    pub fn read(&self, dir: BorrowedFd<'_>, rel: &[u8], name: &CStr, st: &Statx) -> Result<Option<Read>> {
        let mounted = device(st.stx_dev_major, st.stx_dev_minor) != self.root_dev || self.mounts.contains(rel);
        let ft = FileType::from_raw_mode(st.stx_mode.into());
        let is_dir = ft == FileType::Directory;
        if mounted && is_dir {
            log::debug!("leaving out what is mounted on {}", self.path(rel).display());
        }
        let ctime = Time {
            sec: st.stx_ctime.tv_sec,
            nsec: st.stx_ctime.tv_nsec,
        };
        // A file system that does not give both is read every time.
        let stamped = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::INO | StatxFlags::CTIME);
        let stamp = Stamp::new(st.stx_ino, ctime).filter(|_| stamped && !mounted);
        let known = stamp.and_then(|stamp| self.known(rel, stamp, st));
        // Any non-directory can have several names: files, symlinks, nodes.
        let link = (!is_dir && st.stx_nlink > 1 && !mounted).then_some(st.stx_ino);
        let kind = match ft {
            FileType::Directory => Kind::Dir,
            FileType::Symlink => match &known {
                Some(Meta {
                    kind: Kind::Symlink { target },
                    ..
                }) => Kind::Symlink { target: target.clone() },
                _ => Kind::Symlink {
                    target: fs::readlinkat(dir, name, Vec::new())
                        .wrap_err_with(|| format!("reading link {}", self.path(rel).display()))?
                        .into_bytes(),
                },
            },
            FileType::RegularFile => Kind::File {
                size: if mounted { 0 } else { st.stx_size },
            },
            FileType::CharacterDevice => Kind::Char {
                major: st.stx_rdev_major,
                minor: st.stx_rdev_minor,
            },
            FileType::BlockDevice => Kind::Block {
                major: st.stx_rdev_major,
                minor: st.stx_rdev_minor,
            },
            FileType::Fifo => Kind::Fifo,
            _ => {
                log::warn!(
                    "leaving out {}: a socket cannot be stored in a layer",
                    self.path(rel).display()
                );
                return Ok(None);
            }
        };
        let reused = known.is_some();
        let xattrs = match known {
            _ if mounted => Vec::new(),
            Some(meta) => meta.xattrs,
            None => read_xattrs(&self.path(rel))?,
        };
        let meta = Meta {
            kind,
            mode: u32::from(st.stx_mode) & 0o7777,
            uid: st.stx_uid.into(),
            gid: st.stx_gid.into(),
            mtime: Time {
                sec: st.stx_mtime.tv_sec,
                nsec: st.stx_mtime.tv_nsec,
            },
            xattrs,
        };
        Ok(Some(Read {
            meta,
            hidden: mounted,
            link,
            stamp,
            reused,
            descend: is_dir && !mounted,
        }))
    }

    /// What the previous scan recorded of the entry `rel`, when its inode
    /// (number, change time, type and size) is as it was then and changed
    /// well before that scan began.
    fn known(&self, rel: &[u8], now: Stamp, st: &Statx) -> Option<Meta> {
        let p = self.previous.as_ref()?;
        let inode = p.tree.inode(rel)?;
        let then = (*p.record.stamps.get(inode as usize)?)?;
        if then != now || !then.changed_before(p.record.trusted_before) {
            return None;
        }
        let meta = p.tree.metas().get(inode);
        let ft = FileType::from_raw_mode(st.stx_mode.into());
        let size = if ft == FileType::RegularFile { st.stx_size } else { 0 };
        (file_type(&meta.kind) == ft && p.tree.metas().file_size(inode) == size).then_some(meta)
    }
}

fn file_type(kind: &Kind) -> FileType {
    match kind {
        Kind::File { .. } => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink { .. } => FileType::Symlink,
        Kind::Char { .. } => FileType::CharacterDevice,
        Kind::Block { .. } => FileType::BlockDevice,
        Kind::Fifo => FileType::Fifo,
    }
}

/// At most this many entries read ahead of the one the walk hands over
/// next are held before helper threads wait: the walk is not to hold a
/// second copy of a large tree.
const AHEAD: usize = 8192;

/// A directory to read: `name` in the directory `at` (held open by every
/// job of its children, and closed with the last).
struct Job {
    id: u32,
    rel: Vec<u8>,
    at: Arc<Dir>,
    name: CString,
}

/// The entries of one directory, sorted, each with the job that reads it
/// when it is a directory to go into.
type Listing = Vec<(Vec<u8>, Option<Read>, Option<u32>)>;

#[derive(Default)]
struct State {
    /// Directories to read, the next in walk order last.
    stack: Vec<Job>,
    done: HashMap<u32, Result<Listing>>,
    /// Entries in `done`.
    buffered: usize,
    /// Threads waiting for a change.
    sleeping: usize,
    /// The walk is over (or failed): helper threads end.
    stop: bool,
    /// A helper thread panicked: what it was reading will not come.
    broken: bool,
}

struct Walk<'a> {
    cx: &'a Context<'a>,
    state: Mutex<State>,
    changed: Condvar,
    next_id: AtomicU32,
}

/// Reads everything below the directory `root` (the walk's root, open) on
/// `jobs` threads, this one among them, and hands every entry to `f` in walk
/// order (names sorted bytewise, parents before children) with its path.
pub(super) fn walk(
    cx: &Context<'_>,
    root: Dir,
    jobs: usize,
    f: &mut dyn FnMut(&[u8], Read) -> Result<()>,
) -> Result<()> {
    let w = Walk {
        cx,
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
        next_id: AtomicU32::new(1),
    };
    w.lock().stack.push(Job {
        id: 0,
        rel: Vec::new(),
        at: Arc::new(root),
        name: c".".to_owned(),
    });
    std::thread::scope(|scope| {
        for _ in 1..jobs.max(1) {
            scope.spawn(|| w.help());
        }
        let _over = Over(&w);
        w.emit(0, &mut Vec::new(), f)
    })
}

/// Ends the helper threads when the walk is over, however it ends.
struct Over<'a, 'b>(&'a Walk<'b>);

impl Drop for Over<'_, '_> {
    fn drop(&mut self) {
        self.0.lock().stop = true;
        self.0.changed.notify_all();
    }
}

/// Marks the walk as broken when a helper thread panics.
struct Helper<'a, 'b>(&'a Walk<'b>);

impl Drop for Helper<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().broken = true;
            self.0.changed.notify_all();
        }
    }
}

impl Walk<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the next directory on the stack, the lock let go meanwhile, or
    /// sleeps when there is none; returns with the lock held again.
    fn step<'g>(&'g self, mut s: std::sync::MutexGuard<'g, State>) -> std::sync::MutexGuard<'g, State> {
        match s.stack.pop() {
            Some(job) => {
                drop(s);
                self.run(job);
                self.lock()
            }
            None => self.sleep(s),
        }
    }

    fn sleep<'g>(&self, mut s: std::sync::MutexGuard<'g, State>) -> std::sync::MutexGuard<'g, State> {
        s.sleeping += 1;
        let mut s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        s.sleeping -= 1;
        s
    }

    /// Hands over the entries of the directory job `id` reads, each
    /// directory's own entries right after it.
    fn emit(&self, id: u32, rel: &mut Vec<u8>, f: &mut dyn FnMut(&[u8], Read) -> Result<()>) -> Result<()> {
        let listing = self.wait(id)?;
        let parent = rel.len();
        for (name, read, job) in listing {
            if parent > 0 {
                rel.push(b'/');
            }
            rel.extend_from_slice(&name);
            if let Some(read) = read {
                f(rel, read)?;
            }
            if let Some(job) = job {
                self.emit(job, rel, f)?;
            }
            rel.truncate(parent);
        }
        Ok(())
    }

    /// The listing of job `id`, reading directories meanwhile (that one
    /// first, when no thread has taken it yet).
    fn wait(&self, id: u32) -> Result<Listing> {
        let mut s = self.lock();
        loop {
            if let Some(done) = s.done.remove(&id) {
                let len = done.as_ref().map_or(0, Vec::len);
                let was_full = s.buffered > AHEAD;
                s.buffered -= len;
                if was_full && s.buffered <= AHEAD && s.sleeping > 0 {
                    self.changed.notify_all();
                }
                return done;
            }
            if s.broken {
                return Err(eyre!(
                    "walking {}: a thread of the scan stopped",
                    self.cx.root.display()
                ));
            }
            s = self.step(s);
        }
    }

    /// A helper thread: reads directories until the walk is over.
    fn help(&self) {
        let _helper = Helper(self);
        let mut s = self.lock();
        loop {
            if s.stop {
                return;
            }
            if s.buffered > AHEAD {
                s = self.sleep(s);
                continue;
            }
            s = self.step(s);
        }
    }

    /// Reads the directory of `job` and publishes its listing.
    fn run(&self, job: Job) {
        let mut children = Vec::new();
        let listing = self.list(&job, &mut children);
        let mut s = self.lock();
        s.stack.extend(children.into_iter().rev());
        s.buffered += listing.as_ref().map_or(0, Vec::len);
        s.done.insert(job.id, listing);
        let wake = s.sleeping > 0;
        drop(s);
        if wake {
            self.changed.notify_all();
        }
    }

    /// Reads the directory of `job`, adding a job for each directory in it.
    fn list(&self, job: &Job, children: &mut Vec<Job>) -> Result<Listing> {
        let cx = self.cx;
        let walking = || format!("walking {}", cx.path(&job.rel).display());
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let at = job.at.fd().wrap_err_with(walking)?;
        let fd = fs::openat(at, job.name.as_c_str(), flags, fs::Mode::empty()).wrap_err_with(walking)?;
        let mut dir = Dir::new(fd).wrap_err_with(walking)?;
        let mut names = Vec::new();
        while let Some(entry) = dir.read() {
            let name = entry.wrap_err_with(walking)?.file_name().to_owned();
            if name.as_c_str() != c"." && name.as_c_str() != c".." {
                names.push(name);
            }
        }
        names.sort_unstable();
        let dir = Arc::new(dir);
        let fd = dir.fd().wrap_err_with(walking)?;
        let mut rel = job.rel.clone();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            rel.truncate(job.rel.len());
            if !rel.is_empty() {
                rel.push(b'/');
            }
            rel.extend_from_slice(name.to_bytes());
            let st =
                stat(fd, &name, AtFlags::empty()).wrap_err_with(|| format!("reading {}", cx.path(&rel).display()))?;
            let read = cx.read(fd, &rel, &name, &st)?;
            let job = read.as_ref().filter(|r| r.descend).map(|_| {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                children.push(Job {
                    id,
                    rel: rel.clone(),
                    at: Arc::clone(&dir),
                    name: name.clone(),
                });
                id
            });
            out.push((name.into_bytes(), read, job));
        }
        Ok(out)
    }
}
