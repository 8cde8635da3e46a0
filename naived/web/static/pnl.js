// naive's web observer: each symbol's position and profit (its leader's `profit`, naived/core/pnl.py) on a
// line of its supervisor row, and the totals per quote asset above the tree. app.js draws the tree and
// then says so ("naive:render"); this draws into it. Money is summed exactly: decimal strings as BigInt
// units of 1e-8 (the status gives every figure to 8 places). Text goes in with textContent only.
"use strict";

(() => {
  const PLACES = 8n;
  const ONE = 10n ** PLACES;
  const lines = new Map();  // symbol -> its profit line (a div), kept across renders
  let totalsEl = null;

  // "-0.01591608" -> -1591608n; null stays null
  function units(text) {
    if (text == null) return null;
    const negative = text.startsWith("-");
    const [whole, fraction = ""] = text.replace(/^[-+]/, "").split(".");
    const value = BigInt(whole || "0") * ONE + BigInt((fraction + "00000000").slice(0, 8));
    return negative ? -value : value;
  }

  // -1591608n -> "-0.01591608", 100n * ONE -> "100"
  function decimal(value, places = PLACES) {
    const scale = 10n ** places;
    const negative = value < 0n;
    const abs = negative ? -value : value;
    const fraction = (abs % scale).toString().padStart(Number(places), "0").replace(/0+$/, "");
    return `${negative ? "-" : ""}${abs / scale}${fraction ? `.${fraction}` : ""}`;
  }

  // A percentage to 4 places of `part` / `whole` (both in units), rounded half away from zero.
  function percent(part, whole) {
    if (part == null || !whole) return null;
    const scaled = part * 1000000n;  // percent × 10^4
    const half = whole / 2n;
    return decimal((scaled + (scaled < 0n ? -half : half)) / whole, 4n);
  }

  const signOf = (value) => (value == null ? "unknown" : value > 0n ? "pos" : value < 0n ? "neg" : "zero");
  const signed = (value) => (value > 0n ? "+" : "") + decimal(value);

  function span(className, text) {
    return Object.assign(document.createElement("span"), { className, textContent: text });
  }

  // "unrealised " +0.38 " USDT": the figure coloured by its sign
  function figure(label, value, unit, text) {
    const part = span("figure", `${label} `);
    const number = span(`amount ${signOf(value)}`, text ?? (value == null ? "unknown" : signed(value)));
    part.append(number, unit ? ` ${unit}` : "");
    return part;
  }

  function fees(p) {
    const third = Object.entries(p.fees).filter(([asset]) => asset !== p.base && asset !== p.quote);
    return [`${decimal(units(p.fees_quote))} ${p.quote}`, ...third.map(([a, v]) => `${decimal(units(v))} ${a}`)].join(" + ");
  }

  function symbolLine(symbol, p) {
    const div = document.createElement("div");
    div.className = "pnl";
    const unrealised = units(p.unrealised), realised = units(p.realised);
    const back = p.return_on_budget == null ? null : units(p.return_on_budget);
    Object.assign(div.dataset, {
      symbol, position: p.position, unrealised: p.unrealised ?? "", realised: p.realised, cycles: String(p.cycles),
    });
    div.append(
      span("figure", `position ${decimal(units(p.position))} ${p.base} (cost ${decimal(units(p.cost))} ${p.quote})`),
      figure("unrealised", unrealised, p.quote),
      figure("realised", realised, p.quote),
      span("figure", `fees paid ${fees(p)}`),
      span("figure", `cycles ${p.cycles}`),
      figure("return", back, `on ${decimal(units(p.budget))} ${p.quote}`,
        back == null ? "unknown" : `${back > 0n ? "+" : ""}${percent(back, ONE)}%`),
    );
    return div;
  }

  // Per quote asset: the symbols' figures summed; unrealised unknown if any symbol's is.
  function totals(status) {
    const byQuote = new Map();
    for (const sym of status.symbols) {
      const p = sym.leader && sym.leader.profit;
      if (!p) continue;
      let t = byQuote.get(p.quote);
      if (!t) byQuote.set(p.quote, (t = { symbols: 0, budget: 0n, realised: 0n, unrealised: 0n, feesQuote: 0n, fees: new Map(), cycles: 0 }));
      t.symbols += 1;
      t.budget += units(p.budget);
      t.realised += units(p.realised);
      t.unrealised = t.unrealised == null || p.unrealised == null ? null : t.unrealised + units(p.unrealised);
      t.feesQuote += units(p.fees_quote);
      t.cycles += p.cycles;
      for (const [asset, amount] of Object.entries(p.fees)) {
        if (asset !== p.base && asset !== p.quote) t.fees.set(asset, (t.fees.get(asset) || 0n) + units(amount));
      }
    }
    return [...byQuote.entries()].sort(([a], [b]) => (a < b ? -1 : 1));
  }

  function totalsLine(quote, t) {
    const li = document.createElement("li");
    li.dataset.quote = quote;
    li.dataset.realised = decimal(t.realised);
    const result = t.unrealised == null ? null : t.realised + t.unrealised;
    const back = result == null ? null : percent(result, t.budget);
    const fees = [`${decimal(t.feesQuote)} ${quote}`, ...[...t.fees].map(([a, v]) => `${decimal(v)} ${a}`)].join(" + ");
    li.append(
      span("quote", quote),
      figure("unrealised", t.unrealised, quote),
      figure("realised", t.realised, quote),
      span("figure", `fees paid ${fees}`),
      span("figure", `cycles ${t.cycles}`),
      figure("return", result, `on ${decimal(t.budget)} ${quote} (${t.symbols} symbol${t.symbols === 1 ? "" : "s"})`,
        back == null ? "unknown" : `${result > 0n ? "+" : ""}${back}%`),
    );
    return li;
  }

  function draw(status, rows, fromServer) {
    if (!totalsEl) {
      totalsEl = Object.assign(document.createElement("ul"), { id: "profit-totals", hidden: true });
      totalsEl.setAttribute("aria-label", "profit per quote asset");
      document.getElementById("tree").before(totalsEl);
    }
    const seen = new Set();
    for (const sym of status.symbols) {
      const p = sym.leader && sym.leader.profit;
      if (!p) continue;
      seen.add(sym.symbol);
      if (fromServer || !lines.has(sym.symbol)) lines.set(sym.symbol, symbolLine(sym.symbol, p));
      const row = rows.get(`${sym.symbol}/supervisor`);
      if (row) row.cells[4].append(lines.get(sym.symbol));  // app.js rewrote the cell: the line goes back in
    }
    for (const symbol of [...lines.keys()]) if (!seen.has(symbol)) lines.delete(symbol);
    if (fromServer) {
      const all = totals(status);
      totalsEl.replaceChildren(...all.map(([quote, t]) => totalsLine(quote, t)));
      totalsEl.hidden = all.length === 0;
    }
  }

  document.addEventListener("naive:render", (event) => {
    const { status, rows, fromServer } = event.detail;
    draw(status, rows, fromServer);
  });
})();
