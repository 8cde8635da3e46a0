// naive's web observer: under each symbol, a chart of its price and its equity (realised + unrealised, in the
// quote asset) over time, its buys (green ▲) and sells (red ▼) at their fill prices, and its resting orders
// (dashed levels), drawn with uPlot (vendor/uplot). The series are the web child's
// (GET /api/v1/symbols/<SYMBOL>/series, naived/web/series.py), so a chart shows the same after a reload.
// Only open charts are fetched and drawn (a <details> per symbol; the first symbol's open at first): each is
// fetched when opened, then again after a pushed status, at most every REFRESH_MS, one request at a time.
// It draws into app.js's rows on its "naive:render" event, as pnl.js does.
"use strict";

(() => {
  const REFRESH_MS = 2000;  // a chart's whole series again at most this often: the server's is the one definition
  const HEIGHT = 200;
  const COLOURS = { price: "#3a5a8c", equity: "#8a5a00", BUY: "#1f6f43", SELL: "#b3261e" };
  const charts = new Map();  // symbol -> its chart: {symbol, details, box, plot, data, fetchedAt, inFlight, again, timer}
  let firstSeen = true;

  const ratio = () => window.devicePixelRatio || 1;
  const width = () => Math.round(Math.max(320, Math.min(760, document.getElementById("tree").clientWidth * 0.62)));

  const { el } = window.naiveFormat;  // app.js's, which runs first (both deferred, in order)

  function make(symbol, open) {
    const box = el("div", { className: "chart-box" });
    const key = el("div", { className: "chart-key" },
      ...[["buy", "▲ buy"], ["sell", "▼ sell"], ["level", "- - resting order"]].map(([className, textContent]) =>
        el("span", { className, textContent })));
    const note = el("div", { className: "chart-note" });
    const details = el("details", { className: "chart" }, el("summary", { textContent: "chart" }), box, key, note);
    details.dataset.symbol = symbol;
    const chart = { symbol, details, box, note, plot: null, data: null, fetchedAt: 0, inFlight: false, again: false, timer: null };
    details.addEventListener("toggle", () => (details.open ? schedule(chart) : close(chart)));
    details.open = open;
    return chart;
  }

  function close(chart) {
    if (chart.plot) chart.plot.destroy();
    chart.plot = null;
    clearTimeout(chart.timer);
    chart.timer = null;
    delete chart.box.dataset.buys;
    delete chart.box.dataset.sells;
  }

  // Fetch now if the last was REFRESH_MS ago, else once when it is; one request at a time.
  function schedule(chart) {
    if (!chart.details.open) return;
    if (chart.inFlight) {
      chart.again = true;
      return;
    }
    const wait = chart.fetchedAt + REFRESH_MS - Date.now();
    if (wait <= 0) load(chart);
    else if (chart.timer === null) chart.timer = setTimeout(() => { chart.timer = null; schedule(chart); }, wait);
  }

  async function load(chart) {
    chart.inFlight = true;
    chart.fetchedAt = Date.now();
    try {
      const answer = await fetch(`/api/v1/symbols/${encodeURIComponent(chart.symbol)}/series`, { cache: "no-store" });
      const body = await answer.json();
      if (!answer.ok) throw new Error(body.error || `HTTP ${answer.status}`);
      if (chart.details.open) draw(chart, body);
    } catch (error) {
      chart.note.textContent = `no chart: ${error.message}`;
    } finally {
      chart.inFlight = false;
      if (chart.again) {
        chart.again = false;
        schedule(chart);
      }
    }
  }

  // The x range takes in the fills (a cycle's may be older than the first point); the price range the fills and
  // the resting levels; a range of one value is widened, or uPlot would draw nothing.
  function widened(min, max, pad) {
    return min === max ? [min - pad, max + pad] : [min, max];
  }

  // Tick labels with as many places as their step needs (uPlot's default gives 0.5001 and 0.5002 as "0.5").
  function ticks(u, splits) {
    const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) : 0;
    const places = step > 0 && step < 1 ? Math.min(8, Math.ceil(-Math.log10(step) - 1e-9)) : 0;
    return splits.map((v) => v.toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places }));
  }

  // The resting orders within NEAR of the last price: they set the price range; one further away (a buy
  // resting far below the market) would flatten the price into a line, so it is named at the edge instead.
  const NEAR = 0.02;
  function isNear(data, level) {
    const last = data.points.length ? data.points[data.points.length - 1][1] : null;
    return last == null || Math.abs(Number(level.price) - last) <= Math.abs(last) * NEAR;
  }
  const near = (data) => data.resting.filter((level) => isNear(data, level));

  function options(chart) {
    const quote = chart.data.quote || "quote";
    return {
      width: width(), height: HEIGHT,
      scales: {
        x: {
          time: true,
          // From the data itself: for a single point uPlot offers a range of 1,000 days after it.
          range: (u) => {
            const times = [...u.data[0], ...chart.data.fills.map((f) => f.t)];
            const [a, b] = widened(Math.min(...times), Math.max(...times), 30);
            const pad = (b - a) * 0.02;  // a marker at either end is drawn whole
            return [a - pad, b + pad];
          },
        },
        price: {
          range: (u, min, max) => {
            const prices = [...chart.data.fills, ...near(chart.data)].map((o) => Number(o.price));
            const low = Math.min(min ?? Infinity, ...prices), high = Math.max(max ?? -Infinity, ...prices);
            const [a, b] = widened(low, high, Math.abs(low) * 0.001 || 1);
            const pad = (b - a) * 0.12;  // room for a marker's height at either end
            return [a - pad, b + pad];
          },
        },
        equity: { range: (u, min, max) => widened(min, max, Math.abs(min) * 0.1 || 0.01) },
      },
      series: [
        {},
        // uPlot's points show where they are few (a single one would be no line at all)
        { label: "price", scale: "price", stroke: COLOURS.price, width: 1.5, spanGaps: true },
        { label: "equity", scale: "equity", stroke: COLOURS.equity, width: 1.5, spanGaps: true,
          value: (u, v) => (v == null ? "-" : `${v} ${quote}`) },
      ],
      axes: [
        {},
        { scale: "price", label: `price (${quote})`, size: 70, values: ticks },
        { scale: "equity", side: 1, grid: { show: false }, label: `equity (${quote})`, size: 70, values: ticks },
      ],
      hooks: { draw: [(u) => marks(u, chart)] },
    };
  }

  // The resting orders as dashed levels, the fills as triangles; the numbers drawn go in data attributes.
  function marks(u, chart) {
    const { ctx, bbox } = u;
    const px = ratio();
    const counts = { BUY: 0, SELL: 0, levels: 0 };
    ctx.save();
    ctx.beginPath();
    ctx.rect(bbox.left, bbox.top, bbox.width, bbox.height);
    ctx.clip();
    ctx.lineWidth = px;
    ctx.setLineDash([6 * px, 4 * px]);
    ctx.globalAlpha = 0.75;  // lighter than the fills' markers
    ctx.font = `${11 * px}px system-ui, sans-serif`;
    const far = { above: 0, below: 0 };  // levels named at each edge so far
    for (const level of chart.data.resting) {
      ctx.strokeStyle = ctx.fillStyle = COLOURS[level.side];
      if (!isNear(chart.data, level)) {  // named at the edge it is beyond, one line each
        const below = Number(level.price) < u.scales.price.min;
        const edge = below ? "below" : "above";
        ctx.textBaseline = below ? "bottom" : "top";
        const y = below ? bbox.top + bbox.height - far.below * 13 * px : bbox.top + far.above * 13 * px;
        ctx.fillText(`${below ? "↓" : "↑"} ${level.side} ${level.qty} @ ${level.price}`, bbox.left + 4 * px, y);
        far[edge] += 1;
        counts.levels += 1;
        continue;
      }
      const y = Math.round(u.valToPos(Number(level.price), "price", true)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(bbox.left, y);
      ctx.lineTo(bbox.left + bbox.width, y);
      ctx.stroke();
      counts.levels += 1;
    }
    ctx.setLineDash([]);
    ctx.globalAlpha = 1;
    const size = 5 * px;
    for (const fill of chart.data.fills) {
      const x = u.valToPos(fill.t, "x", true), y = u.valToPos(Number(fill.price), "price", true);
      const up = fill.side === "BUY";
      ctx.fillStyle = COLOURS[fill.side];
      ctx.beginPath();  // ▲ its tip on the price for a buy, ▼ for a sell
      ctx.moveTo(x, y);
      ctx.lineTo(x - size, y + (up ? 1.6 : -1.6) * size);
      ctx.lineTo(x + size, y + (up ? 1.6 : -1.6) * size);
      ctx.closePath();
      ctx.fill();
      counts[fill.side] += 1;
    }
    ctx.restore();
    Object.assign(chart.box.dataset, { buys: counts.BUY, sells: counts.SELL, levels: counts.levels });
  }

  function draw(chart, body) {
    chart.data = body;
    const columns = [body.points.map((p) => p[0]), body.points.map((p) => p[1]), body.points.map((p) => p[2])];
    chart.box.dataset.points = String(body.points.length);
    chart.note.textContent = body.points.length ? "" : "no price or profit known yet";
    if (!body.points.length) {
      close(chart);
      return;
    }
    if (chart.plot) chart.plot.setData(columns);
    else chart.plot = new uPlot(options(chart), columns, chart.box);
  }

  function render(status, rows, fromServer) {
    const seen = new Set();
    for (const sym of status.symbols) {
      seen.add(sym.symbol);
      let chart = charts.get(sym.symbol);
      if (!chart) {
        chart = make(sym.symbol, firstSeen);
        charts.set(sym.symbol, chart);
        firstSeen = false;
      }
      const row = rows.get(`${sym.symbol}/supervisor`);
      if (row) row.cells[4].append(chart.details);  // app.js rewrote the cell: the chart goes back in, as it was
      if (fromServer) schedule(chart);
    }
    for (const [symbol, chart] of charts) {
      if (!seen.has(symbol)) {
        close(chart);
        charts.delete(symbol);
      }
    }
  }

  window.addEventListener("resize", () => {
    for (const chart of charts.values()) if (chart.plot) chart.plot.setSize({ width: width(), height: HEIGHT });
  });

  document.addEventListener("naive:render", (event) => {
    const { status, rows, fromServer } = event.detail;
    render(status, rows, fromServer);
  });
})();
