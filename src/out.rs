//! Standard output and error that a closed pipe does not crash. `std`'s `println!`
//! panics when the reader went away (`mesh chaos run | head -2` exited 101 with a
//! panic message). The crate's `println!`, `print!` and `eprintln!` (defined in
//! `main.rs`, shadowing `std`'s) come here instead: once stdout is closed, output is
//! dropped and [`closed`] resolves, so long-running commands stop as they would on
//! Ctrl-C (through `shutdown_signal`), stopping the processes they started, and
//! `mesh chaos run` runs no further scenario.
//!
//! Why not restore `SIGPIPE`'s default action, as C programs have it: the process would
//! die at the write, and `mesh up` or `mesh chaos run` would leave the nats-servers and
//! hubs they started running.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use tokio::sync::Notify;

static CLOSED: AtomicBool = AtomicBool::new(false);
static NOTIFY: LazyLock<Notify> = LazyLock::new(Notify::new);

/// Writes `args` (and a newline when `newline`) to stdout; a closed stdout is noted,
/// not a panic. Other write errors are ignored as `print!` users expect nothing else.
pub fn stdout(args: fmt::Arguments<'_>, newline: bool) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|_| match newline {
        true => out.write_all(b"\n"),
        false => out.flush(),
    });
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CLOSED.store(true, Ordering::Relaxed);
            NOTIFY.notify_waiters();
        }
    }
}

/// Writes `args` and a newline to stderr, ignoring a closed stderr.
pub fn stderr(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|_| err.write_all(b"\n"));
}

/// Whether stdout's reader has gone.
pub fn is_closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Resolves once stdout's reader has gone.
pub async fn closed() {
    loop {
        // Created before the check, so a close between the two still wakes it.
        let woken = NOTIFY.notified();
        if is_closed() {
            return;
        }
        woken.await;
    }
}
