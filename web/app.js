// Flowboard page: connection, subscriptions, and a paint loop that repaints only what changed.
//
// Frames are folded into the ViewState as they arrive (cheap: parse + a few sums); the
// DOM is touched only on requestAnimationFrame, once for everything since the last paint.
import { ViewState, DecodeError, takerPrice } from "./decoder.js";
import * as fmt from "./format.js";
import * as time from "./time.js";
import { Tape } from "./tape.js";
import { HotCards, sparkPoints } from "./cards.js";
import { ActivityChart } from "./chart.js";
import { HistoryPanel } from "./history.js";
import { Trader } from "./trader.js";
import { TraderPanels } from "./alerts.js";

const TAPE_LIMIT = 5000;
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30_000;
const OFFLINE_AFTER_ATTEMPTS = 5; // failed attempts before the header says "offline"
const CHART_EVERY_MS = 1000; // the chart redraws at most this often
const PAINT_EVERY_MS = 200; // data repaints at most this often (5 Hz): each paint is a whole frame lifecycle, and a tape moving faster is unreadable anyway
const TWEEN_MS = 450;
const TWEEN_STEP_MS = 200; // numbers roll in the same frames as the data

const byId = new Map();
// Elements by id, looked up once (the page never replaces the ones it asks for by id).
const $ = (id) => {
  let el = byId.get(id);
  if (el === undefined || !el.isConnected) {
    el = document.getElementById(id);
    byId.set(id, el);
  }
  return el;
};
const reducedMotion = matchMedia("(prefers-reduced-motion: reduce)");

// ---- warnings: once per kind, never fatal ----------------------------------
const warned = new Set();
function warnOnce(kind, ...args) {
  if (warned.has(kind)) return;
  warned.add(kind);
  console.warn(`flowboard: ${kind}:`, ...args);
}

// ---- state -------------------------------------------------------------------
const state = new ViewState({ tapeLimit: TAPE_LIMIT });
const ui = {
  view: localStorage.getItem("flowboard.view") === "d" ? "d" : "h", // the view asked for (subscribed)
  shown: null, // the view whose figures are on screen: switches once the asked view's "a" arrived
  detail: null, // ticker shown in the drawer
  lastFocus: null,
  firstRender: false,
  paintedSeq: -1, // the state's seq as of the last paint
  paintedFrames: -1, // the state's frame count as of the last paint (a command's answer keeps seq)
};
ui.shown = ui.view;
const viewName = (code) => (code === "h" ? "hour" : "day");

// ---- connection ----------------------------------------------------------------
const conn = {
  ws: null,
  attempts: 0,
  retryAt: 0,
  timer: null,
  state: "connecting",
  closeReason: "",
  live: false,
};

function channels() {
  return ["trades", "hot", ui.view === "h" ? "hour" : "day", "top", "today"];
}

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const q = new URLSearchParams({ ch: channels().join(",") });
  if (ui.detail) q.set("detail", ui.detail);
  // What the trader tools asked for, so that a resumed stream goes on with the same rankings.
  if (trader.parlays) q.set("parlays", "1");
  if (trader.watch.length) q.set("watch", trader.watch.join(","));
  if (state.epoch && state.seq >= 0) q.set("resume", `${state.epoch}:${state.seq}`);
  return `${proto}//${location.host}/ws?${q.toString().replaceAll("%2C", ",").replaceAll("%3A", ":")}`;
}

// The socket index.html opened before the modules loaded, if it asked for what we would.
function adoptEarly() {
  const early = window.flowboardEarly;
  delete window.flowboardEarly;
  if (!early) return null;
  if (early.ws.url !== new URL(wsUrl()).href || (early.close === null && early.ws.readyState > WebSocket.OPEN)) {
    early.ws.onclose = null;
    early.ws.close();
    return null;
  }
  return early;
}

function connect() {
  clearTimeout(conn.timer);
  conn.timer = null;
  setConn(conn.attempts ? "reconnecting" : "connecting");
  const early = conn.attempts ? null : adoptEarly();
  let ws;
  try {
    ws = early ? early.ws : new WebSocket(wsUrl());
  } catch (err) {
    warnOnce("connect", err);
    return scheduleReconnect();
  }
  conn.ws = ws;
  ws.onmessage = (ev) => onFrame(ev.data);
  ws.onclose = onClose;
  if (early) {
    for (const text of early.frames) onFrame(text);
    if (early.close) onClose(early.close);
  }
  return undefined;

  function onClose(ev) {
    if (conn.ws !== ws) return;
    conn.ws = null;
    conn.live = false;
    conn.closeReason = ev.code === 4008 || ev.reason ? `${ev.code} ${ev.reason}`.trim() : "";
    if (ev.code === 4008) warnOnce("closed-4008", "server closed the connection:", ev.reason);
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  conn.attempts++;
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (conn.attempts - 1));
  const delay = Math.round(base * (0.75 + Math.random() * 0.25));
  conn.retryAt = performance.now() + delay;
  conn.timer = setTimeout(connect, delay);
  setConn(navigator.onLine === false || conn.attempts > OFFLINE_AFTER_ATTEMPTS ? "offline" : "reconnecting");
}

function retryNow() {
  if (conn.ws) return;
  conn.attempts = Math.max(0, conn.attempts - 1);
  connect();
}

function send(msg) {
  if (conn.ws && conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify(msg));
}

function setConn(s) {
  conn.state = s;
  paintConn();
}

function paintConn() {
  const box = $("conn");
  const text = $("conn-text");
  let label;
  if (conn.state === "live") label = "live";
  else if (conn.state === "connecting") label = "connecting…";
  else if (conn.ws) label = "reconnecting…";
  else {
    const s = Math.max(0, Math.ceil((conn.retryAt - performance.now()) / 1000));
    label = `${conn.state === "offline" ? "offline" : "reconnecting"} · retry in ${s}s`;
  }
  if (box.dataset.state !== conn.state) box.dataset.state = conn.state;
  if (text.textContent !== label) text.textContent = label;
  box.title = conn.closeReason ? `last close: ${conn.closeReason}` : "";
  $("conn-retry").hidden = conn.state === "live" || conn.state === "connecting" || !!conn.ws;
}

// ---- frames ----------------------------------------------------------------------
let framePending = false; // a requestAnimationFrame(paint) is queued
let paintTimer = null;
let paintAt = Infinity; // when the queued timer asks for the frame
let lastPaint = -Infinity;
// One paint per animation frame at most, and data paints no closer than PAINT_EVERY_MS:
// everything that arrived in between is folded already and painted together. A request for
// an earlier paint than the one waiting (data while the chart waits for its turn) moves it up.
function requestPaint(gap = PAINT_EVERY_MS) {
  if (framePending) return;
  const now = performance.now();
  const at = Math.max(lastPaint + gap, now);
  if (at >= paintAt) return;
  clearTimeout(paintTimer);
  paintAt = at;
  if (at - now > 4) paintTimer = setTimeout(queueFrame, at - now);
  else queueFrame();
}

function queueFrame() {
  paintTimer = null;
  framePending = true;
  requestAnimationFrame(paint);
}

function onFrame(text) {
  if (typeof text !== "string") {
    warnOnce("binary-frame", "ignored a binary frame");
    return;
  }
  try {
    state.applyFrame(text);
  } catch (err) {
    warnOnce(err instanceof DecodeError ? `frame-${err.kind}` : "frame-error", err.message ?? err, text.slice(0, 200));
    return;
  }
  if (!conn.live) {
    // A resumed connection may not carry the view asked for while it was down: ask again.
    if (!state.viewsLoaded.has(ui.view)) {
      send({ op: "sub", ch: [viewName(ui.view)] });
      const other = viewName(ui.view === "h" ? "d" : "h");
      if (state.channels.has(other)) send({ op: "unsub", ch: [other] });
    }
    panels.subscribe(state);
    conn.live = true;
    trader.onLive();
    conn.attempts = 0;
    conn.closeReason = "";
    setConn("live");
  }
  requestPaint();
}

// ---- paint -----------------------------------------------------------------------
let lastChart = 0;
let chartDirty = false;
// Number rolls: element -> {from, to, start, now, format}. The target is in data-value at once
// (tests and the bench read it); data-shown is written when the roll ends (it is what the
// text shows then), not on every step: one text write per step and element, nothing else.
const tweens = new Map();
const values = new WeakMap(); // element -> the value its roll ends on (as a number)

function tweenTo(node, to, format) {
  if (values.get(node) === to) return;
  const had = values.get(node);
  values.set(node, to);
  node.dataset.value = String(to);
  const cur = tweens.get(node);
  const shown = cur ? cur.now : had;
  if (!ui.firstRender || shown === undefined || Number.isNaN(shown) || reducedMotion.matches || document.hidden) {
    setTextOf(node, format(to));
    node.dataset.shown = String(to);
    tweens.delete(node);
    return;
  }
  if (cur) {
    cur.from = shown;
    cur.to = to;
    cur.start = performance.now();
  } else tweens.set(node, { from: shown, to, start: performance.now(), now: shown, format });
}

function stepTweens(now) {
  for (const [node, t] of tweens) {
    const k = Math.min(1, (now - t.start) / TWEEN_MS);
    const e = 1 - (1 - k) ** 3;
    t.now = k >= 1 ? t.to : Math.round(t.from + (t.to - t.from) * e);
    setTextOf(node, t.format(t.now));
    if (k >= 1) {
      node.dataset.shown = String(t.now);
      tweens.delete(node);
    }
  }
}

function setTextOf(node, text) {
  // Write the text node's data, not textContent: no node is replaced, layout stays local.
  const first = node.firstChild;
  if (first !== null && first.nodeType === 3 && first.nextSibling === null) {
    if (first.data !== text) first.data = text;
  } else node.textContent = text;
}

function paint(now) {
  framePending = false;
  paintAt = Infinity;
  lastPaint = now;
  const ch = state.takeChanges();
  if (ch.hello) fmt.setUnits(state.units);
  for (const code of ch.unknown) warnOnce(`unknown-event-${code}`, `event "${code}" is not understood; ignored`);
  for (const msg of ch.errors) warnOnce(`server-error:${msg.split(":")[0]}`, "server did not understand a command:", msg);
  const wall = Date.now();

  if (ch.reset || ch.hello) fillCategories();
  if (ch.reset || ch.today) paintToday();
  // The view switches on screen only with its whole data: never a view's partial buckets.
  const switched = ui.shown !== ui.view && state.viewsLoaded.has(ui.view);
  if (switched) {
    ui.shown = ui.view;
    paintPer();
  }
  if (ch.reset || switched || ch.views.has(ui.shown) || ch.clock) {
    paintStats();
    chartDirty = true;
  }
  if (chartDirty && (ch.reset || switched || now - lastChart >= CHART_EVERY_MS)) {
    paintChart();
    lastChart = now;
    chartDirty = false;
  }
  if (ch.reset || ch.hot || ch.markets.size) cards.render(state, ch.markets, ch.hot || ch.reset, wall);
  if (ch.reset || ch.top) paintTop();
  trader.paint(ch);
  if (ch.tapeReordered) tape.rebuild(state, !ch.reset);
  else if (ch.tape) tape.add(state, ch.tape);
  tape.render();
  if (ui.detail && (ch.detail || ch.reset || (state.detail !== null && ch.markets.has(state.detail)))) paintDrawer();
  panels.render(state, ch);
  if (ch.markets.size && ch.markets.size < 64) {
    for (const id of ch.markets) if (state.markets.get(id)?.category) noteCategory(state.markets.get(id).category);
  }
  stepTweens(now);
  ui.paintedSeq = state.seq;
  ui.paintedFrames = state.frames;

  if (!ui.firstRender && state.hello && state.viewsLoaded.has(ui.view)) {
    ui.firstRender = true;
    // The snapshot is in the DOM; the next frame callback runs after it was painted.
    requestAnimationFrame(() => {
      performance.mark("flowboard:first-render");
      document.documentElement.dataset.ready = "1";
    });
  }
  // Only a roll or the chart's next turn brings a paint without data (at their own cadence:
  // a paint that has nothing to do still costs a whole frame's lifecycle).
  if (tweens.size) requestPaint(TWEEN_STEP_MS);
  else if (chartDirty) requestPaint(Math.max(PAINT_EVERY_MS, lastChart + CHART_EVERY_MS - now));
}

// ---- header & activity ----------------------------------------------------------------
function paintToday() {
  const [trades, usd] = state.today();
  tweenTo($("today-trades"), trades, fmt.count);
  tweenTo($("today-usd"), usd, fmt.usd);
  paintDayScope();
}

// "Today" is the server's UTC day: in local time the label says when that day began.
function paintDayScope() {
  let scope = "today (UTC)";
  if (time.zone() === "local") {
    const start = time.utcDayStart(state.minuteMs || Date.now());
    scope = `since ${time.hm(start)} ${time.zoneName(start)}`;
  }
  for (const s of document.querySelectorAll(".day-scope")) setTextOf(s, scope);
}

// Every time on the page follows the zone chosen in the header's UTC / Local toggle.
function setZone(zone) {
  time.setZone(zone);
  for (const b of document.querySelectorAll(".toggle.tz button")) b.setAttribute("aria-checked", String(b.dataset.tz === time.zone()));
  for (const s of document.querySelectorAll(".zone")) s.textContent = time.zoneName();
  paintDayScope();
  if (!state.hello) return;
  paintStats();
  chart.retime();
  tape.refill();
  if (ui.detail) paintDrawer();
}

function viewTotals(code) {
  const out = { usd: 0, trades: 0, peakUsd: 0, peakTrades: 0 };
  for (const [usd, trades] of state.view(code).buckets) {
    out.usd += usd;
    out.trades += trades;
    if (usd > out.peakUsd) out.peakUsd = usd;
    if (trades > out.peakTrades) out.peakTrades = trades;
  }
  return out;
}

function paintStats() {
  const code = ui.shown;
  const t = viewTotals(code);
  tweenTo($("st-usd"), t.usd, fmt.usd);
  tweenTo($("st-trades"), t.trades, fmt.count);
  tweenTo($("st-peak-usd"), t.peakUsd, fmt.usd);
  tweenTo($("st-peak-trades"), t.peakTrades, fmt.count);
  const v = state.view(code);
  {
    const start = v.first + (v.buckets.length - 1) * v.step;
    const [usd, trades] = v.buckets[v.buckets.length - 1];
    tweenTo($("st-cur-usd"), usd, fmt.usd);
    setTextOf($("st-cur-trades"), `${fmt.count(trades)} trade${trades === 1 ? "" : "s"}`);
    setTextOf($("st-cur-time"), code === "h" ? time.hm(start) : `${time.hm(start)}–${time.hm(start + v.step)}`);
  }
}

function paintChart() {
  chart.set(state.view(ui.shown));
}

function paintPer() {
  for (const s of document.querySelectorAll(".per")) s.textContent = ui.shown === "h" ? "min" : "hour";
}

// The toggle subscribes at once; the figures switch in paint() when the view's "a" is in.
function setView(code) {
  if (code === ui.view) return;
  const old = ui.view;
  ui.view = code;
  localStorage.setItem("flowboard.view", code);
  for (const b of document.querySelectorAll(".toggle button[data-view]")) b.setAttribute("aria-checked", String(b.dataset.view === code));
  send({ op: "sub", ch: [viewName(code)] });
  send({ op: "unsub", ch: [viewName(old)] });
  requestPaint(0);
}

// ---- top trades -------------------------------------------------------------------------
function paintTop() {
  const list = $("top");
  const items = [];
  state.top.forEach((t, i) => {
    const m = state.markets.get(t.market);
    const li = document.createElement("li");
    li.tabIndex = 0;
    li.dataset.ticker = m ? m.ticker : "";
    li.dataset.usd = String(t.usd);
    li.innerHTML = `<span class="n num"></span><span class="mk"></span><span class="det num"></span><span class="amt num"></span>`;
    const c = li.children;
    c[0].textContent = String(i + 1);
    c[1].textContent = m ? m.title || m.ticker : "?";
    c[1].title = m ? m.ticker : "";
    c[2].innerHTML = `<span class="${t.side === 1 ? "yes" : "no"}">${t.side === 1 ? "YES" : "NO"}</span> ${fmt.contractsShort(t.count)} @ ${fmt.price(takerPrice(t))}`;
    c[3].textContent = fmt.usd(t.usd);
    items.push(li);
  });
  for (let i = items.length; i < state.topLen; i++) {
    const li = document.createElement("li");
    li.className = "empty";
    li.setAttribute("aria-hidden", "true");
    li.textContent = i === 0 ? "No trades in the last 10 minutes" : "";
    items.push(li);
  }
  list.replaceChildren(...items);
}

// ---- drawer ---------------------------------------------------------------------------------
function openDrawer(ticker) {
  if (!ticker) return;
  if (ui.detail !== ticker) {
    ui.detail = ticker;
    send({ op: "detail", ticker });
    historyPanel.open(ticker, state.units);
  }
  const d = $("drawer");
  if (d.hidden) ui.lastFocus = document.activeElement;
  d.hidden = false;
  paintDrawer();
  $("dr-close").focus();
}

function closeDrawer() {
  if (!ui.detail) return;
  ui.detail = null;
  send({ op: "detail", ticker: null });
  historyPanel.close();
  $("drawer").hidden = true;
  if (ui.lastFocus && ui.lastFocus.isConnected) ui.lastFocus.focus();
}

function dl(node, pairs) {
  const frag = document.createDocumentFragment();
  for (const [k, v] of pairs) {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    div.append(dt, dd);
    frag.appendChild(div);
  }
  node.replaceChildren(frag);
}

function paintDrawer() {
  const ticker = ui.detail;
  let id = state.byTicker.get(ticker);
  // Until the server's "D" arrives, show what is known about the market and nothing stale.
  if (id !== state.detail) id = undefined;
  const m = state.markets.get(state.byTicker.get(ticker)) ?? null;
  const series = ticker.split("-")[0];
  $("drawer").dataset.ticker = ticker;
  $("dr-title").textContent = m && m.title ? m.title : ticker;
  $("dr-ticker").textContent = ticker;
  $("dr-cat").textContent = m && m.category ? m.category : "";
  const link = $("dr-link");
  link.href = `https://kalshi.com/markets/${encodeURIComponent(series.toLowerCase())}`;
  const pts = id !== undefined ? m.spark : [];
  $("dr-price").textContent = fmt.price(id !== undefined ? state.lastPrice(id) : null);
  const svg = $("dr-spark");
  const poly = sparkPoints(pts, 400, 120, 8);
  let dots = "";
  if (pts.length) {
    const coords = poly.trim().split(" ");
    pts.forEach((p, i) => {
      const [x, y] = coords[i].split(",");
      dots += `<circle cx="${x}" cy="${y}" r="3" class="${p.side === 1 ? "yes" : "no"}"/>`;
    });
  }
  svg.innerHTML = `<polyline points="${poly}"/>${dots}`;
  const w = id !== undefined ? state.window(id) : null;
  const net = w ? w.yesFlow - w.noFlow : 0;
  dl($("dr-stats"), w ? [
    // "10\u00a0min" stays on one line: "10" alone at a line's end reads as a figure.
    ["$ volume · 10\u00a0min", fmt.usd(w.usd)],
    ["contracts · 10\u00a0min", fmt.contracts(w.contracts)],
    ["trades · 10\u00a0min", fmt.count(w.trades)],
    ["YES flow (contracts)", fmt.contracts(w.yesFlow)],
    ["NO flow (contracts)", fmt.contracts(w.noFlow)],
    ["net flow (contracts)", `${net >= 0 ? "+" : "−"}${fmt.contracts(Math.abs(net))}`],
  ] : []);
  const close = m ? m.close : null;
  dl($("dr-meta"), [
    ["series", series],
    ["category", m && m.category ? m.category : "–"],
    ["closes", close === null ? "–" : `${time.dateTime(close)} ${time.zoneName(close)}`],
    ["time to close", close === null ? "–" : fmt.until(close, Date.now())],
  ]);
  const rows = [];
  for (const t of id !== undefined ? state.detailTrades : []) {
    const li = document.createElement("li");
    li.className = "num";
    li.innerHTML = `<span class="muted"></span><span class="${t.side === 1 ? "yes" : "no"}">${t.side === 1 ? "YES" : "NO"}</span><span class="r"></span><span></span><span class="r"></span>`;
    li.children[0].textContent = time.clock(t.ts);
    li.children[2].textContent = fmt.contractsShort(t.count);
    li.children[3].textContent = `@ ${fmt.price(takerPrice(t))}`;
    li.children[4].textContent = fmt.usd(t.usd);
    rows.push(li);
  }
  $("dr-trades").replaceChildren(...rows);
  paintHistory();
}

// The history extends with the detail trades once they are this market's (after its "D").
function paintHistory() {
  if (ui.detail && state.byTicker.get(ui.detail) === state.detail && state.detail !== null) {
    historyPanel.update(state.detailTrades);
  }
  historyPanel.draw();
}

/** The tape's CSV link: the last 24 hours of stored trades through the tape's filter. */
function tapeCsvHref() {
  const q = new URLSearchParams({ since: String((state.minuteMs || Date.now()) - 24 * 3_600_000) });
  const text = $("f-text").value.trim();
  if (text) q.set("q", text);
  if ($("f-cat").value) q.set("category", $("f-cat").value);
  const min = parseFloat($("f-min").value);
  if (Number.isFinite(min) && min > 0) q.set("min_usd", min.toFixed(8).replace(/\.?0+$/, ""));
  return `/api/trades.csv?${q}`;
}

// ---- filters --------------------------------------------------------------------------------------
const categories = new Set();
function noteCategory(c) {
  if (categories.has(c)) return;
  categories.add(c);
  const sel = $("f-cat");
  const opt = document.createElement("option");
  opt.value = c;
  opt.textContent = c;
  const after = [...sel.options].slice(1).find((o) => o.value.localeCompare(c) > 0);
  sel.insertBefore(opt, after ?? null);
}

function fillCategories() {
  for (const m of state.markets.values()) if (m.category) noteCategory(m.category);
}

function readFilter() {
  const min = parseFloat($("f-min").value);
  tape.setFilter({
    text: $("f-text").value.trim().toLowerCase(),
    category: $("f-cat").value,
    minUsd: Number.isFinite(min) && min > 0 ? fmt.usdUnits(min) : 0,
  });
  tape.render();
}

// ---- wiring --------------------------------------------------------------------------------------
const tape = new Tape({
  view: $("tape"),
  spacer: $("tape-spacer"),
  pill: $("tape-pill"),
  counter: $("tape-count"),
  limit: TAPE_LIMIT,
  onOpen: openDrawer,
});
tape.requestPaint = requestPaint;
const cards = new HotCards($("hot"), openDrawer);
const chart = new ActivityChart($("chart"), $("chart-tip"));
const historyPanel = new HistoryPanel({
  canvas: $("dr-candles"),
  note: $("dr-hist-note"),
  spanButtons: [...document.querySelectorAll("#dr-span button")],
  csvLink: $("dr-csv"),
  now: () => state.minuteMs || Date.now(),
});
historyPanel.onLoaded = paintHistory;
$("tape-csv").addEventListener("click", (e) => { e.currentTarget.href = tapeCsvHref(); });

for (const b of document.querySelectorAll(".toggle button[data-view]")) {
  b.setAttribute("aria-checked", String(b.dataset.view === ui.view));
  b.addEventListener("click", () => setView(b.dataset.view));
  b.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      const next = ui.view === "h" ? "d" : "h";
      setView(next);
      document.querySelector(`.toggle button[data-view="${next}"]`).focus();
    }
  });
}
for (const b of document.querySelectorAll(".toggle.tz button")) {
  b.addEventListener("click", () => setZone(b.dataset.tz));
  b.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
      e.preventDefault();
      const next = time.zone() === "utc" ? "local" : "utc";
      setZone(next);
      document.querySelector(`.toggle.tz button[data-tz="${next}"]`).focus();
    }
  });
}
setZone(time.zone());
paintPer();
$("top").addEventListener("click", (e) => openDrawer(e.target.closest("li[data-ticker]")?.dataset.ticker));
$("top").addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") {
    e.preventDefault();
    openDrawer(e.target.closest("li[data-ticker]")?.dataset.ticker);
  }
});
$("dr-close").addEventListener("click", closeDrawer);
const trader = new Trader({ state, send, openDrawer, detail: () => ui.detail });
document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && ui.detail) closeDrawer();
});
$("conn-retry").addEventListener("click", retryNow);
for (const id of ["f-text", "f-cat", "f-min"]) $(id).addEventListener("input", readFilter);
window.addEventListener("online", retryNow);
window.addEventListener("offline", () => conn.ws || setConn("offline"));

// Once a second: the reconnect countdown and the time-to-close countdowns (not while hidden:
// frames keep being folded, and everything is painted at once when the tab shows again).
setInterval(() => {
  if (document.hidden) return;
  if (!conn.ws) paintConn();
  cards.tick(state, Date.now());
}, 1000);
document.addEventListener("visibilitychange", () => {
  if (document.hidden) return;
  cards.tick(state, Date.now());
  requestPaint(0);
});

const panels = new TraderPanels(send, openDrawer);

// For tests and the bench: the live state, read-only by convention.
window.flowboard = {
  state, conn, ui, chart, openDrawer, closeDrawer, setView, setZone, historyPanel, tapeCsvHref, trader, panels,
  receive: onFrame,
  // Whether the figures in the DOM are the state's (chart and number rolls may lag a moment):
  // every applied frame painted (frames, not seq: a command's answer comes at the same seq),
  // and the view asked for loaded and on screen.
  settled: () => ui.paintedFrames === state.frames && ui.shown === ui.view
    && state.viewsLoaded.has(ui.view) && !cards.pendingReorder,
};

connect();
