// naive's web observer, the Cluster panel (a host on the PostgreSQL store): every host of the cluster,
// alive or not and when it was last seen, and the symbols each holds the lease of, from the status
// app.js receives (`status.cluster`, ClusterStatus, as this host's lease keeper last read it; see
// naivectl status). Hidden on one host (SQLite). Every text goes in with textContent.
"use strict";

(() => {
  const panel = document.getElementById("cluster");
  if (!panel) return;
  const { duration, el } = window.naiveFormat;  // app.js's, which runs first (both deferred, in order)

  const age = el("span", { className: "age" });
  const error = el("p", { id: "cluster-error", hidden: true });
  error.setAttribute("role", "alert");
  const hosts = el("tbody");
  panel.setAttribute("aria-live", "polite");
  panel.append(
    el("h2", {}, "Cluster ", age),
    error,
    el("table", {},
      el("thead", {}, el("tr", {}, ...["host", "state", "last seen", "pid", "symbols held"].map((h) => el("th", { textContent: h })))),
      hosts),
  );

  function draw() {
    const pushed = window.naiveStatus;
    const cluster = pushed && pushed.status ? pushed.status.cluster || null : null;
    panel.hidden = cluster === null;
    if (!cluster) return;
    age.textContent = cluster.read_seconds_ago == null
      ? "not read yet" : `this host ${cluster.host_id}, read ${duration(cluster.read_seconds_ago)} before this status`;
    error.hidden = cluster.error == null;
    if (cluster.error != null) error.textContent = `The lease keeper's last round failed: ${cluster.error}`;
    // A lease counts for its holder while it has not expired (an expired one waits for another host).
    const held = new Map();
    for (const lease of cluster.leases) {
      if (lease.expires_in_seconds <= 0) continue;
      if (!held.has(lease.holder)) held.set(lease.holder, []);
      held.get(lease.holder).push(lease.symbol);
    }
    hosts.replaceChildren(...cluster.hosts.map((h) => {
      const alive = h.seen_seconds_ago < cluster.lease_seconds;
      const symbols = (held.get(h.host_id) || []).sort();
      const tr = el("tr", { className: alive ? "" : "down" },
        el("td", { textContent: h.host_id + (h.host_id === cluster.host_id ? " (this host)" : "") }),
        el("td", { textContent: alive ? "alive" : "not seen", className: alive ? "" : "bad" }),
        el("td", { textContent: `${duration(h.seen_seconds_ago)} ago` }),
        el("td", { textContent: String(h.pid) }),
        el("td", { textContent: symbols.length ? `${symbols.length}: ${symbols.join(" ")}` : "none" }));
      Object.assign(tr.dataset, { host: h.host_id, alive: String(alive), held: symbols.join(" ") });
      return tr;
    }));
  }

  document.addEventListener("naive:status", draw);
  draw();  // a status that came before this file ran
})();
