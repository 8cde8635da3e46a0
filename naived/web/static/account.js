// naive's web observer, the Account panel: balances, the open orders at the exchange and the host's rate
// budget, from the status app.js receives (`status.account`, AccountStatus; see naivectl account), with how
// old the read is and, when the last one failed, its error. Every text goes in with textContent.
"use strict";

(() => {
  const panel = document.getElementById("account");
  if (!panel) return;
  let account = null;
  let skewMs = 0;  // the server's clock less this browser's, as app.js last measured it
  let drawn = "";  // the balances, orders and error last drawn, as JSON: redrawn only when they change

  const now = () => (Date.now() + skewMs) / 1000;
  const { duration, num: trimmed, el } = window.naiveFormat;  // app.js's, which runs first (both deferred, in order)

  // The panel's parts, made once: a heading with the read's age, the error line, three blocks.
  const age = el("span", { className: "age" });
  const error = el("p", { id: "account-error", hidden: true });
  error.setAttribute("role", "alert");
  const balances = el("tbody");
  const orders = el("tbody");
  const ordersTitle = el("h3", { textContent: "Open orders at the exchange" });
  const budget = el("dl", { id: "budget" });
  const table = (heads, body, numeric) => el("table", {},
    el("thead", {}, el("tr", {}, ...heads.map((h, i) => el("th", { textContent: h, className: numeric.includes(i) ? "num" : "" })))),
    body);
  panel.setAttribute("aria-live", "polite");
  panel.append(
    el("h2", {}, "Account ", age),
    error,
    el("div", { className: "account-blocks" },
      el("div", { id: "account-balances" }, el("h3", { textContent: "Balances" }),
        table(["asset", "free", "locked"], balances, [1, 2])),
      el("div", { id: "account-orders" }, ordersTitle,
        table(["symbol", "side", "price", "qty", "executed", "status", "client order id", "age"], orders, [2, 3, 4, 7])),
      el("div", { id: "account-budget" }, el("h3", { textContent: "Rate budget (this host)" }), budget)),
  );

  function row(cells, numeric, data) {
    const tr = el("tr", {}, ...cells.map((text, i) => el("td", { textContent: text, className: numeric.includes(i) ? "num" : "" })));
    Object.assign(tr.dataset, data);
    return tr;
  }

  function drawTables(a) {
    balances.replaceChildren(...a.balances.map((b) => row([b.asset, trimmed(b.free), trimmed(b.locked)], [1, 2], { asset: b.asset })));
    if (a.read_at != null && a.balances.length === 0) balances.append(el("tr", {}, el("td", { colSpan: 3, className: "none", textContent: "none" })));
    orders.replaceChildren(...a.open_orders.map((o) => {
      const tr = row([o.symbol, o.side, trimmed(o.price), trimmed(o.quantity), trimmed(o.executed_qty), o.status, o.client_order_id, ""],
        [2, 3, 4, 7], { order: o.client_order_id, symbol: o.symbol });
      tr.time = o.time;
      return tr;
    }));
    if (a.read_at != null && a.open_orders.length === 0) orders.append(el("tr", {}, el("td", { colSpan: 8, className: "none", textContent: "none" })));
    ordersTitle.textContent = `Open orders at the exchange (${a.open_orders.length})`;
  }

  function drawBudget(b) {
    if (!b) {
      budget.replaceChildren(el("dd", { textContent: "not readable (no rate budget file)" }));
      return;
    }
    const items = [
      ["request weight", `${b.weight} / ${b.weight_limit}`, "this minute"],
      ["orders", `${b.orders_10s} / ${b.orders_10s_limit}`, "this 10 s"],
      ["orders", `${b.orders_day} / ${b.orders_day_limit}`, "today (UTC)"],
    ];
    const parts = items.flatMap(([term, used, when]) => [el("dt", { textContent: term }), el("dd", {}, el("b", { textContent: used }), ` ${when}`)]);
    if (b.share_hosts) parts.push(el("dt", { textContent: "shared" }), el("dd", { textContent: `this host's share of the account, among ${b.share_hosts} host${b.share_hosts === 1 ? "" : "s"}` }));
    if (b.banned_until != null && b.banned_until > now()) {
      parts.push(el("dt", { textContent: "held", className: "bad" }),
        el("dd", { className: "bad", textContent: `the exchange answered ${b.ban_status}: nothing is sent for ${duration(b.banned_until - now())}` }));
    }
    budget.replaceChildren(...parts);
  }

  // The ages move with the clock: the read's, the error's and each order's.
  function tick() {
    if (!account) return;
    const a = account;
    let text = a.read_at == null ? `not read yet (read every ${a.every_seconds}s)` : `read ${duration(now() - a.read_at)} ago`;
    if (a.pushed_at != null) text += `, balances pushed ${duration(now() - a.pushed_at)} ago`;
    age.textContent = text;
    error.hidden = a.error == null;
    if (a.error != null) {
      const shown = a.read_at == null ? "nothing read yet" : `shown as read ${duration(now() - a.read_at)} ago`;
      error.textContent = `Not read${a.error_at != null ? ` ${duration(now() - a.error_at)} ago` : ""}: ${a.error} (${shown})`;
    }
    for (const tr of orders.rows) if (tr.time) tr.cells[7].textContent = duration(now() - tr.time / 1000);
    panel.classList.toggle("failing", a.error != null);
  }

  function draw() {
    const pushed = window.naiveStatus;
    if (!pushed || !pushed.status) return;
    skewMs = pushed.skewMs || 0;
    account = pushed.status.account || null;
    panel.hidden = account === null;
    if (!account) return;
    const key = JSON.stringify([account.read_at, account.balances, account.open_orders]);
    if (key !== drawn) {
      drawTables(account);
      drawn = key;
    }
    drawBudget(account.budget);
    tick();
  }

  document.addEventListener("naive:status", draw);
  setInterval(tick, 1000);
  draw();  // a status that came before this file ran
})();
