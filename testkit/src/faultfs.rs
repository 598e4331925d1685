//! A power-loss filesystem for storage tests: a FUSE passthrough over a backing directory
//! that keeps every file's data writes in memory until that file is `fsync`ed, so that
//! [`FaultFs::drop_unsynced`] can do what a power cut does to the page cache (LazyFS's
//! model, as Jepsen uses it on NATS). It proves that code which acks after a sync loses
//! nothing it acked, and shows what code that does not sync loses.
//!
//! # Model
//! - **File data** (`write`) is held per inode, as non-overlapping extents, until an
//!   `fsync`/`fdatasync` of that inode (through any handle, as the kernel's fsync syncs
//!   the inode): then the extents are written to the backing file. Reads see the held
//!   extents over the backing file; a file's size is the larger of the backing file's and
//!   the end of its last held extent. `sync_file_range` and `close` never reach a FUSE
//!   filesystem, so they sync nothing here — as on a real disk after a power cut.
//! - **A new file's existence** is held too: a file created here is deleted from the
//!   backing directory by [`FaultFs::drop_unsynced`] unless it, or its directory, was
//!   synced since (an `fsync` of a file counts for its name, as on ext4 and XFS, unless
//!   [`FaultFs::strict_names`] asks for the directory's).
//! - **Simplification**: every other metadata operation (mkdir, rename, unlink, rmdir,
//!   truncate, chmod, times) is applied to the backing directory at once and survives a
//!   cut. Real filesystems can lose an unsynced rename, unlink or directory too, so this
//!   filesystem is kinder than a disk there: a test passing here does not prove such
//!   operations are synced.
//! - [`FaultFs::power_cut`] also turns the power off: until [`FaultFs::power_on`] writes
//!   and syncs are accepted and lost, and every other change (create, unlink, rename,
//!   truncate…) fails with `EIO`, so a process still running at the cut (its drop
//!   flushes, its background threads) leaves nothing the next boot can see. Writes and
//!   syncs do not fail because sled unwraps the `fsync` of its log in its drop.
//! - The kernel caches neither data (every handle is opened `FOPEN_DIRECT_IO`) nor
//!   attributes or names (TTL 0), so what a reader sees after a cut is what is held here.
//! - `flock` and POSIX locks are left to the kernel (fuser does not ask for
//!   `FUSE_FLOCK_LOCKS`/`FUSE_POSIX_LOCKS`), which handles them locally on the mount.
//!
//! # Operations
//! lookup, getattr, setattr (size, mode, owner, times), mkdir, unlink, rmdir, rename
//! (no flags), open, create, read, write, flush, release, fsync, opendir, readdir,
//! releasedir, fsyncdir, statfs; locks by the kernel. Not there: hard and symbolic links,
//! xattrs, fallocate, mknod. A file unlinked while open cannot be read or synced through
//! the handles still open on it (ENOENT), unlike on a real filesystem.
//!
//! # Mounting
//! Root mounts with `mount(2)` on `/dev/fuse` directly (fuser without libfuse): nothing to
//! install. Without `AutoUnmount` (that needs `fusermount3`) a test process killed by a
//! signal leaves a dead mount in its temp dir; [`FaultFs`]'s `Drop` unmounts otherwise.
//! [`FaultFs::for_test`] skips a test loudly where FUSE is missing, and fails it when the
//! env var `CI` is set.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Attributes and names are not cached by the kernel: each lookup sees the held state.
const TTL: Duration = Duration::ZERO;

/// What a call to [`FaultFs::drop_unsynced`] threw away.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Bytes written and never synced.
    pub bytes: u64,
    /// Files created whose name was never synced (deleted from the backing directory).
    pub files: u64,
}

/// Counters since mount, for a test's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Bytes written to the backing files by `fsync`s.
    pub synced_bytes: u64,
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// Bytes held now (written, not synced).
    pub held_bytes: u64,
    /// Bytes and files dropped by all the cuts so far.
    pub dropped: Dropped,
    /// File and directory handles open now.
    pub open_handles: u64,
}

/// The data writes of one file not synced yet: extents by offset, never overlapping.
#[derive(Debug, Default)]
struct Held {
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Held {
    fn bytes(&self) -> u64 {
        self.extents.values().map(|v| v.len() as u64).sum()
    }

    fn end(&self) -> u64 {
        self.extents
            .iter()
            .next_back()
            .map_or(0, |(o, v)| o + v.len() as u64)
    }

    /// Adds a write: it replaces whatever it overlaps.
    fn write(&mut self, off: u64, data: &[u8]) {
        let end = off + data.len() as u64;
        self.cut(off, end);
        self.extents.insert(off, data.to_vec());
    }

    /// Removes `[from, to)` from the extents, keeping what sticks out on either side.
    fn cut(&mut self, from: u64, to: u64) {
        let overlapping: Vec<u64> = self
            .extents
            .range(..to)
            .rev()
            .take_while(|(o, v)| *o + v.len() as u64 > from)
            .map(|(o, _)| *o)
            .collect();
        for o in overlapping {
            let v = self.extents.remove(&o).expect("listed just now");
            let e = o + v.len() as u64;
            if o < from {
                self.extents.insert(o, v[..(from - o) as usize].to_vec());
            }
            if e > to {
                self.extents.insert(to, v[(to - o) as usize..].to_vec());
            }
        }
    }

    /// Copies the extents' bytes within `[off, off + buf.len())` over `buf`.
    fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for (o, v) in self.extents.range(..end) {
            let e = o + v.len() as u64;
            if e <= off {
                continue;
            }
            let from = (*o).max(off);
            let to = e.min(end);
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&v[(from - o) as usize..(to - o) as usize]);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Path of each inode, relative to the backing directory (root: "").
    paths: HashMap<u64, PathBuf>,
    inos: HashMap<PathBuf, u64>,
    next_ino: u64,
    /// Backing files opened for reads and syncs, by inode.
    files: HashMap<u64, Arc<File>>,
    held: HashMap<u64, Held>,
    /// Files created whose name is not synced yet.
    unsynced_names: HashSet<u64>,
    next_fh: u64,
    open_handles: u64,
    /// Between [`FaultFs::power_cut`] and [`FaultFs::power_on`]: every change fails.
    off: bool,
    /// Only an `fsync` of its directory keeps a new file's name ([`FaultFs::strict_names`]).
    strict_names: bool,
    synced_bytes: u64,
    fsyncs: u64,
    dropped: Dropped,
}

impl State {
    fn ino_of(&mut self, rel: &Path) -> u64 {
        if let Some(i) = self.inos.get(rel) {
            return *i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.inos.insert(rel.to_path_buf(), i);
        self.paths.insert(i, rel.to_path_buf());
        i
    }

    /// Forgets the inode at `rel` (unlinked or replaced): its held data and name go too.
    fn forget_path(&mut self, rel: &Path) {
        if let Some(i) = self.inos.remove(rel) {
            self.paths.remove(&i);
            self.files.remove(&i);
            self.held.remove(&i);
            self.unsynced_names.remove(&i);
        }
    }
}

/// The filesystem that fuser drives; shares its state with the [`FaultFs`] handle.
struct Fs {
    backing: PathBuf,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses a change while the power is off: what a process still running at the cut
/// does then must not reach the disk of the next boot.
fn powered(st: &State) -> Result<(), Errno> {
    if st.off {
        Err(Errno::EIO)
    } else {
        Ok(())
    }
}

fn errno(e: std::io::Error) -> Errno {
    if e.raw_os_error().is_some() {
        Errno::from(e)
    } else {
        Errno::EIO
    }
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl Fs {
    fn full(&self, rel: &Path) -> PathBuf {
        self.backing.join(rel)
    }

    fn path(&self, st: &State, ino: INodeNo) -> Result<PathBuf, Errno> {
        st.paths.get(&ino.0).cloned().ok_or(Errno::ENOENT)
    }

    fn child(&self, st: &State, parent: INodeNo, name: &OsStr) -> Result<PathBuf, Errno> {
        Ok(self.path(st, parent)?.join(name))
    }

    /// The attributes of the backing file, with the size its held writes give it.
    fn attr(&self, st: &mut State, rel: &Path) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(self.full(rel)).map_err(errno)?;
        let ino = st.ino_of(rel);
        let kind = if m.is_dir() {
            FileType::Directory
        } else if m.file_type().is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        let size = match st.held.get(&ino) {
            Some(h) => m.len().max(h.end()),
            None => m.len(),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: m.rdev() as u32,
            blksize: 4096,
            flags: 0,
        })
    }

    /// The backing file of `ino`, opened once (read-write where allowed).
    fn file(&self, st: &mut State, ino: INodeNo) -> Result<Arc<File>, Errno> {
        if let Some(f) = st.files.get(&ino.0) {
            return Ok(f.clone());
        }
        let full = self.full(&self.path(st, ino)?);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&full)
            .or_else(|_| File::open(&full))
            .map_err(errno)?;
        let f = Arc::new(f);
        st.files.insert(ino.0, f.clone());
        Ok(f)
    }

    fn new_handle(st: &mut State) -> FileHandle {
        st.next_fh += 1;
        st.open_handles += 1;
        FileHandle(st.next_fh)
    }

    /// Writes `ino`'s held extents to its backing file.
    fn sync(&self, st: &mut State, ino: INodeNo) -> Result<(), Errno> {
        st.fsyncs += 1;
        if !st.strict_names {
            st.unsynced_names.remove(&ino.0);
        }
        let Some(held) = st.held.remove(&ino.0) else {
            return Ok(());
        };
        let f = self.file(st, ino)?;
        for (off, data) in &held.extents {
            f.write_all_at(data, *off).map_err(errno)?;
            st.synced_bytes += data.len() as u64;
        }
        Ok(())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = lock(&self.state);
        match self
            .child(&st, parent, name)
            .and_then(|rel| self.attr(&mut st, &rel))
        {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let mut st = lock(&self.state);
        match self.path(&st, ino).and_then(|rel| self.attr(&mut st, &rel)) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            let rel = self.path(&st, ino)?;
            let full = self.full(&rel);
            if let Some(size) = size {
                // Applied at once (module doc): held data past the new end goes.
                self.file(&mut st, ino)?.set_len(size).map_err(errno)?;
                if let Some(h) = st.held.get_mut(&ino.0) {
                    h.cut(size, u64::MAX);
                }
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode))
                    .map_err(errno)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::chown(&full, uid, gid).map_err(errno)?;
            }
            if atime.is_some() || mtime.is_some() {
                let to_time = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = std::fs::FileTimes::new();
                if let Some(t) = atime {
                    times = times.set_accessed(to_time(t));
                }
                if let Some(t) = mtime {
                    times = times.set_modified(to_time(t));
                }
                File::open(&full)
                    .and_then(|f| f.set_times(times))
                    .map_err(errno)?;
            }
            self.attr(&mut st, &rel)
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            let rel = self.child(&st, parent, name)?;
            let full = self.full(&rel);
            std::fs::create_dir(&full).map_err(errno)?;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask))
                .map_err(errno)?;
            st.forget_path(&rel);
            self.attr(&mut st, &rel)
        })();
        match r {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            let rel = self.child(&st, parent, name)?;
            std::fs::remove_file(self.full(&rel)).map_err(errno)?;
            st.forget_path(&rel);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            let rel = self.child(&st, parent, name)?;
            std::fs::remove_dir(self.full(&rel)).map_err(errno)?;
            st.forget_path(&rel);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            if flags.bits() != 0 {
                return Err(Errno::EINVAL);
            }
            let from = self.child(&st, parent, name)?;
            let to = self.child(&st, newparent, newname)?;
            std::fs::rename(self.full(&from), self.full(&to)).map_err(errno)?;
            st.forget_path(&to);
            // The inode keeps its held data; it and anything below it (a directory)
            // move to the new path.
            let moved: Vec<(PathBuf, u64)> = st
                .inos
                .iter()
                .filter(|(p, _)| p.starts_with(&from))
                .map(|(p, i)| (p.clone(), *i))
                .collect();
            for (p, i) in moved {
                let rest = p.strip_prefix(&from).expect("filtered on it");
                // `to.join("")` would end in a slash, which a file's path must not.
                let np = if rest.as_os_str().is_empty() {
                    to.clone()
                } else {
                    to.join(rest)
                };
                st.inos.remove(&p);
                st.inos.insert(np.clone(), i);
                st.paths.insert(i, np);
            }
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        match self.file(&mut st, ino) {
            Ok(_) => reply.opened(Fs::new_handle(&mut st), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            powered(&st)?;
            let rel = self.child(&st, parent, name)?;
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(mode & !umask);
            if flags & libc::O_EXCL != 0 {
                o.create_new(true);
            } else {
                o.create(true);
            }
            let existed = self.full(&rel).exists();
            let f = o.open(self.full(&rel)).map_err(errno)?;
            if !existed {
                st.forget_path(&rel);
            }
            let a = self.attr(&mut st, &rel)?;
            st.files.insert(a.ino.0, Arc::new(f));
            if !existed {
                st.unsynced_names.insert(a.ino.0);
            }
            Ok(a)
        })();
        match r {
            Ok(a) => {
                let fh = Fs::new_handle(&mut st);
                reply.created(&TTL, &a, Generation(0), fh, FopenFlags::FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            let f = self.file(&mut st, ino)?;
            let backing_len = f.metadata().map_err(errno)?.len();
            let held = st.held.get(&ino.0);
            let len = backing_len.max(held.map_or(0, Held::end));
            let end = (offset + u64::from(size)).min(len);
            let mut buf = vec![0u8; end.saturating_sub(offset) as usize];
            // What the backing file has in range; the rest (a hole, or past its end
            // before held writes) reads as zeros.
            let from_backing = backing_len.min(end).saturating_sub(offset) as usize;
            f.read_exact_at(&mut buf[..from_backing], offset)
                .map_err(errno)?;
            if let Some(h) = held {
                h.overlay(offset, &mut buf);
            }
            Ok(buf)
        })();
        match r {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = lock(&self.state);
        if st.off {
            // Accepted and lost, like a write into a page cache that is about to go.
            st.dropped.bytes += data.len() as u64;
            return reply.written(data.len() as u32);
        }
        if !st.paths.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        st.held.entry(ino.0).or_default().write(offset, data);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // `close`: syncs nothing.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        st.open_handles = st.open_handles.saturating_sub(1);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        if st.off {
            // Nothing to sync it to. Not an error: sled unwraps its drop's fsync.
            return reply.ok();
        }
        match self.sync(&mut st, ino) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = lock(&self.state);
        if !st.paths.contains_key(&ino.0) {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(Fs::new_handle(&mut st), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = lock(&self.state);
        let r = (|| {
            let rel = self.path(&st, ino)?;
            let mut entries = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_os_string()),
                (ino.0, FileType::Directory, OsStr::new("..").to_os_string()),
            ];
            let mut listed: Vec<_> = std::fs::read_dir(self.full(&rel))
                .map_err(errno)?
                .filter_map(Result::ok)
                .collect();
            listed.sort_by_key(|e| e.file_name());
            for e in listed {
                let name = e.file_name();
                let kind = match e.file_type() {
                    Ok(t) if t.is_dir() => FileType::Directory,
                    Ok(t) if t.is_symlink() => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                let i = st.ino_of(&rel.join(&name));
                entries.push((i, kind, name));
            }
            Ok(entries)
        })();
        match r {
            Ok(entries) => {
                for (n, (i, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(i), n as u64 + 1, kind, &name) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = lock(&self.state);
        st.open_handles = st.open_handles.saturating_sub(1);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // The names of the files created in this directory are synced now.
        let mut st = lock(&self.state);
        if st.off {
            return reply.ok();
        }
        let Some(dir) = st.paths.get(&ino.0).cloned() else {
            return reply.error(Errno::ENOENT);
        };
        let in_dir: Vec<u64> = st
            .unsynced_names
            .iter()
            .filter(|i| st.paths.get(i).and_then(|p| p.parent()) == Some(dir.as_path()))
            .copied()
            .collect();
        for i in in_dir {
            st.unsynced_names.remove(&i);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let path =
            std::ffi::CString::new(self.backing.as_os_str().as_bytes()).expect("a path has no NUL");
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `s` a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
            return reply.error(errno(std::io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }
}

/// Why a [`FaultFs`] could not be mounted.
#[derive(Debug, thiserror::Error)]
pub enum FaultFsError {
    /// `/dev/fuse` is missing: the kernel has no FUSE (or the container does not pass it).
    #[error("/dev/fuse is missing: load the fuse module or pass the device to the container")]
    NoDevice,
    /// The temp directories could not be made.
    #[error("making the fault filesystem's directories: {0}")]
    Dirs(#[source] std::io::Error),
    /// `mount` failed (not root, no `CAP_SYS_ADMIN`, or FUSE refused).
    #[error(
        "mounting the fault filesystem on {mountpoint}: {source} (it mounts with mount(2) as root)"
    )]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A mounted power-loss filesystem (module doc) over a temp backing directory; unmounted
/// and removed on drop.
pub struct FaultFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    backing: PathBuf,
    /// Holds `mnt/` and `backing/`; dropped after the unmount.
    dir: Option<tempfile::TempDir>,
}

impl FaultFs {
    /// Mounts a new fault filesystem over an empty temp directory.
    pub fn mount() -> Result<FaultFs, FaultFsError> {
        if !Path::new("/dev/fuse").exists() {
            return Err(FaultFsError::NoDevice);
        }
        let dir = tempfile::Builder::new()
            .prefix("faultfs-")
            .tempdir()
            .map_err(FaultFsError::Dirs)?;
        let mountpoint = dir.path().join("mnt");
        let backing = dir.path().join("backing");
        std::fs::create_dir(&mountpoint).map_err(FaultFsError::Dirs)?;
        std::fs::create_dir(&backing).map_err(FaultFsError::Dirs)?;
        let mut st = State {
            next_ino: 2,
            ..State::default()
        };
        st.paths.insert(1, PathBuf::new());
        st.inos.insert(PathBuf::new(), 1);
        let state = Arc::new(Mutex::new(st));
        let fs = Fs {
            backing: backing.clone(),
            state: state.clone(),
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("faultfs".into()),
            fuser::MountOption::Subtype("faultfs".into()),
        ];
        let session =
            fuser::spawn_mount(fs, &mountpoint, &config).map_err(|source| FaultFsError::Mount {
                mountpoint: mountpoint.clone(),
                source,
            })?;
        Ok(FaultFs {
            state,
            session: Some(session),
            mountpoint,
            backing,
            dir: Some(dir),
        })
    }

    /// [`FaultFs::mount`] for a test: `None` (after a loud message on stderr) where FUSE
    /// is unavailable, so that the test can return; panics instead when the env var `CI`
    /// is set and the machine has `/dev/fuse`, where a skipped power-loss test would hide
    /// a broken guarantee. A CI machine without the device at all (a container started
    /// without it) skips loudly too: nothing `.ci/run` installs can provide it.
    pub fn for_test(test: &str) -> Option<FaultFs> {
        match FaultFs::mount() {
            Ok(fs) => Some(fs),
            Err(e) if std::env::var_os("CI").is_some() && Path::new("/dev/fuse").exists() => {
                panic!("{test}: the power-loss filesystem is needed under CI: {e}")
            }
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED {test}: no power-loss filesystem: {e}. \
                     Run as root with /dev/fuse (CI=1 makes this a failure). ***\n"
                );
                None
            }
        }
    }

    /// Where the filesystem is mounted: put the files under test here.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The backing directory: what "the disk" holds (synced data, and metadata).
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// What a power cut loses: every write not synced, and every new file whose name was
    /// not synced, is gone. Alone, for when nothing has the files open any more (see
    /// [`FaultFs::wait_closed`]); with a process still running, [`FaultFs::power_cut`].
    pub fn drop_unsynced(&self) -> Dropped {
        let mut st = lock(&self.state);
        let mut d = Dropped {
            bytes: st.held.values().map(Held::bytes).sum(),
            files: 0,
        };
        st.held.clear();
        for i in std::mem::take(&mut st.unsynced_names) {
            if let Some(rel) = st.paths.get(&i).cloned() {
                if std::fs::remove_file(self.backing.join(&rel)).is_ok() {
                    d.files += 1;
                }
                st.forget_path(&rel);
            }
        }
        st.files.clear();
        st.dropped.bytes += d.bytes;
        st.dropped.files += d.files;
        d
    }

    /// A power cut while the files are in use: [`FaultFs::drop_unsynced`], and from now
    /// on until [`FaultFs::power_on`] writes and syncs are accepted and lost and other
    /// changes fail with `EIO` (module doc), so that what the process under test still
    /// does (its drop flushes, its background threads) cannot reach the disk it will
    /// find on the next boot. Reads still work. Drop the process's handles, then [`FaultFs::wait_closed`], then
    /// [`FaultFs::power_on`].
    pub fn power_cut(&self) -> Dropped {
        lock(&self.state).off = true;
        self.drop_unsynced()
    }

    /// From now on, a new file's name is kept only by an `fsync` of its directory, not of
    /// the file (POSIX's letter; ext4 and XFS keep it with the file): to check that code
    /// syncs the directories it creates files in.
    pub fn strict_names(&self) {
        lock(&self.state).strict_names = true;
    }

    /// The next boot, after a [`FaultFs::power_cut`]: changes are accepted again.
    pub fn power_on(&self) {
        lock(&self.state).off = false;
    }

    /// Counters since mount.
    pub fn stats(&self) -> FaultStats {
        let st = lock(&self.state);
        FaultStats {
            synced_bytes: st.synced_bytes,
            fsyncs: st.fsyncs,
            held_bytes: st.held.values().map(Held::bytes).sum(),
            dropped: st.dropped,
            open_handles: st.open_handles,
        }
    }

    /// Waits until no file or directory handle is open on the filesystem (a process
    /// closed everything; the kernel sends releases after `close` returns). False if
    /// some are still open at the deadline.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if lock(&self.state).open_handles == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            if s.umount_and_join().is_err() {
                // Busy (a file still open): detach it lazily, so the temp dir can go.
                if let Ok(c) = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()) {
                    // SAFETY: `c` is a NUL-terminated path.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        drop(self.dir.take());
    }
}
