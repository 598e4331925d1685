//! The two outbox scenarios, `outbox-reject` and `outbox-drop-oldest`: a 200 kB outbox
//! filled behind a cut, then judged for what the full policy promises (refusals that
//! name the full outbox; or exactly the oldest expelled, as many as the metric and the
//! audit log say).

use std::collections::HashSet;
use std::time::Duration;

use mesh_testkit::{Mesh, MeshBuilder, DEADLINE};
use uuid::Uuid;

use super::faults::Faults;
use super::judging::{expelled_metric, finish, judge, read_events, recovery};
use super::load::Load;
use super::monitor::Monitor;
use super::plan::{scenario_seed, Action, Timeline, MIN_TAIL};
use super::{start_mesh, Report, RunOpts, ScenarioError};
use crate::producer::AgentLog;

/// One agent may fill the whole outbox here (`limits.outbox_share = 1`): these scenarios
/// are about the outbox filling, not about one agent's quota. `[outbox]` comes last:
/// `full_policy` is appended to it.
const FULL_OUTBOX_EDGE: &str =
    "[limits]\noutbox_share = 1.0\n[ingest]\nmax_event_bytes = 65536\n[outbox]\nmax_bytes = 200000\n";

/// The mesh of an outbox scenario (a 200 kB outbox with `full_policy`) and its monitor.
async fn full_outbox_mesh(
    opts: &RunOpts,
    report: &Report,
    full_policy: &str,
) -> Result<(Mesh, Monitor), ScenarioError> {
    let builder = MeshBuilder::new()
        .edge_toml(format!(
            "{FULL_OUTBOX_EDGE}full_policy = \"{full_policy}\"\n"
        ))
        .seed(scenario_seed(opts.seed, &report.scenario));
    let mesh = start_mesh(opts, &report.scenario, builder).await?;
    let monitor = Monitor::start(&mesh)?;
    Ok((mesh, monitor))
}

/// `reject`: the link is cut while an agent publishes 1 KiB events at 300/s; the 200 kB
/// outbox fills and further publishes are refused with `outbox_full`. After the heal the
/// backlog drains; the refused events never arrive, every acked one does, and after the
/// drain publishing works again.
pub(crate) async fn outbox_reject(
    opts: &RunOpts,
    t: &Timeline,
    report: &mut Report,
) -> Result<(), ScenarioError> {
    let (mut mesh, monitor) = full_outbox_mesh(opts, report, "reject").await?;
    let load = Load::start(
        &mesh,
        &[(0, "a1".into())],
        300.0,
        1024,
        Duration::from_secs(2),
    )
    .await?;
    let mut faults = Faults::new();
    faults.sleep_until(t.warm).await;
    faults.apply(&mut mesh, Action::Cut(0))?;
    faults.sleep_until(t.faults_end).await;
    faults.apply(&mut mesh, Action::Heal(0))?;
    let high = load.high_water();
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    let mut logs = load.stop().await;
    // After the drain the outbox has room again: a fresh agent's publishes are all acked.
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let after = Load::start(
        &mesh,
        &[(0, "a2".into())],
        200.0,
        1024,
        Duration::from_secs(2),
    )
    .await?;
    faults
        .sleep_until(faults.elapsed() + Duration::from_millis(500))
        .await;
    let after_logs = after.stop().await;
    let after_failed: usize = after_logs.iter().map(AgentLog::failures).sum();
    if after_failed > 0 {
        report.violations.push(format!(
            "G7: {after_failed} publishes still refused after the outbox drained"
        ));
    }
    logs.extend(after_logs);
    let refusals: Vec<&String> = logs
        .iter()
        .flat_map(|l| l.refused.iter().map(|r| &r.1))
        .collect();
    if refusals.is_empty() {
        report
            .violations
            .push("not exercised: the outbox never filled (no publish refused)".into());
    } else if let Some(bad) = refusals.iter().find(|m| !m.contains("outbox full")) {
        report.violations.push(format!(
            "G7: a refusal does not name the full outbox: {bad}"
        ));
    } else {
        report.notes.push(format!(
            "{} publishes refused, e.g. \"{}\"",
            refusals.len(),
            refusals[0]
        ));
    }
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    if report.expelled_metric != 0 {
        report.violations.push(format!(
            "reject expelled {} events (mesh_edge_expelled_events_total)",
            report.expelled_metric
        ));
    }
    finish(&mut mesh, faults, report);
    Ok(())
}

/// `drop-oldest`: a first agent publishes with the link up and everything drains; the
/// link is cut and noticed; a second agent overfills the 200 kB outbox with 1 KiB events
/// (never refused); the link heals and a third agent publishes while the outbox is still
/// full. The missing events must be the oldest of the second agent's, exactly as many as
/// `mesh_edge_expelled_events_total` says and as the audit log records
/// (`outbox.expelled`); everything else arrives once, in order.
pub(crate) async fn outbox_drop_oldest(
    opts: &RunOpts,
    t: &Timeline,
    report: &mut Report,
) -> Result<(), ScenarioError> {
    let (mut mesh, monitor) = full_outbox_mesh(opts, report, "drop-oldest").await?;
    let timeout = Duration::from_secs(2);
    let mut faults = Faults::new();
    let before = Load::start(&mesh, &[(0, "a1".into())], 150.0, 1024, timeout).await?;
    faults.sleep_until(t.warm).await;
    let mut logs = before.stop().await;
    mesh.wait_drained(DEADLINE).await?;
    faults.apply(&mut mesh, Action::Cut(0))?;
    mesh.wait_uplink(0, false).await?;
    let during = Load::start(&mesh, &[(0, "a2".into())], 300.0, 1024, timeout).await?;
    faults.sleep_until(t.faults_end).await;
    // Nothing acked after the heal counts for recovery: the backlog is what must land.
    let high = during.high_water();
    let mut overfilled = during.stop().await;
    faults.apply(&mut mesh, Action::Heal(0))?;
    let after = Load::start(&mesh, &[(0, "a3".into())], 150.0, 1024, timeout).await?;
    let tail_end = t.d.max(faults.elapsed() + MIN_TAIL);
    let (recovered, ()) = tokio::join!(recovery(&mesh, &high), faults.sleep_until(tail_end));
    logs.extend(after.stop().await);
    let o = overfilled.pop().unwrap_or_default();
    if o.failures() > 0 {
        report.violations.push(format!(
            "drop-oldest refused {} publishes (it never refuses)",
            o.failures()
        ));
    }
    // Judge the overfilling agent's events with the expelled prefix taken out, once the
    // metric says how many were expelled.
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let expelled = expelled_metric(&mesh).await as usize;
    let events = read_events(&mesh).await?;
    let present: HashSet<Uuid> = events.iter().map(|e| e.id).collect();
    let missing = match missing_prefix(&o.acked, &present) {
        Ok(k) => k,
        Err(positions) => {
            report.violations.push(format!(
                "G2: the missing events of the overfilling agent are not its oldest ({} missing, positions {:?}…)",
                positions.len(),
                &positions[..positions.len().min(5)]
            ));
            positions.len()
        }
    };
    if expelled == 0 {
        report
            .violations
            .push("not exercised: nothing was expelled".into());
    }
    // The count is exact: an event expelled while in flight in a bundle is counted only
    // if that bundle is not acknowledged (then it is missing too).
    if missing != expelled {
        report.violations.push(format!(
            "G2: {missing} events of the overfilling agent are missing, but mesh_edge_expelled_events_total says {expelled}"
        ));
    }
    // G2: each expulsion is also written to the audit log (the edge reports its counters
    // in its status heartbeat, every second; the central hub records the increase).
    let audited = wait_audited_expelled(&mesh, expelled as u64).await;
    if audited != expelled as u64 {
        report.violations.push(format!(
            "G2: the audit log records {audited} expelled events (outbox.expelled), the metric says {expelled}"
        ));
    } else {
        report.notes.push(format!(
            "the audit log records the {audited} expelled events"
        ));
    }
    let mut kept = o.clone();
    kept.acked = o.acked[missing.min(o.acked.len())..].to_vec();
    let acked_all = logs.iter().map(|l| l.acked.len()).sum::<usize>() + o.acked.len();
    logs.push(kept);
    judge(&mut mesh, logs, recovered, monitor, &faults, report).await?;
    report.acked = acked_all;
    report.expelled = missing;
    report.notes.push(format!(
        "{} of {} events of the overfilling agent expelled, the oldest first",
        missing,
        o.acked.len()
    ));
    finish(&mut mesh, faults, report);
    Ok(())
}

/// Where an agent's acked events missing from the stream are: `Ok(k)` when they are
/// exactly its `k` oldest (what drop-oldest may expel), else `Err` with their positions.
fn missing_prefix(acked: &[Uuid], present: &HashSet<Uuid>) -> Result<usize, Vec<usize>> {
    let missing: Vec<usize> = acked
        .iter()
        .enumerate()
        .filter(|(_, id)| !present.contains(id))
        .map(|(i, _)| i)
        .collect();
    if missing.iter().enumerate().all(|(k, i)| k == *i) {
        Ok(missing.len())
    } else {
        Err(missing)
    }
}

/// The expelled events `MESH_AUDIT` records (the latest `total` of each edge and reason
/// in `outbox.expelled` records), once it reaches `want` or after 10 s.
async fn wait_audited_expelled(mesh: &Mesh, want: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = audited_expelled(mesh).await;
        if got >= want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn audited_expelled(mesh: &Mesh) -> u64 {
    use schemas::audit::{AuditEvent, AuditRecord};
    let Ok(records) =
        schemas::audit::read_all(mesh.central_js(), schemas::subject::STREAM_AUDIT).await
    else {
        return 0;
    };
    // The latest total per (edge, reason): each record carries the edge's counter.
    let mut totals: std::collections::HashMap<(String, String), u64> = Default::default();
    for (_, payload) in records {
        let Ok(AuditEvent::OutboxExpelled(e)) = AuditRecord::decode(&payload)
            .map_err(|_| ())
            .and_then(|r| r.event().map_err(|_| ()))
        else {
            continue;
        };
        totals.insert((e.edge, e.reason), e.total);
    }
    totals.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_oldest_may_be_missing() {
        let ids: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
        let present = |skip: &[usize]| -> HashSet<Uuid> {
            ids.iter()
                .enumerate()
                .filter(|(i, _)| !skip.contains(i))
                .map(|(_, id)| *id)
                .collect()
        };
        assert_eq!(missing_prefix(&ids, &present(&[])), Ok(0));
        assert_eq!(missing_prefix(&ids, &present(&[0, 1, 2])), Ok(3));
        assert_eq!(missing_prefix(&ids, &present(&[0, 2])), Err(vec![0, 2]));
        assert_eq!(missing_prefix(&ids, &present(&[5])), Err(vec![5]));
    }
}
