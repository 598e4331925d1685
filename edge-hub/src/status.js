// The edge hub's status page: reads status.json every second and draws it, with
// textContent only (see edge-hub/src/status.rs).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const int = (n) => Number(n).toLocaleString("en-US");
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

  function rate(now, key, value) {
    if (!prev || now <= prev.time) return "–";
    const r = Math.max(0, value - prev.values[key]) / ((now - prev.time) / 1000);
    return r.toFixed(r < 10 ? 1 : 0);
  }

  function draw(s) {
    const now = Date.parse(s.time);
    const o = s.outbox;
    const rejected = Object.values(s.rejected).reduce((a, b) => a + b, 0);
    const expelled = Object.values(o.expelled).reduce((a, b) => a + b, 0);
    document.title = "agentmesh · edge " + s.edge;
    set("edge", s.edge);
    set("ready", s.ready ? "accepting" : "not ready", s.ready ? "badge ok" : "badge bad");
    set("uplink", s.uplink_up ? "link up" : "link down", s.uplink_up ? "badge ok" : "badge bad");
    set("updated", "as of " + new Date(now).toISOString().replace("T", " ").slice(0, 19) + " UTC");
    set("backlog", int(o.events), o.events > 0 && !s.uplink_up ? "value warn" : "value");
    set("backlog-bytes", bytes(o.bytes));
    set("max-bytes", bytes(o.max_bytes));
    const fill = o.max_bytes > 0 ? o.bytes / o.max_bytes : 0;
    set("fill", (fill * 100).toFixed(fill < 0.1 ? 2 : 0) + "%");
    $("fill-bar").className = fill >= 0.9 ? "bar bad" : fill >= 0.7 ? "bar warn" : "bar";
    $("fill-bar").firstElementChild.style.width = Math.min(100, fill * 100) + "%";
    set("last-seq", int(o.last_seq));
    set("acked-seq", int(o.acked_seq));
    set("inflight", int(s.bundles_inflight));
    set("ingested", int(s.ingested_events));
    set("ingest-rate", rate(now, "ingested", s.ingested_events));
    set("forwarded", int(s.forwarded_events));
    set("forward-rate", rate(now, "forwarded", s.forwarded_events));
    set("rejected", int(rejected), rejected > 0 ? "value warn" : "value");
    set("reject-rate", rate(now, "rejected", rejected));
    set("repeated", int(s.repeated));
    set("expelled", int(expelled), expelled > 0 ? "value bad" : "value");
    set("expelled-by", Object.keys(o.expelled).map((k) => k + " " + int(o.expelled[k])).join(" · "));
    const rows = document.createDocumentFragment();
    for (const reason of Object.keys(s.rejected)) {
      const tr = document.createElement("tr");
      tr.dataset.reason = reason;
      for (const v of [reason, int(s.rejected[reason])]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      rows.appendChild(tr);
    }
    if (!Object.keys(s.rejected).length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 2;
      td.className = "none";
      td.textContent = "none since the hub started";
      tr.appendChild(td);
      rows.appendChild(tr);
    }
    $("reasons").replaceChildren(rows);
    prev = { time: now, values: { ingested: s.ingested_events, forwarded: s.forwarded_events, rejected: rejected } };
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
