// naive's web observer: the process tree as `naivectl status` draws it, live from /api/v1/live.
// No framework, no build step. Every text from the status goes in with textContent (never as HTML).
"use strict";

(() => {
  const FLASH_MS = 1500;            // a row whose PID changed or whose restarts moved is highlighted this long
  const SILENT_FEED_SECONDS = 60;   // as naivectl: a last trade older than this, while followed, is worth a look
  const BACKOFF_MIN_MS = 500, BACKOFF_MAX_MS = 10000;

  const body = document.body;
  const rowsEl = document.getElementById("rows");
  const connectionEl = document.getElementById("connection");
  const summaryEl = document.getElementById("summary");
  const problemsEl = document.getElementById("problems");
  const rowsByKey = new Map();
  let latest = null;
  let skewMs = 0;  // the server's clock less this browser's: ages are the server's
  let backoffMs = BACKOFF_MIN_MS;

  const now = () => (Date.now() + skewMs) / 1000;

  function duration(span) {  // naivectl's: 42s, 17m, 3h05m
    const s = Math.max(0, Math.floor(span));
    if (s < 120) return `${s}s`;
    if (s < 7200) return `${Math.floor(s / 60)}m`;
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  }
  const age = (t) => (t == null ? "-" : duration(now() - t));
  // "0.49980000" -> "0.4998", "100.00000000" -> "100"
  const num = (text) => (text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text);
  // An element with properties (textContent, never HTML) and children: the other panels build with it.
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  };
  window.naiveFormat = { duration, num, el };  // for the other panels (account.js, cluster.js)

  function proc(key, kind, name, info, extra) {
    const running = info && info.pid != null;
    let state = running ? "running" : "not running";
    if (info && info.error) state = `error: ${info.error}`;
    return {
      key, kind, name, pid: info ? info.pid : null, started: info ? info.started_at : null,
      restarts: info ? info.restarts : null, state: extra || state, classes: { down: !running },
    };
  }

  function orderText(o) {
    return `${o.side} ${num(o.quantity)} @ ${num(o.price)} ${o.status}`;
  }

  function traderRow(symbol, t) {
    const parts = [];
    const s = t.state;
    if (s) {
      parts.push(`cycle ${s.cycle} ${s.status}`);
      for (const o of [s.buy_order, s.sell_order]) if (o) parts.push(orderText(o));
      if (s.intent) parts.push(`placing ${s.intent.side} ${s.intent.client_order_id}${s.intent.unknown ? " (outcome unknown)" : ""}`);
    }
    return {
      key: `${symbol}/trader/${t.trader_id}`, kind: "trader", name: `trader ${t.trader_id}`, pid: t.pid,
      started: t.started_at, restarts: t.restarts, state: parts.join(", ") || (t.pid ? "starting" : "not running"),
      classes: { down: t.pid == null },
    };
  }

  function marketText(leader) {
    const trade = leader.last_trade;
    if (!trade) return leader.following_market ? "no market trade seen yet" : "";
    const seconds = now() - trade.E / 1000;
    let text = `last trade ${num(trade.p)} ${duration(seconds)} ago`;
    if (!leader.following_market) text += " (not followed while the orders rest)";
    else if (seconds > SILENT_FEED_SECONDS) text += " (a quiet market or a silent feed: is streamerd running?)";
    return text;
  }

  function leaderRow(symbol, leader) {
    const parts = [`cycles finished ${leader.cycles_finished}`];
    if (leader.shutting_down) parts.push("shutting down");
    if (leader.waiting && leader.waiting_since != null) parts.push(`waiting ${age(leader.waiting_since)} for ${leader.waiting}`);
    const market = marketText(leader);
    if (market) parts.push(market);
    const quiet = leader.following_market && leader.last_trade && now() - leader.last_trade.E / 1000 > SILENT_FEED_SECONDS;
    return {
      key: `${symbol}/leader`, kind: "leader", name: "leader", pid: leader.pid, started: leader.started_at,
      restarts: leader.restarts, state: parts.join(", "), classes: { quiet: Boolean(quiet) },
    };
  }

  function symbolNode(sym) {
    const row = proc(`${sym.symbol}/supervisor`, "symbol", `${sym.symbol} [${sym.state}]`, sym.supervisor);
    const notes = sym.state === "failed" ? [] : [`supervisor ${sym.supervisor.pid != null ? "running" : "not running"}`];
    if (sym.lease_token != null) notes.push(`lease ${sym.lease_token}`);
    if (sym.error) notes.push(`error: ${sym.error}`);
    row.state = notes.join(", ");
    row.classes = { failed: sym.state === "failed", down: sym.supervisor.pid == null && sym.state !== "failed" };
    const node = { row, children: [] };
    if (sym.leader) {
      node.children.push({
        row: leaderRow(sym.symbol, sym.leader),
        children: sym.leader.traders.map((t) => ({ row: traderRow(sym.symbol, t), children: [] })),
      });
    }
    return node;
  }

  // The tree as nodes {row, children}, in naivectl's order.
  function nodes(tree) {
    const rootRow = {
      key: "naived", kind: "root", name: "naived", pid: tree.pid, started: tree.started_at, restarts: null,
      state: `exchange ${tree.exchange}, market ${tree.market}`, classes: {},
    };
    const children = [];
    if (tree.paper_exchange) children.push({ row: proc("paper-exchange", "paper-exchange", "paper-exchange", tree.paper_exchange), children: [] });
    if (tree.account_stream) children.push({ row: proc("account-stream", "account-stream", "account-stream", tree.account_stream), children: [] });
    if (tree.lease_keeper) {
      const cluster = tree.cluster;
      const extra = cluster && cluster.error ? `error: ${cluster.error}` : cluster ? `host ${cluster.host_id}, ${cluster.leases.filter((l) => l.holder === cluster.host_id).length} leases held` : "";
      children.push({ row: proc("lease-keeper", "lease-keeper", "lease-keeper", tree.lease_keeper, extra || null), children: [] });
    }
    if (tree.web) children.push({ row: proc("web", "web", "web", tree.web), children: [] });
    for (const sym of tree.symbols) children.push(symbolNode(sym));
    for (const o of tree.orphans || []) {
      children.push({
        row: {
          key: `orphan/${o.client_order_id}`, kind: "orphan", name: `orphan ${o.symbol} ${o.client_order_id}`, pid: null,
          started: null, restarts: null, classes: { failed: true },
          state: `${o.side} ${num(o.quantity)} @ ${num(o.price)}, executed ${num(o.executed_qty)}: prefix of ${o.minted_for}'s store, `
            + `no trader owns it (for ${age(o.since)}); cancel it or settle it by hand`,
        },
        children: [],
      });
    }
    return { row: rootRow, children };
  }

  // Depth-first, each row with the branch drawing naivectl puts before it ("├── ", "│   └── ").
  function flatten(node, lead = "", glyph = "", out = []) {
    out.push({ ...node.row, branch: lead + glyph });
    const childLead = lead + (glyph === "├── " ? "│   " : glyph === "└── " ? "    " : "");
    node.children.forEach((child, i) => flatten(child, childLead, i === node.children.length - 1 ? "└── " : "├── ", out));
    return out;
  }

  function makeRow(key) {
    const tr = document.createElement("tr");
    tr.dataset.key = key;
    for (const name of ["name", "pid", "up", "restarts", "state"]) {
      const td = document.createElement("td");
      td.className = name;
      tr.appendChild(td);
    }
    const branch = document.createElement("span");
    branch.className = "branch";
    tr.cells[0].append(branch, document.createElement("span"));
    return tr;
  }

  function flash(tr) {
    tr.classList.remove("flash");
    void tr.offsetWidth;  // restart the animation when it flashes again within FLASH_MS
    tr.classList.add("flash");
    clearTimeout(tr.flashTimer);
    tr.flashTimer = setTimeout(() => tr.classList.remove("flash"), FLASH_MS);
  }

  function update(tr, r, mayFlash) {
    const pid = r.pid == null ? "" : String(r.pid);
    const restarts = r.restarts == null ? "" : String(r.restarts);
    if (mayFlash && (tr.dataset.pid !== pid || tr.dataset.restarts !== restarts)) flash(tr);
    tr.cells[3].classList.toggle("moved", Boolean(r.restarts));
    tr.dataset.pid = pid;
    tr.dataset.restarts = restarts;
    tr.dataset.kind = r.kind;
    for (const name of ["failed", "down", "quiet"]) tr.classList.toggle(name, Boolean(r.classes[name]));
    const [branch, label] = tr.cells[0].children;
    branch.textContent = r.branch;
    label.textContent = r.name;
    tr.cells[1].textContent = pid || "-";
    tr.cells[2].textContent = r.pid == null ? "-" : age(r.started);
    tr.cells[3].textContent = restarts || "";
    tr.cells[4].textContent = r.state;
  }

  // `fromServer`: a new status (rows may flash); else the clock moved (ages only).
  function render(fromServer) {
    if (!latest) return;
    const tree = latest;
    const wanted = flatten(nodes(tree));
    const seen = new Set();
    let previous = null;
    for (const r of wanted) {
      let tr = rowsByKey.get(r.key);
      const fresh = !tr;
      if (fresh) {
        tr = makeRow(r.key);
        rowsByKey.set(r.key, tr);
      }
      update(tr, r, fromServer && !fresh);
      const expected = previous ? previous.nextSibling : rowsEl.firstChild;
      if (expected !== tr) rowsEl.insertBefore(tr, expected);
      previous = tr;
      seen.add(r.key);
    }
    for (const [key, tr] of rowsByKey) {
      if (!seen.has(key)) {
        tr.remove();
        rowsByKey.delete(key);
      }
    }
    const failed = tree.symbols.filter((s) => s.state === "failed").length;
    summaryEl.textContent = `${tree.symbols.length} symbols${failed ? `, ${failed} failed` : ""}; exchange ${tree.exchange}`;
    const problems = [...(tree.problems || [])];
    problemsEl.replaceChildren(...problems.map((p) => Object.assign(document.createElement("li"), { textContent: p })));
    problemsEl.hidden = problems.length === 0;
    // Other scripts of the page (pnl.js) draw into the tree now that it is drawn.
    document.dispatchEvent(new CustomEvent("naive:render", { detail: { status: tree, rows: rowsByKey, fromServer } }));
  }

  function setConnection(state, text) {
    connectionEl.dataset.state = state;
    connectionEl.textContent = text;
    body.classList.toggle("stale", state !== "live" && latest !== null);
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${scheme}//${location.host}/api/v1/live`);
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type !== "status") return;
      if (typeof message.now === "number") skewMs = message.now * 1000 - Date.now();
      latest = message.status;
      backoffMs = BACKOFF_MIN_MS;
      setConnection("live", "live");
      render(true);
      // The other panels (account.js) draw from the same push: the latest here, for one loaded after it.
      window.naiveStatus = { status: latest, now: message.now, skewMs };
      document.dispatchEvent(new Event("naive:status"));
    };
    ws.onclose = () => {
      const wait = Math.round(backoffMs * (0.5 + Math.random() / 2));  // jitter: tabs do not retry in step
      backoffMs = Math.min(BACKOFF_MAX_MS, backoffMs * 2);
      setConnection("down", `disconnected; retrying in ${Math.ceil(wait / 1000)}s`);
      setTimeout(connect, wait);
    };
  }

  setInterval(() => render(false), 1000);  // ages move on between statuses
  connect();
})();
