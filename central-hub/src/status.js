// The central hub's status page: reads status.json every second and draws it.
// Ids come from the network: everything is written with textContent or as an attribute
// value, never parsed as HTML (see central-hub/src/status.rs, "Trust").
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const int = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
  let prev = null;

  function set(id, value, cls) {
    const el = $(id);
    el.textContent = value;
    if (cls !== undefined) el.className = cls;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }

  function age(ms) {
    if (ms === null || ms === undefined) return "never";
    if (ms < 1000) return "just now";
    const s = Math.round(ms / 1000);
    if (s < 120) return s + " s ago";
    if (s < 7200) return Math.round(s / 60) + " min ago";
    return Math.round(s / 3600) + " h ago";
  }

  function since(rfc3339, now) {
    if (!rfc3339) return "–";
    const t = Date.parse(rfc3339);
    return isNaN(t) ? rfc3339 : age(now - t);
  }

  function rate(now, key, value) {
    if (!prev || !(key in prev.values) || now <= prev.time) return null;
    return Math.max(0, value - prev.values[key]) / ((now - prev.time) / 1000);
  }

  function perSecond(r) {
    return r === null ? "–" : r.toFixed(r < 10 ? 1 : 0);
  }

  function cell(tr, key, value, cls, title) {
    const td = document.createElement("td");
    td.dataset.k = key;
    td.textContent = value;
    if (cls) td.className = cls;
    if (title) td.title = title;
    tr.appendChild(td);
  }

  function draw(s) {
    const now = Date.parse(s.time);
    const values = { landed: s.landed_events };
    document.title = "agentmesh · " + s.hub;
    set("hub", s.hub);
    const heldIds = Object.keys(s.held);
    if (!s.ready) set("ready", "not ready", "badge bad");
    else if (heldIds.length) set("ready", "ready, degraded", "badge warn");
    else set("ready", "ready", "badge ok");
    set("updated", "as of " + new Date(now).toISOString().replace("T", " ").slice(0, 19) + " UTC");

    const connected = s.edges.filter((e) => e.link === "connected").length;
    const lost = s.edges.filter((e) => e.link === "lost").map((e) => e.id);
    set("edges-connected", connected, lost.length ? "bad" : "");
    set("edges-total", s.edges.length);
    set("edges-lost", lost.length ? "lost: " + lost.join(", ") : "");
    set("landed", int(s.landed_events));
    set("landing-rate", perSecond(rate(now, "landed", s.landed_events)));
    set("agents-active", int(s.agents.active));
    set("agents-total", int(s.agents.total));
    const d = s.dead_letters;
    set("dlq-recorded", int(d.recorded), d.recorded > 0 ? "value warn" : "value");
    set("dlq-waiting", d.waiting === null ? "?" : int(d.waiting));
    set("dlq-redriven", int(d.redriven));
    set("dlq-purged", int(d.purged));
    set("audit-records", int(s.audit.records));
    set("audit-hash", s.audit.head_hash.slice(0, 16) + "… read " + age(s.audit.read_age_ms));
    const held = $("held");
    held.hidden = heldIds.length === 0;
    held.textContent = heldIds.map((id) => "held edge " + id + ": " + s.held[id]).join("; ");

    const rows = document.createDocumentFragment();
    for (const e of s.edges) {
      const l = e.lander;
      const hb = e.heartbeat;
      values["landed:" + e.id] = l.landed_events;
      values["refused:" + e.id] = l.refused_bundles;
      const tr = document.createElement("tr");
      tr.dataset.edge = e.id;
      cell(tr, "id", e.id);
      const link = e.link === null ? "heard" : e.link;
      cell(tr, "link", l.held ? link + " (held)" : link,
        e.link === "connected" && !l.held ? "ok" : e.link === "lost" || l.held ? "bad" : "warn",
        e.lost_at ? "lost at " + e.lost_at : undefined);
      if (hb) {
        const stale = e.link === "lost";
        cell(tr, "last-heard", age(hb.age_ms), stale ? "stale" : "", "last status heartbeat");
        cell(tr, "backlog", int(hb.backlog_events), stale ? "stale" : hb.backlog_events > 0 ? "warn" : "",
          bytes(hb.backlog_bytes) + (stale ? ", as last reported before the link was lost" : ""));
      } else {
        cell(tr, "last-heard", since(e.last_seen, now), "stale",
          "no heartbeat since this hub started; the registry's last record of the edge");
        cell(tr, "backlog", "–");
      }
      cell(tr, "landed", int(l.landed_events));
      cell(tr, "mark", int(l.mark));
      cell(tr, "landing-rate", perSecond(rate(now, "landed:" + e.id, l.landed_events)));
      cell(tr, "lag", int(l.lag), l.lag > 0 ? "warn" : "");
      cell(tr, "in-hand", int(l.in_hand), l.in_hand > 0 ? "warn" : "");
      const refusals = rate(now, "refused:" + e.id, l.refused_bundles);
      cell(tr, "refused", int(l.refused_bundles) + (refusals ? " (" + perSecond(refusals) + "/s)" : ""),
        l.refused_bundles > 0 ? "bad" : "");
      cell(tr, "outages", int(e.outages));
      cell(tr, "expelled", int(e.expelled), e.expelled > 0 ? "bad" : "");
      cell(tr, "agents", int(e.agents));
      rows.appendChild(tr);
    }
    $("edges").replaceChildren(rows);
    $("empty").hidden = s.edges.length > 0;
    prev = { time: now, values: values };
  }

  async function tick() {
    try {
      const r = await fetch("status.json", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      draw(await r.json());
      $("error").hidden = true;
      document.body.classList.remove("unreachable");
    } catch (e) {
      $("error").textContent = "Cannot read status.json (" + e.message + "): the figures below are stale.";
      $("error").hidden = false;
      document.body.classList.add("unreachable");
    }
  }

  tick();
  setInterval(tick, 1000);
})();
