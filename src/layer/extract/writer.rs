//! Whole regular files written on a few threads while the applier goes on
//! with the next entries: creating a file is the slow part of an unpack,
//! and the disk takes several at once.
//!
//! The applier still decides everything in order. A file is handed over
//! with the handle of its parent, already walked from the root, and is made
//! there as the unpacker makes it (`O_CREAT | O_EXCL | O_NOFOLLOW`, owner
//! before mode, then xattrs and times). What is in flight is bounded by
//! [`BUDGET`] bytes and [`JOBS`] files; the unpacker waits for all of it
//! before anything that could meet a pending path (see `Disk::settle`).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use color_eyre::eyre::{eyre, Report, Result};
use rustix::fs::{self as rfs, Mode, OFlags};

use super::{os, set_owner_mode_xattrs, times};
use crate::fsutil::Pieces;
use crate::layer::{show, split, EntryError, Meta};

/// Bytes of file content in flight at most, and the largest file handed
/// over (a larger one is written inline). The files of a root are mostly
/// small: 8 MiB keeps 16 of them in flight and an unpack's peak RSS near
/// where it was with one thread.
pub const BUDGET: u64 = 8 << 20;
/// Files in flight at most. Each holds its parent's handle, which may be
/// one the handle cache has let go: with the cache's 32 this keeps an unpack
/// within an open-file limit of 64.
const JOBS: usize = 16;
/// Writer threads.
const THREADS: usize = 2;

/// One file to create: `path` is what messages name, its last component
/// the name made in `parent`.
pub struct Job {
    /// The parent directory.
    pub parent: Arc<OwnedFd>,
    /// The entry's clean path.
    pub path: Vec<u8>,
    /// Its metadata.
    pub meta: Meta,
    /// Its whole content.
    pub data: Vec<u8>,
    /// Whether owners are set.
    pub owners: bool,
}

/// What a finished job reports back.
struct Done {
    path: Vec<u8>,
    size: u64,
    result: Result<()>,
}

/// The writer threads and what is in flight on them.
pub struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    pending: HashSet<Vec<u8>>,
    bytes: u64,
}

impl Pool {
    /// Starts the writer threads.
    pub fn new() -> Pool {
        let (jobs, queue) = sync_channel::<Job>(JOBS);
        let queue = Arc::new(Mutex::new(queue));
        let (report, done) = channel();
        let threads = (0..THREADS)
            .map(|_| {
                let queue = queue.clone();
                let report: Sender<Done> = report.clone();
                thread::spawn(move || loop {
                    let job = queue.lock().map_err(|_| ()).and_then(|q| q.recv().map_err(|_| ()));
                    let Ok(job) = job else { return };
                    let (path, size) = (job.path.clone(), job.data.len() as u64);
                    let result = write(job);
                    if report.send(Done { path, size, result }).is_err() {
                        return;
                    }
                })
            })
            .collect();
        Pool {
            jobs: Some(jobs),
            done,
            threads,
            pending: HashSet::new(),
            bytes: 0,
        }
    }

    /// Whether `path` is a file still being written.
    pub fn is_pending(&self, path: &[u8]) -> bool {
        self.pending.contains(path)
    }

    /// Hands `job` to a writer, once what is in flight leaves room for it.
    pub fn submit(&mut self, job: Job) -> Result<()> {
        let size = job.data.len() as u64;
        while !self.pending.is_empty() && (self.pending.len() >= JOBS || self.bytes + size > BUDGET) {
            self.complete_one()?;
        }
        self.pending.insert(job.path.clone());
        self.bytes += size;
        let stopped = || eyre!("the file writers have stopped");
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())
    }

    /// Waits until every file handed over is written; the first failure is
    /// the error, naming its entry.
    pub fn settle(&mut self) -> Result<()> {
        while !self.pending.is_empty() {
            self.complete_one()?;
        }
        Ok(())
    }

    fn complete_one(&mut self) -> Result<()> {
        let done = self.done.recv().map_err(|_| eyre!("the file writers have stopped"))?;
        self.pending.remove(&done.path);
        self.bytes -= done.size;
        done.result
            .map_err(|e| Report::new(EntryError(format!("{}: {e:#}", show(&done.path)))))
    }
}

impl Drop for Pool {
    /// Ends the threads once they are done: nothing writes into the root
    /// after the unpacker is gone (a failed unpack then removes it).
    fn drop(&mut self) {
        self.jobs = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn write(job: Job) -> Result<()> {
    let name = split(&job.path).1;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut file = File::from(rfs::openat(&*job.parent, os(name), flags, Mode::from_raw_mode(0o600))?);
    Pieces(&mut file).write_all(&job.data)?;
    set_owner_mode_xattrs(&file, &job.meta, false, job.owners)?;
    rfs::futimens(&file, &times(job.meta.mtime))?;
    Ok(())
}
