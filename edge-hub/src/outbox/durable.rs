//! `outbox.sync = "always"`: a group commit is acked only once what sled wrote for it is
//! on stable storage.
//!
//! sled's flush is `pwrite` + `sync_file_range` on its log file `db`: that starts and
//! waits for write-back of the range, but syncs neither the file's metadata (its size,
//! when the log grew) nor the device's write cache, so it is not a persistence point
//! for a power cut (measured with a power-loss filesystem: 5,000 acked events, none left).
//! Nor are the blob files (`blobs/<lsn>`) sled writes for a page over a quarter of a
//! segment (a leaf holding an event of more than ~128 KiB): written, closed, never
//! synced. So after sled's flush, [`Durable::sync`]:
//! 1. `fdatasync` of each blob file not synced before at its present length (the
//!    listing is compared with the names and lengths synced before, not with the largest
//!    name: blobs of concurrent writes complete out of their log order, and one may be
//!    listed half written), then `fsync` of `blobs/` so their names survive too;
//! 2. `fdatasync` of `db` (data, and the size that makes it readable). Blobs first: a
//!    blob holds a whole leaf, acked records and all, and a log synced while a blob it
//!    points at is not leaves a tree sled cannot read after a power cut
//!    (`edge-hub/tests/power_loss.rs` saw "cannot find pid 5 in view_for_key" about once
//!    in 150 cuts with the other order).
//!
//! At open, the outbox directory, `blobs/` and sled's `conf` are synced once, so the files
//! a new outbox created are there after a power cut as well. Snapshots (`snap.*`) sled
//! syncs itself.
//!
//! `outbox.sync = "flush"` skips all of this (survives a kill -9 of the edge hub, which
//! leaves the page cache to the kernel, but not a power cut).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Handles to what must be synced, and how far blobs were synced.
#[derive(Debug)]
pub(super) struct Durable {
    db: File,
    blobs: PathBuf,
    /// The blob files synced and not deleted since, by name, with their length when
    /// synced: a blob that was still being written when listed is synced again.
    blobs_synced: Mutex<HashMap<std::ffi::OsString, u64>>,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Durable {
    /// Opens the handles of the sled database in `dir` and syncs what a new database
    /// created: the directory's entries, `conf`, `blobs/`.
    pub(super) fn open(dir: &Path) -> std::io::Result<Durable> {
        let db = File::open(dir.join("db"))?;
        let blobs = dir.join("blobs");
        if let Ok(conf) = File::open(dir.join("conf")) {
            conf.sync_all()?;
        }
        if blobs.is_dir() {
            sync_dir(&blobs)?;
        }
        sync_dir(dir)?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let d = Durable {
            db,
            blobs,
            blobs_synced: Mutex::new(HashMap::new()),
        };
        d.sync()?;
        Ok(d)
    }

    /// Makes what sled has flushed durable (module doc). Blocking: call it off the async
    /// threads.
    pub(super) fn sync(&self) -> std::io::Result<()> {
        // Blobs before the log: once synced, the log may point at a blob (a leaf with
        // acked records in it), which must be on disk by then (a cut between the two
        // left a tree sled panics on: "cannot find pid … in view_for_key").
        self.sync_blobs()?;
        self.db.sync_data()
    }

    /// Step 1 of the module doc: the blob files not synced at their present length, and
    /// `blobs/` if any was.
    fn sync_blobs(&self) -> std::io::Result<()> {
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(entries) = std::fs::read_dir(&self.blobs) else {
            return Ok(());
        };
        let mut listed = HashMap::new();
        let mut fresh = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let len = match entry.metadata() {
                Ok(m) => m.len(),
                // Garbage-collected by sled since the listing: nothing left to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                fresh = true;
            }
            listed.insert(name, len);
        }
        if fresh {
            sync_dir(&self.blobs)?;
        }
        *synced = listed;
        Ok(())
    }
}
