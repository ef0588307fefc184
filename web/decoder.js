// Folds a protocol v2 stream (docs/protocol.md) into the dashboard's view state.
//
// Pure: no DOM, no timers, no I/O, so the page, node (tests/vectors) and the bench share
// it. It mirrors the reference decoder, flowboard/protocol/decoder.py (ViewState): the
// shared vectors in tests/vectors/ pin that both fold a stream to the same summary().
// Times are held absolute (Unix ms), as there: a resumed connection's new t0 changes
// nothing already held.
//
// Besides the state it records *what changed* since the renderer last asked
// (takeChanges), so the page repaints only that.

export const MINUTE_MS = 60_000;
export const HOUR_MS = 60 * MINUTE_MS;
export const DAY_MS = 24 * HOUR_MS;
/** The units a server declares in its hello (decimals of price, count and usd) when it does not. */
export const DEFAULT_UNITS = Object.freeze({ price: 6, count: 2, usd: 8 });

/** The analytics views: wire code -> name, period, number of buckets. */
export const MODES = {
  h: { name: "hour", step: MINUTE_MS, count: 60 },
  d: { name: "day", step: HOUR_MS, count: 24 },
};

/**
 * A trade's $ volume in usd units: count x taker price, `oneDollar` being $1 in price units
 * (10 ** units.price; with the default units, count in hundredths x price in $0.000001 = $0.00000001).
 */
export function tradeUsd(price, count, side, oneDollar = 10 ** DEFAULT_UNITS.price) {
  return count * (side ? price : oneDollar - price);
}

/**
 * What a held trade's taker paid per contract, in price units: the YES price, or $1 minus it for
 * a NO taker. Read back from its $ (count x that price, exact) so it holds in whatever units.
 */
export function takerPrice(t) {
  return t.usd / t.count;
}

/** A frame that does not follow the protocol. `kind` is a stable key (the page warns once per kind). */
export class DecodeError extends Error {
  constructor(kind, message) {
    super(message);
    this.name = "DecodeError";
    this.kind = kind;
  }
}

// Held trades: {market, price, count, side, ts, usd, arrival}; (ts, arrival) orders them.
function trade(market, price, count, side, ts, arrival, oneDollar) {
  return { market, price, count, side, ts, usd: tradeUsd(price, count, side, oneDollar), arrival };
}

function later(a, b) {
  return a.ts > b.ts || (a.ts === b.ts && a.arrival > b.arrival);
}

function newChanges() {
  return {
    reset: false, // all state was dropped (a fresh snapshot)
    hello: false,
    markets: new Set(), // ids whose metadata, window or sparkline changed
    hot: false, // hot membership changed
    tape: 0, // trades added at the newest end of the tape since the last take
    tapeReordered: false, // the tape was replaced, or a late trade went below the newest
    top: false,
    views: new Set(), // "h" / "d"
    today: false,
    detail: false,
    clock: false,
    channels: false,
    parlays: false, // the parlays option changed
    watch: false, // the watched markets changed
    events: false, // the hot events changed
    errors: [], // messages of "e" events
    alerts: [], // alerts that arrived live ("A" mode 1), oldest first: the page may notify
    alertsReset: false, // the alert list was replaced
    flows: false,
    movers: false,
    unknown: [], // event codes this decoder does not know (skipped)
  };
}

export class ViewState {
  /**
   * @param {{tapeLimit?: number, detailLimit?: number}} [options]
   *   tapeLimit: tape trades kept (the page's virtualised tape holds thousands; the vectors use 200).
   */
  constructor(options = {}) {
    this.tapeLimit = options.tapeLimit ?? 200;
    this.detailLimit = options.detailLimit ?? 50;
    this.alertsLimit = options.alertsLimit ?? 50;
    this.missed = 0;
    this.resyncs = 0;
    this.units = DEFAULT_UNITS; // the hello's: decimals of price, count and usd
    this.oneDollar = 10 ** DEFAULT_UNITS.price;
    this.frames = 0; // frames applied (for the bench)
    this.tradesSeen = 0; // trades received in "t" events (for the bench)
    this._changes = newChanges();
    this._fresh();
  }

  _fresh() {
    this.seq = -1;
    this.epoch = "";
    this.t0 = 0;
    this.hello = null; // the last hello's fields
    this.channels = new Set();
    this.windowMs = 600_000;
    this.sparkLen = 20;
    this.hotLen = 12;
    this.topLen = 10;
    // id -> {id, ticker, category, title, close, window: [contracts, usd, trades, yes, no] | null, spark}
    this.markets = new Map();
    this.byTicker = new Map(); // ticker -> id
    this.hot = []; // membership as sent; rankedHot() orders it
    this.parlays = false; // whether the rankings include parlays (else their trades skip the top)
    this.watched = []; // the pinned markets that have traded, in the client's order
    this.hotEvents = []; // [event_ticker, usd, trades, contracts, market_count, [id, usd, price]...]
    this.detail = null; // the detail market's id
    this.detailTrades = []; // newest first
    this._tape = []; // oldest first (appending is the common case); read with tapeAt()
    this.top = []; // largest first
    this.minuteMs = 0;
    this.buckets = { h: new Map(), d: new Map() }; // bucket start (Unix ms) -> [usd, trades]
    // Modes whose whole view ("a") arrived since they were last subscribed: a mode not
    // subscribed is dropped from it (its buckets are then only what trades folded in).
    this.viewsLoaded = new Set();
    this.days = new Map(); // UTC day start -> [trades, usd]
    this.errors = [];
    // Trader tools: alerts newest first {market, kind, side, usd, contracts, trades, ts, firstTs,
    // arrival}; flows and movers as sent ([id, ...] rows; movers by period).
    this.alerts = [];
    this.flows = [];
    this.movers = new Map();
    this._lastTs = 0;
    this._arrival = 0;
  }

  // ---- folding ---------------------------------------------------------------

  /** Apply one frame (its JSON text). Throws DecodeError when it is malformed. */
  applyFrame(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch (err) {
      throw new DecodeError("json", `frame is not JSON: ${err.message}`);
    }
    if (!Array.isArray(frame) || !frame.length || !Number.isInteger(frame[0])) {
      throw new DecodeError("frame", `frame must be [seq, event...], got ${String(text).slice(0, 80)}`);
    }
    const fresh = frame.length > 1 && Array.isArray(frame[1]) && frame[1][0] === "r"
      ? Array.isArray(frame[2]) && frame[2][0] === "H" && frame[2][1]?.resumed === false
      : Array.isArray(frame[1]) && frame[1][0] === "H" && frame[1][1]?.resumed === false;
    // A fresh snapshot (e.g. from a restarted server, a new epoch) may start a lower seq.
    if (frame[0] < this.seq && !fresh) {
      throw new DecodeError("seq", `seq went backwards: ${frame[0]} after ${this.seq}`);
    }
    for (let i = 1; i < frame.length; i++) {
      const ev = frame[i];
      if (!Array.isArray(ev) || !ev.length || typeof ev[0] !== "string") {
        throw new DecodeError("event", `event must be [code, ...], got ${JSON.stringify(ev).slice(0, 80)}`);
      }
      const handler = HANDLERS[ev[0]];
      if (handler === undefined) {
        // The page keeps working on what it understands; the reference decoder raises here.
        this._changes.unknown.push(ev[0]);
        continue;
      }
      handler.call(this, ev);
    }
    this.seq = frame[0];
    this.frames++;
  }

  _hello(ev) {
    const h = ev[1];
    if (h === null || typeof h !== "object" || h.v !== 2) {
      throw new DecodeError("hello", `protocol version ${h && h.v}, expected 2`);
    }
    if (!h.resumed) {
      this._fresh();
      this._changes = newChanges();
      this._changes.reset = true;
      this._changes.tapeReordered = true;
    }
    this.hello = h;
    this.epoch = h.epoch;
    this.t0 = h.t0;
    this._lastTs = this.t0;
    this.minuteMs = this.t0 - (this.t0 % MINUTE_MS);
    this.channels = new Set(h.ch);
    this.windowMs = h.window_ms;
    this.sparkLen = h.spark;
    this.topLen = h.top;
    if (h.hot !== undefined) this.hotLen = h.hot;
    this.parlays = h.parlays === true;
    const units = h.units ?? DEFAULT_UNITS;
    // A trade's usd is count x price: its unit must be theirs multiplied.
    if (units.usd !== units.price + units.count) {
      throw new DecodeError("hello", `units ${JSON.stringify(units)}: usd decimals must be price + count decimals`);
    }
    this.units = units;
    this.oneDollar = 10 ** units.price;
    this._forgetUnsubscribedViews();
    this._changes.hello = true;
    this._changes.channels = true;
  }

  _resync(ev) {
    this.resyncs += 1;
    this.missed += ev[1];
  }

  _market(ev) {
    const [, id, ticker, category] = ev;
    const parlay = ev[4] === 1;
    const view = this.markets.get(id);
    if (view === undefined || view.ticker !== ticker) {
      if (view !== undefined && this.byTicker.get(view.ticker) === id) this.byTicker.delete(view.ticker);
      this.markets.set(id, { id, ticker, category, parlay, title: "", close: null, window: null, spark: [] });
      this.byTicker.set(ticker, id);
    } else {
      view.category = category;
      view.parlay = parlay;
    }
    this._changes.markets.add(id);
  }

  _market_(id, code) {
    const view = this.markets.get(id);
    if (view === undefined) throw new DecodeError("market", `"${code}" uses market ${id} before an "m" defined it`);
    return view;
  }

  _info(ev) {
    const [, id, title, close] = ev;
    const view = this._market_(id, "i");
    view.title = title;
    view.close = close === null ? null : close + this.t0;
    this._changes.markets.add(id);
  }

  _clock(ev) {
    this.minuteMs = ev[1] + this.t0;
    for (const code of ["h", "d"]) {
      const start = this.viewStart(code);
      for (const k of this.buckets[code].keys()) if (k < start) this.buckets[code].delete(k);
      this._changes.views.add(code);
    }
    const today = this.minuteMs - (this.minuteMs % DAY_MS);
    for (const k of this.days.keys()) if (k < today) this.days.delete(k);
    this._changes.clock = true;
    this._changes.today = true;
  }

  /** Start (Unix ms) of the oldest bucket of view `code` ("h" / "d") at the current minute. */
  viewStart(code) {
    if (code === "h") return this.minuteMs - 59 * MINUTE_MS;
    const hour = this.minuteMs - (this.minuteMs % HOUR_MS);
    return hour - 23 * HOUR_MS;
  }

  tracked(id) {
    return id === this.detail || (this.channels.has("hot") && this.hot.includes(id)) || this.watched.includes(id);
  }

  _trades(ev) {
    const folds = this.channels.has("trades");
    const ch = this._changes;
    const hotTracked = new Set(this.watched);
    if (this.channels.has("hot")) for (const id of this.hot) hotTracked.add(id);
    const dayOfMinute = this.minuteMs - (this.minuteMs % DAY_MS);
    this.tradesSeen += ev.length - 1;
    for (let i = 1; i < ev.length; i++) {
      const [id, price, count, side, dt] = ev[i];
      const ts = this._lastTs + dt;
      this._lastTs = ts;
      this._arrival += 1;
      const t = trade(id, price, count, side, ts, this._arrival, this.oneDollar);
      if (folds) {
        this._insertTape(t);
        if (this.parlays || !this.markets.get(id)?.parlay) this._insertTop(t);
        for (const code of ["h", "d"]) {
          const step = MODES[code].step;
          const start = ts - (ts % step);
          if (start >= this.viewStart(code)) {
            const held = this.buckets[code];
            const b = held.get(start);
            if (b === undefined) held.set(start, [t.usd, 1]);
            else {
              b[0] += t.usd;
              b[1] += 1;
            }
            ch.views.add(code);
          }
        }
        const day = ts - (ts % DAY_MS);
        if (day >= dayOfMinute) {
          const totals = this.days.get(day);
          if (totals === undefined) this.days.set(day, [1, t.usd]);
          else {
            totals[0] += 1;
            totals[1] += t.usd;
          }
          ch.today = true;
        }
      }
      const isDetail = id === this.detail;
      if ((isDetail || hotTracked.has(id)) && (folds || isDetail)) {
        const view = this._market_(id, "t");
        const w = view.window;
        if (w !== null) {
          w[0] += count;
          w[1] += t.usd;
          w[2] += 1;
          w[side ? 3 : 4] += count;
        }
        this._insertPoint(view, { ts, arrival: this._arrival, price, count, side });
        ch.markets.add(id);
      }
      if (isDetail) {
        const rows = this.detailTrades;
        let pos = 0;
        while (pos < rows.length && later(rows[pos], t)) pos++;
        rows.splice(pos, 0, t);
        if (rows.length > this.detailLimit) rows.length = this.detailLimit;
        ch.detail = true;
      }
    }
  }

  _insertTape(t) {
    const tape = this._tape;
    let pos = tape.length;
    while (pos > 0 && later(tape[pos - 1], t)) pos--;
    tape.splice(pos, 0, t);
    if (pos === tape.length - 1) this._changes.tape += 1;
    else this._changes.tapeReordered = true;
    // Trim in amortised batches (one splice); trades past the limit can never come back into it.
    if (tape.length > this.tapeLimit * 2) tape.splice(0, tape.length - this.tapeLimit);
  }

  _insertTop(t) {
    const top = this.top;
    let pos = top.length;
    while (pos > 0 && top[pos - 1].usd < t.usd) pos--;
    if (pos >= this.topLen) return;
    top.splice(pos, 0, t);
    if (top.length > this.topLen) top.length = this.topLen;
    this._changes.top = true;
  }

  _insertPoint(view, point) {
    const pts = view.spark;
    let pos = pts.length;
    while (pos > 0 && later(pts[pos - 1], point)) pos--;
    pts.splice(pos, 0, point);
    if (pts.length > this.sparkLen) pts.splice(0, pts.length - this.sparkLen);
  }

  _setChannels(ev) {
    this.channels = new Set(ev.slice(1));
    this._forgetUnsubscribedViews();
    this._changes.channels = true;
    this._changes.views.add("h").add("d");
  }

  _forgetUnsubscribedViews() {
    for (const code of this.viewsLoaded) if (!this.channels.has(MODES[code].name)) this.viewsLoaded.delete(code);
  }

  _setParlays(ev) {
    this.parlays = ev[1] === 1;
    this._changes.parlays = true;
  }

  _watch(ev) {
    this.watched = ev.slice(1);
    this._dropUntracked();
    this._changes.watch = true;
  }

  _hotEvents(ev) {
    this.hotEvents = ev.slice(1);
    this._changes.events = true;
  }

  _hot(ev) {
    this.hot = ev.slice(1);
    this._dropUntracked();
    this._changes.hot = true;
  }

  _dropUntracked() {
    for (const [id, view] of this.markets) {
      if (!this.tracked(id) && (view.window !== null || view.spark.length)) {
        view.window = null;
        view.spark = [];
        this._changes.markets.add(id);
      }
    }
  }

  _window(ev) {
    const view = this._market_(ev[1], "w");
    view.window = ev.slice(2, 7);
    this._changes.markets.add(ev[1]);
  }

  _spark(ev) {
    const view = this._market_(ev[1], "s");
    if (ev[2] === 0) view.spark = [];
    for (let i = 3; i < ev.length; i++) {
      const [price, count, side, ts] = ev[i];
      this._arrival += 1;
      this._insertPoint(view, { ts: ts + this.t0, arrival: this._arrival, price, count, side });
    }
    this._changes.markets.add(ev[1]);
  }

  // Rows of "x", "T", "D" ([id, price, count, side, ts]), given oldest first.
  _rows(rows) {
    return rows.map(([id, price, count, side, ts]) => {
      this._arrival += 1;
      return trade(id, price, count, side, ts + this.t0, this._arrival, this.oneDollar);
    });
  }

  _topSet(ev) {
    this.top = this._rows(ev.slice(1));
    this._changes.top = true;
  }

  _analytics(ev) {
    const code = ev[1];
    const mode = MODES[code];
    if (mode === undefined) throw new DecodeError("view", `unknown analytics view ${JSON.stringify(code)}`);
    const start = ev[2] + this.t0;
    const held = new Map();
    for (let i = 3; i < ev.length; i++) held.set(start + (i - 3) * mode.step, [ev[i][0], ev[i][1]]);
    this.buckets[code] = held;
    this.viewsLoaded.add(code);
    this._changes.views.add(code);
  }

  _period(ev) {
    const [, code, start, usd, count] = ev;
    if (MODES[code] === undefined) throw new DecodeError("view", `unknown analytics view ${JSON.stringify(code)}`);
    this.buckets[code].set(start + this.t0, [usd, count]);
    this._changes.views.add(code);
  }

  _today(ev) {
    const today = this.minuteMs - (this.minuteMs % DAY_MS);
    this.days.set(today, [ev[1], ev[2]]);
    this._changes.today = true;
  }

  _tapeSet(ev) {
    // Newest first on the wire; older trades get earlier arrival numbers.
    this._tape = this._rows(ev.slice(1).reverse());
    this._changes.tapeReordered = true;
  }

  _detailSet(ev) {
    const previous = this.detail;
    this.detail = ev[1];
    if (previous !== null && previous !== this.detail) this._dropUntracked();
    this.detailTrades = this._rows(ev.slice(2).reverse()).reverse();
    this._changes.detail = true;
  }

  _alertsEvent(ev) {
    const rows = ev.slice(2);
    if (ev[1] === 0) {
      // The snapshot is newest first: older alerts get earlier arrival numbers.
      this.alerts = [];
      rows.reverse();
      this._changes.alertsReset = true;
    }
    for (const [market, kind, side, usd, contracts, trades, ts, firstTs] of rows) {
      const alert = {
        market, kind, side, usd, contracts, trades,
        ts: ts + this.t0, firstTs: firstTs + this.t0, arrival: ++this._arrival,
      };
      let i = 0;
      while (i < this.alerts.length && later(this.alerts[i], alert)) i++;
      this.alerts.splice(i, 0, alert);
      if (ev[1] === 1) this._changes.alerts.push(alert);
    }
    this.alerts.length = Math.min(this.alerts.length, this.alertsLimit);
  }

  _flowsEvent(ev) {
    this.flows = ev.slice(1);
    this._changes.flows = true;
  }

  _moversEvent(ev) {
    this.movers.set(ev[1], ev.slice(2));
    this._changes.movers = true;
  }

  _error(ev) {
    this.errors.push(ev[1]);
    this._changes.errors.push(String(ev[1]));
  }

  // ---- reading -----------------------------------------------------------------

  /** What changed since the last call; the renderer repaints only that. */
  takeChanges() {
    const c = this._changes;
    this._changes = newChanges();
    return c;
  }

  get tapeLength() {
    return Math.min(this._tape.length, this.tapeLimit);
  }

  /** The i-th newest tape trade (0 = newest). */
  tapeAt(i) {
    return this._tape[this._tape.length - 1 - i];
  }

  /** A market's window as named fields (zeros when not held). */
  window(id) {
    const w = this.markets.get(id)?.window;
    return w ? { contracts: w[0], usd: w[1], trades: w[2], yesFlow: w[3], noFlow: w[4] }
      : { contracts: 0, usd: 0, trades: 0, yesFlow: 0, noFlow: 0 };
  }

  /** Hot markets ranked like the server: $ volume descending, then ticker. */
  rankedHot() {
    const key = (id) => {
      const v = this.markets.get(id);
      return { id, usd: v && v.window ? v.window[1] : 0, ticker: v ? v.ticker : "" };
    };
    return this.hot.map(key)
      .sort((a, b) => b.usd - a.usd || (a.ticker < b.ticker ? -1 : a.ticker > b.ticker ? 1 : 0))
      .map((k) => k.id);
  }

  lastPrice(id) {
    const pts = this.markets.get(id)?.spark;
    return pts && pts.length ? pts[pts.length - 1].price : null;
  }

  /** View `code` at the current minute: {first, step, buckets: [[usd, trades], ...]} (Unix ms). */
  view(code) {
    const mode = MODES[code];
    const first = this.viewStart(code);
    const held = this.buckets[code];
    const buckets = new Array(mode.count);
    for (let i = 0; i < mode.count; i++) buckets[i] = held.get(first + i * mode.step) ?? [0, 0];
    return { first, step: mode.step, buckets };
  }

  /** [trades, usd] of the current UTC day. */
  today() {
    return this.days.get(this.minuteMs - (this.minuteMs % DAY_MS)) ?? [0, 0];
  }

  /** A normalised plain object, the same shape as decoder.py's ViewState.summary(). */
  summary() {
    const row = (t) => [this.markets.get(t.market).ticker, t.price, t.count, t.side, t.ts];
    const out = { seq: this.seq, channels: [...this.channels].sort() };
    if (this.channels.has("hot")) out.hot = this.rankedHot().map((id) => this._marketSummary(id));
    if (this.channels.has("top")) out.top = this.top.map(row);
    for (const code of ["h", "d"]) {
      const name = MODES[code].name;
      if (this.channels.has(name)) {
        const v = this.view(code);
        out[name] = { first: v.first, buckets: v.buckets.map((b) => [b[0], b[1]]) };
      }
    }
    if (this.channels.has("today")) out.today = [...this.today()];
    if (this.channels.has("trades")) {
      const tape = [];
      for (let i = 0; i < this.tapeLength; i++) tape.push(row(this.tapeAt(i)));
      out.tape = tape;
    }
    if (this.channels.has("events")) {
      out.events = this.hotEvents.map(([event, usd, trades, contracts, marketCount, ...members]) => ({
        event, usd, trades, contracts, market_count: marketCount,
        markets: members.map(([id, mUsd, price]) => {
          const v = this.markets.get(id);
          return [v.ticker, v.title, mUsd, price];
        }),
      }));
    }
    if (this.watched.length) out.watch = this.watched.map((id) => this._marketSummary(id));
    if (this.parlays) out.parlays = true;
    if (this.detail !== null) {
      const detail = this._marketSummary(this.detail);
      detail.trades = this.detailTrades.map(row);
      out.detail = detail;
    }
    const named = (r) => [this.markets.get(r[0]).ticker, ...r.slice(1)];
    if (this.channels.has("alerts")) {
      out.alerts = this.alerts.map((a) => [
        this.markets.get(a.market).ticker, a.kind, a.side, a.usd, a.contracts, a.trades, a.ts, a.firstTs,
      ]);
    }
    if (this.channels.has("flows")) out.flows = this.flows.map(named);
    if (this.channels.has("movers")) {
      out.movers = {};
      for (const period of [...this.movers.keys()].sort()) out.movers[period] = this.movers.get(period).map(named);
    }
    return out;
  }

  _marketSummary(id) {
    const v = this.markets.get(id);
    return {
      ticker: v.ticker,
      category: v.category,
      title: v.title,
      close_ms: v.close,
      window: v.window === null ? null : [...v.window],
      spark: v.spark.map((p) => [p.price, p.count, p.side, p.ts]),
    };
  }
}

const HANDLERS = {
  H: ViewState.prototype._hello,
  r: ViewState.prototype._resync,
  m: ViewState.prototype._market,
  i: ViewState.prototype._info,
  c: ViewState.prototype._clock,
  t: ViewState.prototype._trades,
  C: ViewState.prototype._setChannels,
  k: ViewState.prototype._hot,
  w: ViewState.prototype._window,
  s: ViewState.prototype._spark,
  x: ViewState.prototype._topSet,
  a: ViewState.prototype._analytics,
  p: ViewState.prototype._period,
  d: ViewState.prototype._today,
  T: ViewState.prototype._tapeSet,
  D: ViewState.prototype._detailSet,
  e: ViewState.prototype._error,
  P: ViewState.prototype._setParlays,
  W: ViewState.prototype._watch,
  E: ViewState.prototype._hotEvents,
  A: ViewState.prototype._alertsEvent,
  F: ViewState.prototype._flowsEvent,
  M: ViewState.prototype._moversEvent,
};
