//! Waiting is a poll with a deadline, never a bare sleep.

use std::time::{Duration, Instant};

use crate::KitError;

/// Longest any single wait of the kit lasts before it gives up.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// How often [`wait_until`] asks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds; returns how long that took, or
/// [`KitError::Timeout`] naming `what` after `deadline`.
pub async fn wait_until<F, Fut>(
    what: &str,
    deadline: Duration,
    mut cond: F,
) -> Result<Duration, KitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if cond().await {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            return Err(KitError::Timeout {
                what: what.into(),
                waited: deadline,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
