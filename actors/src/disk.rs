//! The file system under a node's store: body segments, the shared spool, the bodies directory and
//! the redb file. A node uses [`RealDisk`] (std::fs, a real fdatasync per sync, a real fsync of the
//! directory); the simulator uses [`crate::sim_disk::SimDisk`], an in-memory file system that
//! keeps apart what is written and what is durable, so a simulated crash loses exactly what a
//! power cut may lose.
//!
//! The rules the store follows, which a crash makes visible:
//! - data written to a file is durable after that file's [`DiskFile::sync_data`];
//! - a file or directory created, renamed or removed is durable in its directory only after
//!   [`Disk::sync_dir`] of that directory (a synced file whose directory entry is not is lost).

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A point in the commit path where a simulated crash may be switched on (FoundationDB's BUGGIFY).
/// A real disk never crashes there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CrashPoint {
    /// A group's bodies are written to the segment but not synced.
    BeforeSegmentSync,
    /// The segment is fdatasynced; the store transaction that names its bodies is not committed.
    AfterSegmentSync,
    /// The store commit is durable; nobody has been answered.
    AfterCommit,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 3] = [
        CrashPoint::BeforeSegmentSync,
        CrashPoint::AfterSegmentSync,
        CrashPoint::AfterCommit,
    ];
}

/// A file opened on a [`Disk`].
#[allow(clippy::len_without_is_empty)] // a file's length, as redb's StorageBackend has it
pub trait DiskFile: Send + Sync {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Writes `parts` back to back from `offset`: one system call for many where the file
    /// system has one (`pwritev`), else one write each.
    fn write_all_gathered_at(&self, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
        for part in parts {
            self.write_all_at(part, offset)?;
            offset += part.len() as u64;
        }
        Ok(())
    }
    /// fdatasync: what was written to this file is durable once this returns.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

/// The file system a store lives on.
pub trait Disk: Send + Sync + Debug + 'static {
    /// Creates a directory and its missing parents (not durable until the parents are synced).
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// fsync of a directory: the entries created, renamed or removed in it are durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// The names of a directory's entries, in no particular order.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Opens a file: for reading only, or for reading and writing, created if missing (never
    /// truncated).
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn DiskFile>>;
    /// The length of a file, or NotFound.
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file within its directory (atomic: a crash leaves the old name or the new one).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Opens (or creates) the redb database at `path` on this disk.
    fn open_database(
        &self,
        builder: &redb::Builder,
        path: &Path,
    ) -> Result<redb::Database, redb::DatabaseError>;
    /// A point in the commit path where a crash may be injected. An error means the node crashed
    /// right here: nothing after this point may reach the disk or anybody waiting for an answer.
    fn crash_point(&self, _point: CrashPoint) -> io::Result<()> {
        Ok(())
    }
}

/// The most parts one `pwritev` takes (Linux's `IOV_MAX`).
const MAX_GATHERED_PARTS: usize = 1024;

/// The operating system's file system: what a node runs on.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealDisk;

impl DiskFile for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn write_all_gathered_at(&self, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts
            .iter()
            .filter(|part| !part.is_empty())
            .map(|part| IoSlice::new(part))
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let count = rest.len().min(MAX_GATHERED_PARTS);
            match rustix::io::pwritev(self, &rest[..count], offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    offset += written as u64;
                    IoSlice::advance_slices(&mut rest, written);
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl Disk for RealDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(path)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn DiskFile>> {
        let file = if write {
            OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(false)
                .open(path)?
        } else {
            File::open(path)?
        };
        Ok(Box::new(file))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn open_database(
        &self,
        builder: &redb::Builder,
        path: &Path,
    ) -> Result<redb::Database, redb::DatabaseError> {
        // redb's own file backend: its file locks refuse a second process on the same store.
        builder.create(path)
    }
}

/// Syncs `path`'s parent directory (a directory or file just created in it), if it has one.
pub fn sync_parent(disk: &dyn Disk, path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => disk.sync_dir(parent),
        _ => Ok(()),
    }
}
