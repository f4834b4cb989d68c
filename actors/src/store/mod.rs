//! Durable storage of one node: one redb database for all metadata, and append-only segment files
//! for message bodies.
//!
//! Every table maps bytes to bytes; keys are built in [`keys`] so that a prefix scan yields one
//! mailbox's rows in order, values are rmp-serde. Writes never happen here directly: they are
//! collected into a [`Batch`] and applied by the [`crate::commit_group::CommitGroup`] actor,
//! which groups many batches into one transaction and one fdatasync. Reads open a redb read
//! transaction and see only committed state.

pub mod batch;
pub mod bodies;
pub mod journal;
pub mod keys;
pub mod record_codec;
pub mod uid_row;

use std::any::Any;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use mailmesh_protocol::ids::{Guid, NodeId};
use redb::{
    Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use batch::{Batch, Table};
use bodies::BodyLocation;

use crate::disk::{sync_parent, Disk, DiskFile, RealDisk};
use crate::error::StoreError;
use crate::mailbox::StoredRecord;

pub(crate) type RawTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// Node-wide values: node id, Lamport counter, append counter, last uidvalidity.
pub(crate) const META: RawTable = TableDefinition::new("meta");
/// MailboxId -> MailboxEntry (mailboxes.db, tombstones included).
pub(crate) const MAILBOXES: RawTable = TableDefinition::new("mailboxes");
/// user, name, MailboxId -> () for live mailboxes: resolves names and lists a user's mailboxes.
pub(crate) const NAMES: RawTable = TableDefinition::new("names");
/// MailboxId -> MailboxCounters (uidnext, modseq counter, digest, counts).
pub(crate) const MAILBOX_STATE: RawTable = TableDefinition::new("mailbox_state");
/// MailboxId, AppendId -> StoredRecord.
pub(crate) const MESSAGES: RawTable = TableDefinition::new("messages");
/// MailboxId, Uid, AppendId -> whether the record is shown, its modseq and flags ([`uid_row`]):
/// a uid may briefly name two records (a UID conflict).
pub(crate) const UIDS: RawTable = TableDefinition::new("uids");
/// MailboxId, ModSeq -> AppendId: records changed since a modseq.
pub(crate) const MODSEQS: RawTable = TableDefinition::new("modseqs");
/// MailboxId, entry -> StoredAnnotation.
pub(crate) const ANNOTATIONS: RawTable = TableDefinition::new("annotations");
/// user -> UserSubscriptions.
pub(crate) const SUBSCRIPTIONS: RawTable = TableDefinition::new("subscriptions");
/// user -> UserSieve.
pub(crate) const SIEVE: RawTable = TableDefinition::new("sieve");
/// Guid -> BodyLocation (segment, offset, length, reference count).
pub(crate) const BODIES: RawTable = TableDefinition::new("bodies");
/// segment, offset -> Guid: the live bodies of one segment, kept for compaction by stores of
/// format 2. Format 3 finds a segment's live bodies by a scan of [`BODIES`] instead (see
/// `CommitGroup::compact`) and drops this table when it opens an older store.
const OLD_SEGMENT_BODIES: RawTable = TableDefinition::new("segment_bodies");
/// MailboxId -> (): deleted mailboxes whose records are still being purged.
pub(crate) const PURGES: RawTable = TableDefinition::new("purges");
/// peer, item -> generation: the per-channel sync logs.
pub(crate) const SYNC_LOG: RawTable = TableDefinition::new("sync_log");
/// MailboxId, peer -> ReplicationCache.
pub(crate) const REPL_CACHE: RawTable = TableDefinition::new("repl_cache");
/// user, MailboxId -> (): every entry of a user, tombstones included (what a user's list sync sends).
pub(crate) const USER_ENTRIES: RawTable = TableDefinition::new("user_entries");
/// peer -> the peer's store incarnation last seen.
pub(crate) const PEERS: RawTable = TableDefinition::new("peers");
/// MailboxId -> PrunedSet: expunged messages compacted out of their records.
pub(crate) const PRUNED: RawTable = TableDefinition::new("pruned");
/// MailboxId -> (): mailboxes whose primary this node became, written with the entry, until it
/// has settled the uid conflicts it holds (so a crash between the two does not skip them).
pub(crate) const SETTLES: RawTable = TableDefinition::new("settles");
/// source MailboxId, first copy's AppendId -> Vec<AppendId>: moves to another mailbox whose
/// copies are durable and whose sources are not expunged yet. Written with the copies, deleted
/// with the expunge; what a crash leaves here is finished at start (no duplicate stays).
pub(crate) const MOVES: RawTable = TableDefinition::new("moves");
/// peer, item (as the sync log) -> requeue mark (u64 BE): an item queued again for a peer whose
/// store is new, to be sent whole until a sync of it succeeds (so a restart in between does not
/// send it with echo suppression, engine bug 21). Written with the requeue, deleted by the
/// Channel after the whole sync.
pub(crate) const SYNC_WHOLE: RawTable = TableDefinition::new("sync_whole");
/// MailboxId, uid, AppendId -> (): what a copy let go showed at each uid (its live, shown
/// records, written by the purge), so that held again it never shows another message there
/// first. A row goes once its uid is settled again here (the message back at it, or the uid
/// retired).
pub(crate) const SHOWN_BEFORE: RawTable = TableDefinition::new("shown_before");

const ALL_TABLES: [RawTable; 21] = [
    META,
    MAILBOXES,
    NAMES,
    MAILBOX_STATE,
    MESSAGES,
    UIDS,
    MODSEQS,
    ANNOTATIONS,
    SUBSCRIPTIONS,
    SIEVE,
    BODIES,
    PURGES,
    SYNC_LOG,
    REPL_CACHE,
    USER_ENTRIES,
    PEERS,
    PRUNED,
    SETTLES,
    MOVES,
    SYNC_WHOLE,
    SHOWN_BEFORE,
];

pub(crate) const META_NODE: &[u8] = b"node";
pub(crate) const META_COUNTERS: &[u8] = b"counters";
/// The [`journal::JournalMark`] of the last commit.
pub(crate) const META_JOURNAL: &[u8] = b"journal";
/// The store's format ([`STORE_FORMAT`]), a big-endian u32.
pub(crate) const META_FORMAT: &[u8] = b"format";

/// The newest store format this build reads and the one it writes. A build refuses a store
/// of a newer format instead of misreading it: a build from before the group journal would open
/// a store with journal records past its last durable commit and silently lose those
/// acknowledged groups, as it does not know to replay them.
///
/// 1: before the group journal (stores of then carry no format key).
/// 2: the group journal (`store/journal.rs`).
/// 3: no `segment_bodies` reverse index. A new body cost five index inserts, that one among
///    them, on every write path (the 2 KB initial sync does 10,000); compaction, rare and run on
///    demand, now scans the body index instead. A format-2 build would read the missing reverse
///    index as "nothing live here" and compact live bodies away, so it must refuse the store.
pub const STORE_FORMAT: u32 = 3;

/// The node-wide counters, persisted with every commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterState {
    pub lamport: u64,
    pub next_append: u64,
    pub last_uidvalidity: u32,
    #[serde(default)]
    pub log_generation: u64,
    /// Random at store creation: a peer that sees it change knows this node lost its data.
    #[serde(default)]
    pub incarnation: u128,
    /// Messages appended here (copies included), for the metrics: the append counter is no
    /// count, it starts at a floor from the clock (see `counters.rs`).
    #[serde(default)]
    pub appended: u64,
    /// The identity floor when the incarnation was minted: the lowest Version counter this store
    /// mints (0 for a store made before the floor was kept: its peers then skip it as the origin
    /// of everything it made, as they did before).
    #[serde(default)]
    pub incarnation_floor: u64,
}

pub struct Store {
    db: Database,
    /// The file system the store lives on (the real one, or the simulator's).
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    /// A body spool shared with some peers (each body a file named by its Guid), if any.
    spool: Option<PathBuf>,
    db_path: PathBuf,
    node: NodeId,
    counters: CounterState,
}

impl Store {
    /// Opens (or creates) the store in `dir` for `node`. A store made by another node is refused:
    /// mixing two nodes' data would break every identity they minted.
    pub fn open(dir: &Path, node: &NodeId) -> Result<Store, StoreError> {
        Self::open_with_spool(dir, node, None)
    }

    /// Opens the store; new bodies go to `spool` (shared with peers) instead of segments.
    pub fn open_with_spool(dir: &Path, node: &NodeId, spool: Option<&Path>) -> Result<Store, StoreError> {
        Self::open_on(Arc::new(RealDisk), dir, node, spool)
    }

    /// Opens the store on `disk` (the simulator passes its simulated disk).
    ///
    /// The directories and the store file are created if missing, and every directory entry on
    /// the way is synced before anything is committed: a store file or bodies directory whose
    /// entry a crash undoes would take every acknowledged write with it.
    pub fn open_on(
        disk: Arc<dyn Disk>,
        dir: &Path,
        node: &NodeId,
        spool: Option<&Path>,
    ) -> Result<Store, StoreError> {
        let io_err = |path: &Path| {
            let shown = path.display().to_string();
            move |e| StoreError::io(shown, e)
        };
        if let Some(spool) = spool {
            disk.create_dir_all(spool).map_err(io_err(spool))?;
            sync_parent(disk.as_ref(), spool).map_err(io_err(spool))?;
        }
        let seg_dir = dir.join(bodies::SEGMENT_DIR);
        // Every directory this creates is synced into its parent.
        let missing: Vec<&Path> = seg_dir
            .ancestors()
            .take_while(|p| !p.as_os_str().is_empty() && disk.list_dir(p).is_err())
            .collect();
        disk.create_dir_all(&seg_dir).map_err(io_err(&seg_dir))?;
        for created in missing.iter().rev() {
            sync_parent(disk.as_ref(), created).map_err(io_err(created))?;
        }
        let db_path = dir.join("store.redb");
        let shown = db_path.display().to_string();
        let db = disk
            .open_database(&Database::builder(), &db_path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
                    path: dir.display().to_string(),
                },
                redb::DatabaseError::Storage(redb::StorageError::Io(io))
                    if io.kind() != std::io::ErrorKind::InvalidData =>
                {
                    StoreError::io(&shown, io)
                }
                other => StoreError::Corrupt {
                    path: shown.clone(),
                    reason: other.to_string(),
                },
            })?;
        let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt {
            path: shown.clone(),
            reason: e.to_string(),
        };
        let txn = db.begin_write().map_err(|e| corrupt(&e))?;
        let counters = {
            for table in ALL_TABLES {
                txn.open_table(table).map_err(|e| corrupt(&e))?;
            }
            let mut meta = txn.open_table(META).map_err(|e| corrupt(&e))?;
            let found = meta
                .get(META_NODE)
                .map_err(|e| corrupt(&e))?
                .map(|v| v.value().to_vec());
            match found {
                Some(found) if found != node.as_str().as_bytes() => {
                    return Err(StoreError::WrongNode {
                        path: shown,
                        found: String::from_utf8_lossy(&found).into_owned(),
                        configured: node.to_string(),
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert(META_NODE, node.as_str().as_bytes())
                        .map_err(|e| corrupt(&e))?;
                }
            }
            let format = meta
                .get(META_FORMAT)
                .map_err(|e| corrupt(&e))?
                .map(|v| v.value().to_vec());
            let format = match format.as_deref() {
                None => 1,
                Some(bytes) => <[u8; 4]>::try_from(bytes)
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(&"the store format is not a 4-byte number"))?,
            };
            if format > STORE_FORMAT {
                return Err(StoreError::NewerFormat {
                    path: shown,
                    found: format,
                    known: STORE_FORMAT,
                });
            }
            if format < STORE_FORMAT {
                meta.insert(META_FORMAT, STORE_FORMAT.to_be_bytes().as_slice())
                    .map_err(|e| corrupt(&e))?;
            }
            if format < 3 {
                txn.delete_table(OLD_SEGMENT_BODIES).map_err(|e| corrupt(&e))?;
            }
            let counters = meta
                .get(META_COUNTERS)
                .map_err(|e| corrupt(&e))?
                .map(|v| v.value().to_vec());
            match counters {
                Some(bytes) => decode::<CounterState>(&bytes, "node counters")?,
                None => CounterState::default(),
            }
        };
        // The store file's entry is durable before the first commit that counts.
        disk.sync_dir(dir).map_err(io_err(dir))?;
        txn.commit().map_err(|e| corrupt(&e))?;
        // Groups a crash left in the journal only (their records synced, their commits not).
        let counters = match crate::commit_group::replay_journal(&db, &disk, dir)? {
            0 => counters,
            _ => read_meta::<CounterState>(&db, META_COUNTERS, "node counters").map_err(|e| corrupt(&e))?,
        };
        Ok(Store {
            db,
            disk,
            dir: dir.to_path_buf(),
            spool: spool.map(Path::to_path_buf),
            db_path,
            node: node.clone(),
            counters,
        })
    }

    /// Where the group journal stands (`journal.rs`).
    pub(crate) fn journal_mark(&self) -> Result<journal::JournalMark, StoreError> {
        read_journal_mark(&self.db)
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub fn spool(&self) -> Option<&Path> {
        self.spool.as_deref()
    }

    /// Whether the shared spool holds a body (a peer sharing it stored it): its length if so.
    pub fn spooled(&self, guid: &Guid) -> Option<u64> {
        self.spool
            .as_deref()
            .and_then(|s| bodies::spool_len(self.disk.as_ref(), s, guid))
    }

    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// The counters as they were when the store was opened.
    pub fn initial_counters(&self) -> CounterState {
        self.counters
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned + 'static>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        match t.get(key)? {
            Some(v) => Ok(Some(decode(v.value(), table.name())?)),
            None => Ok(None),
        }
    }

    /// Reads one value with the length of its stored encoding (what a page of them weighs).
    pub fn get_sized<T: DeserializeOwned + 'static>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<(T, usize)>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        match t.get(key)? {
            Some(v) => Ok(Some((decode(v.value(), table.name())?, v.value().len()))),
            None => Ok(None),
        }
    }

    /// Visits the rows whose keys start with `prefix`, in key order, starting after `after` if
    /// given, until `visit` returns false. One read transaction; nothing is collected unless the
    /// visitor collects it, so a scan of a huge mailbox holds one row at a time.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let start: Vec<u8> = match after {
            Some(after) => {
                let mut k = after.to_vec();
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        self.scan_from(table, prefix, &start, visit)
    }

    /// Visits the rows with keys `>= start` that start with `prefix`, in key order, until `visit`
    /// returns false.
    pub fn scan_from(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table.definition())?;
        for row in t.range::<&[u8]>(start..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if !visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Where a body is stored, if this node has it.
    pub fn body_location(&self, guid: &Guid) -> Result<Option<BodyLocation>, StoreError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BODIES)?;
        match t.get(guid.0.as_slice())? {
            Some(v) => Ok(Some(BodyLocation::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` bytes of a body from `offset`, and the body's whole length. Not verified
    /// here: the receiver checks the whole body against its Guid.
    pub fn read_body_range(
        &self,
        guid: &Guid,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<u8>, u64), StoreError> {
        let location = self
            .body_location(guid)?
            .ok_or(StoreError::BodyMissing { guid: *guid })?;
        bodies::read_range(
            self.disk.as_ref(),
            &self.dir,
            self.spool.as_deref(),
            guid,
            &location,
            offset,
            limit,
        )
    }

    /// Reads and verifies a body.
    pub fn read_body(&self, guid: &Guid) -> Result<Vec<u8>, StoreError> {
        let location = self
            .body_location(guid)?
            .ok_or(StoreError::BodyMissing { guid: *guid })?;
        bodies::read_body(
            self.disk.as_ref(),
            &self.dir,
            self.spool.as_deref(),
            guid,
            &location,
        )
    }
}

impl Store {
    /// One read transaction for many reads of committed state: an operation that reads
    /// thousands of rows (the records of a page, the bodies a peer lacks) opens a transaction
    /// and each table once, not once per row. Reads see the state committed when it was taken.
    pub fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        Ok(Snapshot {
            store: self,
            txn: self.db.begin_read()?,
            tables: RefCell::new(BTreeMap::new()),
            segment: RefCell::new(None),
        })
    }
}

type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

/// Reads of one [`Store`] in one read transaction (see [`Store::snapshot`]).
pub struct Snapshot<'s> {
    store: &'s Store,
    txn: ReadTransaction,
    /// Tables opened so far, by name.
    tables: RefCell<BTreeMap<String, Rc<ReadTable>>>,
    /// The body file read last (by segment number), kept open: consecutive bodies mostly share
    /// a segment.
    segment: RefCell<Option<(u32, Box<dyn DiskFile>)>>,
}

impl Snapshot<'_> {
    fn table(&self, definition: RawTable) -> Result<Rc<ReadTable>, StoreError> {
        let name = definition.name();
        if let Some(t) = self.tables.borrow().get(name) {
            return Ok(t.clone());
        }
        let t = Rc::new(self.txn.open_table(definition)?);
        self.tables.borrow_mut().insert(name.to_string(), t.clone());
        Ok(t)
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned + 'static>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.table(table.definition())?.get(key)? {
            Some(v) => Ok(Some(decode(v.value(), table.name())?)),
            None => Ok(None),
        }
    }

    /// Reads one value with the length of its stored encoding.
    pub fn get_sized<T: DeserializeOwned + 'static>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<(T, usize)>, StoreError> {
        match self.table(table.definition())?.get(key)? {
            Some(v) => Ok(Some((decode(v.value(), table.name())?, v.value().len()))),
            None => Ok(None),
        }
    }

    /// Visits the rows with keys `>= start` that start with `prefix`, in key order, until
    /// `visit` returns false.
    pub fn scan_from(
        &self,
        table: Table,
        prefix: &[u8],
        start: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let t = self.table(table.definition())?;
        for row in t.range::<&[u8]>(start..)? {
            let (k, v) = row?;
            if !k.value().starts_with(prefix) {
                break;
            }
            if !visit(k.value(), v.value())? {
                break;
            }
        }
        Ok(())
    }

    /// Visits the rows whose keys start with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        table: Table,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        self.scan_from(table, prefix, prefix, visit)
    }

    /// Where a body is stored, if this node has it.
    pub fn body_location(&self, guid: &Guid) -> Result<Option<BodyLocation>, StoreError> {
        match self.table(BODIES)?.get(guid.0.as_slice())? {
            Some(v) => Ok(Some(BodyLocation::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Reads and verifies a body.
    pub fn read_body(&self, guid: &Guid) -> Result<Vec<u8>, StoreError> {
        let store = self.store;
        let location = self
            .body_location(guid)?
            .ok_or(StoreError::BodyMissing { guid: *guid })?;
        let mut segment = self.segment.borrow_mut();
        // The segment open already is known by its number (a spool file is one per body).
        let same_segment = location.segment != bodies::SPOOL
            && segment
                .as_ref()
                .is_some_and(|(open, _)| *open == location.segment);
        if !same_segment {
            let path = bodies::body_path(&store.dir, store.spool.as_deref(), guid, &location)?;
            let file = store
                .disk
                .open(&path, false)
                .map_err(|e| StoreError::io(path.display(), e))?;
            *segment = Some((location.segment, file));
        }
        let (_, file) = segment.as_ref().expect("opened above");
        bodies::read_body_in(file.as_ref(), &store.dir, store.spool.as_deref(), guid, &location)
    }

    /// Reads and verifies many bodies, each answered in `guids`' order; entries that lie
    /// together in a segment are read together ([`bodies::read_entries_in`]).
    pub fn read_bodies(&self, guids: &[Guid]) -> Vec<Result<Vec<u8>, StoreError>> {
        let mut out: Vec<Option<Result<Vec<u8>, StoreError>>> = guids.iter().map(|_| None).collect();
        // Per segment, the entries to read there and where each answer goes.
        type Entries = Vec<(Guid, bodies::BodyLocation)>;
        let mut by_segment: BTreeMap<u32, (Entries, Vec<usize>)> = BTreeMap::new();
        for (i, guid) in guids.iter().enumerate() {
            match self.body_location(guid) {
                Ok(Some(loc)) if loc.segment != bodies::SPOOL => {
                    let (entries, slots) = by_segment.entry(loc.segment).or_default();
                    entries.push((*guid, loc));
                    slots.push(i);
                }
                // The spool holds a file per body: nothing to read together.
                Ok(Some(_)) => out[i] = Some(self.read_body(guid)),
                Ok(None) => out[i] = Some(Err(StoreError::BodyMissing { guid: *guid })),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let store = self.store;
        for (segment, (entries, slots)) in by_segment {
            let path = bodies::segment_path(&store.dir, segment);
            let read = match store.disk.open(&path, false) {
                Ok(file) => bodies::read_entries_in(file.as_ref(), &entries),
                // As `read_body` answers it, once per body.
                Err(e) => entries
                    .iter()
                    .map(|_| {
                        Err(StoreError::io(
                            path.display(),
                            std::io::Error::new(e.kind(), e.to_string()),
                        ))
                    })
                    .collect(),
            };
            for (slot, result) in slots.into_iter().zip(read) {
                out[slot] = Some(result);
            }
        }
        out.into_iter()
            .map(|r| r.expect("every guid is answered"))
            .collect()
    }
}

/// The journal mark of the store's last commit; a store from before the journal has none.
pub(crate) fn read_journal_mark(db: &Database) -> Result<journal::JournalMark, StoreError> {
    read_meta(db, META_JOURNAL, "journal mark")
}

/// A value of the `meta` table as committed, or its default if there is none.
fn read_meta<T: DeserializeOwned + Default + 'static>(
    db: &Database,
    key: &[u8],
    what: &str,
) -> Result<T, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let found = meta.get(key)?.map(|v| v.value().to_vec());
    match found {
        Some(bytes) => decode(&bytes, what),
        None => Ok(T::default()),
    }
}

pub fn encode<T: Serialize + 'static>(value: &T) -> Vec<u8> {
    // Message records, the values written most, by hand (`record_codec`): the same bytes.
    if let Some(stored) = (value as &dyn Any).downcast_ref::<StoredRecord>() {
        return record_codec::encode(stored);
    }
    rmp_serde::to_vec(value).expect("stored types always encode")
}

pub fn decode<T: DeserializeOwned + 'static>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    // Message records, the values read most, by hand (`record_codec`) when they are in today's
    // layout; anything else through rmp-serde, which reads every layout and explains failures.
    // (The type test is how a generic function picks a faster path for one type on stable Rust;
    // it costs a comparison of two constants.)
    let mut fast: Option<T> = None;
    if let Some(slot) = (&mut fast as &mut dyn Any).downcast_mut::<Option<StoredRecord>>() {
        *slot = record_codec::decode(bytes);
    }
    if let Some(value) = fast {
        return Ok(value);
    }
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Decode {
        what: what.to_string(),
        reason: e.to_string(),
    })
}
