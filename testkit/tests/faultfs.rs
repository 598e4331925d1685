//! The power-loss filesystem against its model: a cut drops exactly what was not synced.
//! Run with `cargo test -p mesh-testkit --features faultfs --test faultfs`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use mesh_testkit::{Dropped, FaultFs};

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

/// Held writes are visible before the cut, a synced file keeps what was synced, and a
/// cut drops later writes, the size they gave, and never-synced new files.
#[test]
fn a_cut_drops_exactly_what_was_not_synced() {
    let Some(fs) = FaultFs::for_test("a_cut_drops_exactly_what_was_not_synced") else {
        return;
    };
    let synced = fs.path().join("synced");
    let unsynced = fs.path().join("unsynced");
    let named = fs.path().join("named");

    let mut f = File::create(&synced).unwrap();
    f.write_all(b"hello world").unwrap();
    f.sync_data().unwrap();
    // Overwrite inside, and grow: visible now, gone after the cut.
    f.write_all_at(b"HELLO", 0).unwrap();
    f.write_all_at(b"!!", 11).unwrap();
    drop(f);
    assert_eq!(read(&synced), b"HELLO world!!");
    assert_eq!(std::fs::metadata(&synced).unwrap().len(), 13);
    // Not synced on the backing disk yet.
    assert_eq!(read(&fs.backing().join("synced")), b"hello world");

    // A new file whose name is synced by its directory, not its data.
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&named)
        .unwrap();
    h.write_all(b"data").unwrap();
    drop(h);
    File::open(fs.path()).unwrap().sync_all().unwrap();

    // Created after the directory's sync: neither name nor data synced.
    let mut g = File::create(&unsynced).unwrap();
    g.write_all(b"lost").unwrap();
    drop(g);
    assert_eq!(read(&unsynced), b"lost");

    assert!(fs.wait_closed(std::time::Duration::from_secs(5)));
    let d = fs.drop_unsynced();
    assert_eq!(
        d,
        Dropped {
            bytes: 5 + 2 + 4 + 4,
            files: 1
        }
    );
    assert_eq!(read(&synced), b"hello world");
    assert!(
        !unsynced.exists(),
        "a never-synced new file survived the cut"
    );
    assert_eq!(read(&named), b"", "its name was synced, its data was not");
    let st = fs.stats();
    assert_eq!(st.synced_bytes, 11);
    assert_eq!(st.held_bytes, 0);
}

/// After a power cut, what a process still running does reaches nothing until power
/// comes back: writes and syncs vanish, other changes fail with EIO.
#[test]
fn nothing_reaches_the_disk_while_the_power_is_off() {
    let Some(fs) = FaultFs::for_test("nothing_reaches_the_disk_while_the_power_is_off") else {
        return;
    };
    let p = fs.path().join("f");
    let mut f = File::create(&p).unwrap();
    f.write_all(b"kept").unwrap();
    f.sync_all().unwrap();
    f.write_all(b" lost").unwrap();

    let d = fs.power_cut();
    assert_eq!(d, Dropped { bytes: 5, files: 0 });
    assert_eq!(read(&p), b"kept", "reads still work");
    // Writes and syncs are accepted and lost; other changes fail.
    f.write_all(b"late").unwrap();
    f.sync_all().unwrap();
    assert_eq!(read(&p), b"kept");
    let eio = |r: std::io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EIO);
    assert!(eio(File::create(fs.path().join("g")).map(drop)));
    assert!(eio(std::fs::remove_file(&p)));
    drop(f);

    assert!(fs.wait_closed(std::time::Duration::from_secs(5)));
    fs.power_on();
    assert_eq!(read(&p), b"kept");
    assert_eq!(fs.stats().dropped.bytes, 5 + 4);
    File::create(fs.path().join("g")).unwrap();
}

/// Under strict names, a new file fsynced but whose directory was not is gone at a cut.
#[test]
fn strict_names_need_the_directory_synced() {
    let Some(fs) = FaultFs::for_test("strict_names_need_the_directory_synced") else {
        return;
    };
    fs.strict_names();
    let kept = fs.path().join("kept");
    let lost = fs.path().join("lost");
    let mut f = File::create(&kept).unwrap();
    f.write_all(b"k").unwrap();
    f.sync_all().unwrap();
    File::open(fs.path()).unwrap().sync_all().unwrap();
    let mut g = File::create(&lost).unwrap();
    g.write_all(b"l").unwrap();
    g.sync_all().unwrap();
    drop((f, g));
    assert!(fs.wait_closed(std::time::Duration::from_secs(5)));
    assert_eq!(fs.drop_unsynced(), Dropped { bytes: 0, files: 1 });
    assert_eq!(read(&kept), b"k");
    assert!(
        !lost.exists(),
        "a file whose directory was never synced survived"
    );
}
