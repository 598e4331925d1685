//! Judging a scenario: recovery after the last heal, the drain, the judge's verdict on
//! `MESH_EVENTS` written into the [`Report`], and the checks every scenario shares
//! (`MESH_DLQ` empty, cuts and heals noticed in time (G5), expulsions counted).

use std::time::Duration;

use mesh_testkit::{wait_until, Mesh, DEADLINE};
use schemas::Event;
use uuid::Uuid;

use super::faults::Faults;
use super::monitor::{Monitor, Seen};
use super::{Report, ScenarioError};
use crate::judge::{read_stream, Verdict};
use crate::producer::AgentLog;

/// Waits until every edge reports its uplink up and the centre landed every event up to
/// `high[site]`; returns how long that took, or `None` after the deadline.
pub(crate) async fn recovery(mesh: &Mesh, high: &[u64]) -> Option<Duration> {
    wait_until("recovery after the last heal", DEADLINE, || async {
        for (i, s) in mesh.sites.iter().enumerate() {
            if mesh.edge_metric(i, "mesh_edge_uplink_up").await != Some(1.0) {
                return false;
            }
            match mesh.landed_mark(&s.id).await {
                Some(m) if m >= high[i] => {}
                _ => return false,
            }
        }
        true
    })
    .await
    .ok()
}

/// Waits for the drain, reads `MESH_EVENTS` and fills the report from the judge's
/// verdict; returns it.
pub(crate) async fn judge(
    mesh: &mut Mesh,
    logs: Vec<AgentLog>,
    recovered: Option<Duration>,
    monitor: Monitor,
    faults: &Faults,
    report: &mut Report,
) -> Result<Verdict, ScenarioError> {
    if let Err(e) = mesh.wait_drained(DEADLINE).await {
        report.violations.push(format!("G5: not drained: {e}"));
    }
    let seen = monitor.finish().await;
    let events = read_events(mesh).await?;
    let v = Verdict::judge(&logs, &events);
    fill(report, &v, &logs);
    report.peak_outbox = seen.peak_outbox;
    report.recovery_s = recovered.map(|d| d.as_secs_f64());
    if recovered.is_none() {
        report.violations.push(format!(
            "G5: not live with everything acked before the last heal landed within {DEADLINE:?}"
        ));
    }
    report.expelled_metric = expelled_metric(mesh).await;
    // Nothing a scenario publishes is poison and the centre refuses nothing: a dead
    // letter would be an event that left the normal path.
    let dead = dead_letters(mesh).await;
    if dead > 0 {
        report.violations.push(format!(
            "{dead} messages in {} (no scenario should dead-letter anything)",
            schemas::subject::STREAM_DLQ
        ));
    }
    cut_noticed(faults, &seen, report);
    Ok(v)
}

/// Messages in `MESH_DLQ` (0 when the stream does not exist).
async fn dead_letters(mesh: &Mesh) -> u64 {
    match mesh
        .central_js()
        .get_stream(schemas::subject::STREAM_DLQ)
        .await
    {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

fn fill(report: &mut Report, v: &Verdict, logs: &[AgentLog]) {
    report.acked = v.acked;
    report.delivered = v.delivered;
    report.lost = v.lost.len();
    report.duplicated = v.duplicated.len();
    report.reordered = v.reordered.len();
    report.corrupted = v.corrupted.len();
    report.refused_present = v.refused_present.len();
    report.refused = logs.iter().map(|l| l.refused.len()).sum();
    report.unknown = logs.iter().map(|l| l.unknown.len()).sum();
    let mut add = |what: &str, ids: &[Uuid]| {
        if let Some(first) = ids.first() {
            report
                .violations
                .push(format!("{what}: {} (first ce-id {first})", ids.len()));
        }
    };
    add("G2 acked but missing", &v.lost);
    add("G3 duplicated", &v.duplicated);
    add("G4 reordered", &v.reordered);
    add("corrupted", &v.corrupted);
    add("G7 refused but present", &v.refused_present);
}

/// `mesh_edge_expelled_events_total`, summed over every edge and reason.
pub(crate) async fn expelled_metric(mesh: &Mesh) -> u64 {
    let mut total = 0.0;
    for i in 0..mesh.sites.len() {
        if let Some(page) = mesh.edge_scrape(i).await {
            total += page.sum("mesh_edge_expelled_events_total");
        }
    }
    total as u64
}

/// G5: every cut of at least 2 s was noticed (uplink down) within 3 s, and its heal
/// (uplink up) within 3 s too. G5 says 1 s; the margin is for a loaded machine.
fn cut_noticed(faults: &Faults, seen: &Seen, report: &mut Report) {
    let mut worst: Option<Duration> = None;
    let mut worst_heal: Option<Duration> = None;
    for (k, (at, action)) in faults.applied.iter().enumerate() {
        let Some(site) = action.cuts() else { continue };
        let healed = faults.applied[k + 1..]
            .iter()
            .find(|(_, a)| a.heals() == Some(site))
            .map(|(t, _)| *t);
        let Some(healed) = healed else { continue };
        if healed.duration_since(*at) < Duration::from_secs(2) {
            continue;
        }
        let samples = seen.uplink.get(site).map(Vec::as_slice).unwrap_or_default();
        let noticed = samples
            .iter()
            .find(|(t, up)| !up && *t >= *at)
            .map(|(t, _)| t.duration_since(*at));
        let resumed = samples
            .iter()
            .find(|(t, up)| *up && *t >= healed)
            .map(|(t, _)| t.duration_since(healed));
        match resumed {
            Some(d) => {
                worst_heal = Some(worst_heal.map_or(d, |w| w.max(d)));
                if d > Duration::from_secs(3) {
                    report.violations.push(format!(
                        "G5: the heal of e{} was noticed only after {:.2}s",
                        site + 1,
                        d.as_secs_f64()
                    ));
                }
            }
            None => report
                .violations
                .push(format!("G5: the heal of e{} was never noticed", site + 1)),
        }
        match noticed {
            Some(d) if *at + d <= healed => {
                worst = Some(worst.map_or(d, |w| w.max(d)));
                if d > Duration::from_secs(3) {
                    report.violations.push(format!(
                        "G5: the cut of e{} was noticed only after {:.2}s",
                        site + 1,
                        d.as_secs_f64()
                    ));
                }
            }
            _ => report.violations.push(format!(
                "G5: the cut of e{} at +{:.2}s was never noticed before its heal",
                site + 1,
                at.duration_since(faults.t0).as_secs_f64()
            )),
        }
    }
    report.cut_noticed_s = worst.map(|d| d.as_secs_f64());
    report.heal_noticed_s = worst_heal.map(|d| d.as_secs_f64());
}

/// Records the fault log and keeps the directory when something broke or recovery was slow.
pub(crate) fn finish(mesh: &mut Mesh, faults: Faults, report: &mut Report) {
    report.faults = faults.lines;
    report.notes.extend(faults.notes);
    let slow = report.recovery_s.is_some_and(|s| s > SLOW_RECOVERY_S);
    if slow {
        report.notes.push(format!(
            "slow recovery (over {SLOW_RECOVERY_S} s): stores and logs kept for a look"
        ));
    }
    if !report.passed() || slow {
        report.kept_dir = Some(mesh.keep_dir().display().to_string());
    }
}

/// A recovery slower than this is not a violation, but its directory is kept.
const SLOW_RECOVERY_S: f64 = 5.0;

/// The G6 violation when any publish in `logs` failed: how many, and the first
/// refusal's text (or "no answer"); `while` says what was going on.
pub(crate) fn failed_publishes(logs: &[AgentLog], while_: &str) -> Option<String> {
    let failed: usize = logs.iter().map(AgentLog::failures).sum();
    if failed == 0 {
        return None;
    }
    let first = logs
        .iter()
        .flat_map(|l| l.refused.first().map(|r| r.1.clone()))
        .next()
        .unwrap_or_else(|| "no answer".into());
    Some(format!("G6: {failed} publishes {while_} (first: {first})"))
}

/// Every event in `MESH_EVENTS`, in stream order (the judge's reader).
pub(crate) async fn read_events(mesh: &Mesh) -> Result<Vec<Event>, ScenarioError> {
    read_stream(mesh.central_js())
        .await
        .map_err(ScenarioError::ReadEvents)
}
