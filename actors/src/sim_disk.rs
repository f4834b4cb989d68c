//! An in-memory file system for the simulator that knows what a crash may lose.
//!
//! Every file and directory keeps two states: what is visible (what reads see) and what is
//! durable (what was there at its last sync), plus the writes and directory changes made since,
//! in order. [`SimDisk::crash`] throws the visible state away and rebuilds it from the durable
//! one, keeping, as the disk's generator decides, some of the unsynced changes (a disk may have
//! written them on its own), and may tear the last unsynced write of a file at a 512-byte sector
//! boundary (a sector is written whole or not at all, as real disks promise). A directory entry
//! created or removed without a sync of its directory may be undone, so a synced file whose entry
//! was never synced can vanish.
//!
//! The handles open before a crash belong to the dead process: every operation on them fails
//! afterwards, so nothing the crashed node does later (redb's clean close, a flush still queued)
//! reaches the disk. Randomness comes only from the seed the disk is made with: the same seed and
//! the same operations give the same crash image.
//!
//! Crash triggers (BUGGIFY): a test or the simulator may arm the disk to crash at a
//! [`CrashPoint`] of the commit path or at the n-th sync from now.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{CrashPoint, Disk, DiskFile};

/// The size of a sector: a torn write keeps whole sectors only.
pub const SECTOR: u64 = 512;

/// How much of the unsynced state a crash keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrashModel {
    /// Chance that one unsynced write or directory change survives a crash anyway.
    pub keep_unsynced: f64,
    /// Chance that the last unsynced write of a file is torn (a prefix of whole sectors kept),
    /// when it is not kept whole.
    pub tear_last: f64,
}

impl CrashModel {
    /// A crash loses everything not synced: the strictest disk, for reproductions.
    pub const LOSE_ALL: CrashModel = CrashModel {
        keep_unsynced: 0.0,
        tear_last: 0.0,
    };
}

/// What makes an armed disk crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTrigger {
    /// The next time the commit path reaches this point.
    At(CrashPoint),
    /// Instead of the n-th sync (file or directory) from now, counting from 1.
    Sync(u32),
}

/// One node's simulated disk. Clones share it.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("epoch", &state.epoch)
            .field("crashes", &state.crashes)
            .finish()
    }
}

type Ino = u64;
const ROOT: Ino = 0;

struct State {
    /// Bumped by every crash: handles of an older epoch are dead.
    epoch: u64,
    /// The current epoch's process crashed (a trigger fired): its handles fail until the next
    /// [`SimDisk::restart`].
    dead: bool,
    crashes: u64,
    rng: ChaCha8Rng,
    model: CrashModel,
    armed: Option<CrashTrigger>,
    nodes: BTreeMap<Ino, Inode>,
    next_ino: Ino,
    /// Bytes the disk may hold at most (a full disk), if limited.
    capacity: Option<u64>,
}

enum Inode {
    File(SimFile),
    Dir(SimDir),
}

#[derive(Default)]
struct SimFile {
    visible: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

enum FileOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Default)]
struct SimDir {
    visible: BTreeMap<String, Ino>,
    durable: BTreeMap<String, Ino>,
    pending: Vec<DirOp>,
}

enum DirOp {
    Link(String, Ino),
    Unlink(String),
    Rename(String, String),
}

fn dead() -> io::Error {
    io::Error::other("simulated crash: this process's disk handles are gone")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

fn names(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

fn apply_write(bytes: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if bytes.len() < end {
        bytes.resize(end, 0);
    }
    bytes[offset as usize..end].copy_from_slice(data);
}

impl FileOp {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            FileOp::Write(offset, data) => apply_write(bytes, *offset, data),
            FileOp::SetLen(len) => bytes.resize(*len as usize, 0),
        }
    }
}

impl DirOp {
    fn apply(&self, entries: &mut BTreeMap<String, Ino>) {
        match self {
            DirOp::Link(name, ino) => {
                entries.insert(name.clone(), *ino);
            }
            DirOp::Unlink(name) => {
                entries.remove(name);
            }
            DirOp::Rename(from, to) => {
                if let Some(ino) = entries.remove(from) {
                    entries.insert(to.clone(), ino);
                }
            }
        }
    }
}

impl State {
    fn dir(&self, ino: Ino) -> Option<&SimDir> {
        match self.nodes.get(&ino) {
            Some(Inode::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Option<&mut SimDir> {
        match self.nodes.get_mut(&ino) {
            Some(Inode::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Option<&mut SimFile> {
        match self.nodes.get_mut(&ino) {
            Some(Inode::File(f)) => Some(f),
            _ => None,
        }
    }

    fn lookup(&self, path: &Path) -> Option<Ino> {
        let mut ino = ROOT;
        for name in names(path) {
            ino = *self.dir(ino)?.visible.get(&name)?;
        }
        Some(ino)
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent_of(&self, path: &Path) -> io::Result<(Ino, String)> {
        let mut parts = names(path);
        let last = parts
            .pop()
            .ok_or_else(|| io::Error::other("the root has no parent"))?;
        let mut ino = ROOT;
        for name in parts {
            ino = *self
                .dir(ino)
                .and_then(|d| d.visible.get(&name))
                .ok_or_else(|| not_found(path))?;
        }
        if self.dir(ino).is_none() {
            return Err(not_found(path));
        }
        Ok((ino, last))
    }

    fn new_inode(&mut self, inode: Inode) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, inode);
        ino
    }

    fn link(&mut self, dir: Ino, name: String, ino: Ino) {
        let d = self.dir_mut(dir).expect("a directory");
        d.visible.insert(name.clone(), ino);
        d.pending.push(DirOp::Link(name, ino));
    }

    fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match n {
                Inode::File(f) => f.visible.len() as u64,
                Inode::Dir(_) => 0,
            })
            .sum()
    }

    fn check_space(&self, current: u64, wanted: u64) -> io::Result<()> {
        if let Some(capacity) = self.capacity {
            if wanted > current && self.used_bytes() + (wanted - current) > capacity {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "simulated disk is full",
                ));
            }
        }
        Ok(())
    }

    /// Counts a sync against an armed trigger: true if the disk crashes instead.
    fn sync_trips(&mut self) -> bool {
        if let Some(CrashTrigger::Sync(n)) = self.armed {
            if n <= 1 {
                self.armed = None;
                return true;
            }
            self.armed = Some(CrashTrigger::Sync(n - 1));
        }
        false
    }

    /// The power cut: the visible state becomes what survives, and every handle dies.
    fn crash(&mut self) {
        let model = self.model;
        let mut rng = self.rng.clone();
        for node in self.nodes.values_mut() {
            match node {
                Inode::File(f) => {
                    let mut bytes = std::mem::take(&mut f.durable);
                    let count = f.pending.len();
                    for (i, op) in f.pending.drain(..).enumerate() {
                        if rng.random_bool(model.keep_unsynced) {
                            op.apply(&mut bytes);
                        } else if i + 1 == count && rng.random_bool(model.tear_last) {
                            if let FileOp::Write(offset, data) = &op {
                                // Whole sectors from the start of the write, never all of it.
                                let end = offset + data.len() as u64;
                                let first = (offset / SECTOR + 1) * SECTOR;
                                if first < end {
                                    let sectors = (end - first).div_ceil(SECTOR);
                                    let boundary = first + rng.random_range(0..sectors) * SECTOR;
                                    let keep = (boundary - offset) as usize;
                                    apply_write(&mut bytes, *offset, &data[..keep]);
                                }
                            }
                        }
                    }
                    f.visible = bytes.clone();
                    f.durable = bytes;
                }
                Inode::Dir(d) => {
                    let mut entries = std::mem::take(&mut d.durable);
                    for op in d.pending.drain(..) {
                        if rng.random_bool(model.keep_unsynced) {
                            op.apply(&mut entries);
                        }
                    }
                    d.visible = entries.clone();
                    d.durable = entries;
                }
            }
        }
        self.rng = rng;
        self.epoch += 1;
        self.dead = true;
        self.armed = None;
        self.crashes += 1;
    }
}

impl SimDisk {
    /// An empty disk; `seed` drives every choice a crash makes.
    pub fn new(seed: u64, model: CrashModel) -> SimDisk {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Inode::Dir(SimDir::default()));
        SimDisk {
            state: Arc::new(Mutex::new(State {
                epoch: 0,
                dead: false,
                crashes: 0,
                rng: ChaCha8Rng::seed_from_u64(seed),
                model,
                armed: None,
                nodes,
                next_ino: ROOT + 1,
                capacity: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live state of the current process, or the error a crashed one gets.
    fn live(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = self.lock();
        if state.dead {
            return Err(dead());
        }
        Ok(state)
    }

    /// Crashes now: unsynced state is lost (or partly kept, as the model and the seed say), and
    /// every handle open so far fails from now on. Does nothing to a disk already crashed.
    pub fn crash(&self) {
        let mut state = self.lock();
        if !state.dead {
            state.crash();
        }
    }

    /// Whether the current process's disk crashed (a trigger fired or [`SimDisk::crash`] ran)
    /// and the node has not been started again.
    pub fn crashed(&self) -> bool {
        self.lock().dead
    }

    /// The disk is ready for a new process (a node restarting after its crash). A trigger armed
    /// for the old process goes with it.
    pub fn restart(&self) {
        let mut state = self.lock();
        state.dead = false;
        state.armed = None;
    }

    /// How many times this disk crashed.
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// Crashes when `trigger` happens (replacing an earlier trigger). A disk whose process has
    /// crashed already is not armed: the trigger would otherwise fire inside the restarted
    /// process's start (simulator, seed 22421).
    pub fn arm(&self, trigger: CrashTrigger) {
        let mut state = self.lock();
        if !state.dead {
            state.armed = Some(trigger);
        }
    }

    pub fn disarm(&self) {
        self.lock().armed = None;
    }

    pub fn armed(&self) -> Option<CrashTrigger> {
        self.lock().armed
    }

    /// Limits the bytes the disk holds (None: unlimited); writes beyond fail as a full disk.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// The durable content of a file (what a crash now would surely keep), if its entry is
    /// durable too. For tests.
    pub fn durable_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.lock();
        let mut ino = ROOT;
        for name in names(path) {
            ino = *state.dir(ino)?.durable.get(&name)?;
        }
        match state.nodes.get(&ino) {
            Some(Inode::File(f)) => Some(f.durable.clone()),
            _ => None,
        }
    }

    /// A new disk holding exactly what this one holds durably now (what a crash that keeps
    /// nothing unsynced would leave), as a process starting on it would find it. This disk is
    /// left as it is: the simulator reads another node's durable state through the copy (what
    /// survives elsewhere when a node is wiped) without touching that node.
    pub fn durable_image(&self) -> SimDisk {
        let state = self.lock();
        let nodes = state
            .nodes
            .iter()
            .map(|(ino, node)| {
                let copy = match node {
                    Inode::File(f) => Inode::File(SimFile {
                        visible: f.durable.clone(),
                        durable: f.durable.clone(),
                        pending: Vec::new(),
                    }),
                    Inode::Dir(d) => Inode::Dir(SimDir {
                        visible: d.durable.clone(),
                        durable: d.durable.clone(),
                        pending: Vec::new(),
                    }),
                };
                (*ino, copy)
            })
            .collect();
        SimDisk {
            state: Arc::new(Mutex::new(State {
                epoch: 0,
                dead: false,
                crashes: 0,
                rng: ChaCha8Rng::seed_from_u64(0),
                model: CrashModel::LOSE_ALL,
                armed: None,
                nodes,
                next_ino: state.next_ino,
                capacity: None,
            })),
        }
    }

    fn handle(&self, ino: Ino, epoch: u64, write: bool) -> SimHandle {
        SimHandle {
            disk: self.clone(),
            ino,
            epoch,
            write,
        }
    }
}

/// An open file of a [`SimDisk`].
pub struct SimHandle {
    disk: SimDisk,
    ino: Ino,
    epoch: u64,
    write: bool,
}

impl SimHandle {
    fn with<T>(&self, f: impl FnOnce(&mut State, Ino) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.lock();
        if state.dead || state.epoch != self.epoch {
            return Err(dead());
        }
        f(&mut state, self.ino)
    }

    fn writable(&self) -> io::Result<()> {
        if self.write {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "the file is gone")
}

impl DiskFile for SimHandle {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|state, ino| {
            let file = state.file_mut(ino).ok_or_else(gone)?;
            let start = offset as usize;
            let source = file.visible.get(start..start + buf.len()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file")
            })?;
            buf.copy_from_slice(source);
            Ok(())
        })
    }

    fn write_all_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.writable()?;
        self.with(|state, ino| {
            let current = state.file_mut(ino).ok_or_else(gone)?.visible.len() as u64;
            state.check_space(current, offset + data.len() as u64)?;
            let file = state.file_mut(ino).expect("checked");
            apply_write(&mut file.visible, offset, data);
            file.pending.push(FileOp::Write(offset, data.to_vec()));
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, ino| {
            if state.sync_trips() {
                state.crash();
                return Err(dead());
            }
            let file = state.file_mut(ino).ok_or_else(gone)?;
            let mut durable = std::mem::take(&mut file.durable);
            for op in file.pending.drain(..) {
                op.apply(&mut durable);
            }
            file.durable = durable;
            Ok(())
        })
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.writable()?;
        self.with(|state, ino| {
            let current = state.file_mut(ino).ok_or_else(gone)?.visible.len() as u64;
            state.check_space(current, len)?;
            let file = state.file_mut(ino).expect("checked");
            file.visible.resize(len as usize, 0);
            file.pending.push(FileOp::SetLen(len));
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|state, ino| Ok(state.file_mut(ino).ok_or_else(gone)?.visible.len() as u64))
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let mut ino = ROOT;
        for name in names(path) {
            let found = state
                .dir(ino)
                .ok_or_else(|| not_found(path))?
                .visible
                .get(&name)
                .copied();
            ino = match found {
                Some(child) => {
                    if state.dir(child).is_none() {
                        return Err(io::Error::new(
                            io::ErrorKind::AlreadyExists,
                            format!("{}: a file is in the way", path.display()),
                        ));
                    }
                    child
                }
                None => {
                    let child = state.new_inode(Inode::Dir(SimDir::default()));
                    state.link(ino, name, child);
                    child
                }
            };
        }
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let ino = state.lookup(path).ok_or_else(|| not_found(path))?;
        if state.sync_trips() {
            state.crash();
            return Err(dead());
        }
        let dir = state.dir_mut(ino).ok_or_else(|| not_found(path))?;
        let mut durable = std::mem::take(&mut dir.durable);
        for op in dir.pending.drain(..) {
            op.apply(&mut durable);
        }
        dir.durable = durable;
        Ok(())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let state = self.live()?;
        let ino = state.lookup(path).ok_or_else(|| not_found(path))?;
        let dir = state.dir(ino).ok_or_else(|| not_found(path))?;
        Ok(dir.visible.keys().cloned().collect())
    }

    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.live()?;
        let ino = match state.lookup(path) {
            Some(ino) => ino,
            None if write => {
                let (parent, name) = state.parent_of(path)?;
                let ino = state.new_inode(Inode::File(SimFile::default()));
                state.link(parent, name, ino);
                ino
            }
            None => return Err(not_found(path)),
        };
        if state.file_mut(ino).is_none() {
            return Err(io::Error::other(format!("{}: is a directory", path.display())));
        }
        let epoch = state.epoch;
        drop(state);
        Ok(Box::new(self.handle(ino, epoch, write)))
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let mut state = self.live()?;
        let ino = state.lookup(path).ok_or_else(|| not_found(path))?;
        let file = state.file_mut(ino).ok_or_else(|| not_found(path))?;
        Ok(file.visible.len() as u64)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (parent, name) = state.parent_of(path)?;
        let dir = state.dir_mut(parent).expect("a directory");
        if dir.visible.remove(&name).is_none() {
            return Err(not_found(path));
        }
        dir.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        let (parent, old) = state.parent_of(from)?;
        let (target_parent, new) = state.parent_of(to)?;
        if parent != target_parent {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the simulated disk renames within one directory only",
            ));
        }
        let dir = state.dir_mut(parent).expect("a directory");
        let ino = dir.visible.remove(&old).ok_or_else(|| not_found(from))?;
        dir.visible.insert(new.clone(), ino);
        dir.pending.push(DirOp::Rename(old, new));
        Ok(())
    }

    fn open_database(
        &self,
        builder: &redb::Builder,
        path: &Path,
    ) -> Result<redb::Database, redb::DatabaseError> {
        let file = self.open(path, true)?;
        builder.create_with_backend(SimBackend(file))
    }

    fn crash_point(&self, point: CrashPoint) -> io::Result<()> {
        let mut state = self.live()?;
        if state.armed == Some(CrashTrigger::At(point)) {
            state.crash();
            return Err(dead());
        }
        Ok(())
    }
}

/// redb's storage on a simulated file: a crash loses the store's unsynced pages too, and redb
/// recovers from its last durable commit.
struct SimBackend(Box<dyn DiskFile>);

impl std::fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimBackend").finish()
    }
}

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write_all_at(data, offset)
    }
}
