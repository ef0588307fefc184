// The drawer's price history: candles (a close line where they would be too thin to read) with
// $ volume bars, for 24 hours (1m candles) or 7 days (1h candles), from the store
// (/api/markets/{ticker}/candles), and extended live by the detail trades the drawer receives.
import * as fmt from "./format.js";
import * as time from "./time.js";

export const SPANS = {
  "24h": { interval: "1m", intervalMs: 60_000, spanMs: 24 * 3_600_000 },
  "7d": { interval: "1h", intervalMs: 3_600_000, spanMs: 7 * 24 * 3_600_000 },
};
const MAX_PAGES = 20; // a span is one page (1,500 candles); this only bounds a misbehaving server
const MIN_CANDLE_PX = 3; // thinner than this, candles are drawn as a close line
const MIN_PERIODS = 30; // the narrowest time range drawn, in candles

/** An exact decimal string ("0.36505") as an integer of 10**-decimals units (365050 for 6). */
export function decimalUnits(text, decimals) {
  const [whole, frac = ""] = text.split(".");
  return Number(whole) * 10 ** decimals + Number((frac + "0".repeat(decimals)).slice(0, decimals) || "0");
}

/**
 * Candles of one market, oldest first: {start, open, high, low, close, usd, trades, last}, in the
 * page's units. `last`: the time of the candle's latest trade, so that a live trade is folded
 * only when it is newer than what the store answered with.
 */
export class MarketHistory {
  constructor(intervalMs) {
    this.intervalMs = intervalMs;
    this.candles = [];
    this.lastTradeMs = null; // the store's latest trade in the answer
  }

  /** Take the store's pages ({candles, last_trade_ms}) in the units of the stream's hello. */
  load(pages, units) {
    this.candles = [];
    for (const page of pages) {
      for (const c of page.candles) {
        this.candles.push({
          start: c.start_ms,
          open: decimalUnits(c.open, units.price),
          high: decimalUnits(c.high, units.price),
          low: decimalUnits(c.low, units.price),
          close: decimalUnits(c.close, units.price),
          usd: decimalUnits(c.usd_volume, units.usd),
          trades: c.trades,
          last: null,
        });
      }
      if (page.last_trade_ms !== null) this.lastTradeMs = page.last_trade_ms;
    }
    const newest = this.candles[this.candles.length - 1];
    if (newest) newest.last = this.lastTradeMs;
  }

  /** Fold a live trade ({ts, price, usd}) into its candle; false if the store already had it. */
  fold(t) {
    if (this.lastTradeMs !== null && t.ts <= this.lastTradeMs) return false;
    const start = t.ts - (t.ts % this.intervalMs);
    let i = this.candles.length;
    while (i > 0 && this.candles[i - 1].start > start) i--;
    const c = this.candles[i - 1];
    if (c && c.start === start) {
      c.high = Math.max(c.high, t.price);
      c.low = Math.min(c.low, t.price);
      // Trades mostly come in time order; a late one is not the period's close.
      if (c.last === null || t.ts >= c.last) {
        c.close = t.price;
        c.last = t.ts;
      }
      c.usd += t.usd;
      c.trades += 1;
    } else {
      this.candles.splice(i, 0, { start, open: t.price, high: t.price, low: t.price, close: t.price, usd: t.usd, trades: 1, last: t.ts });
    }
    return true;
  }
}

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

/** The drawer's history panel: span toggle, canvas, note and CSV link. */
export class HistoryPanel {
  constructor({ canvas, note, spanButtons, csvLink, now }) {
    this.canvas = canvas;
    this.now = now; // the server's time (a replay runs on its recording's)
    this.note = note;
    this.spanButtons = spanButtons;
    this.csvLink = csvLink;
    this.span = localStorage.getItem("flowboard.historySpan") === "7d" ? "7d" : "24h";
    this.ticker = null;
    this.history = null;
    this.units = null;
    this.rows = null; // the detail trades array folded from (a new one means the stream resynced)
    this.seen = new WeakSet(); // detail trades already folded or already in the store's answer
    this.loading = 0; // id of the newest request: an older answer arriving late is dropped
    this.dirty = false;
    for (const b of spanButtons) b.addEventListener("click", () => this.setSpan(b.dataset.span));
    new ResizeObserver(() => {
      this.dirty = true;
      this.draw();
    }).observe(canvas);
  }

  setSpan(span) {
    if (!(span in SPANS) || span === this.span) return;
    this.span = span;
    localStorage.setItem("flowboard.historySpan", span);
    if (this.ticker) this.open(this.ticker, this.units);
  }

  /** Show `ticker`'s history (units: the stream's hello units). */
  open(ticker, units) {
    this.ticker = ticker;
    this.units = units;
    this.csvLink.href = `/api/markets/${encodeURIComponent(ticker)}/trades.csv`;
    for (const b of this.spanButtons) b.setAttribute("aria-checked", String(b.dataset.span === this.span));
    this.history = null;
    this.rows = null;
    this.note.textContent = "loading…";
    this.dirty = true;
    this.draw();
    this._load(ticker, SPANS[this.span]);
  }

  close() {
    this.ticker = null;
    this.history = null;
    this.loading += 1;
  }

  async _load(ticker, spec) {
    const request = ++this.loading;
    const pages = [];
    // The first page starts where the server says the span starts, on its own clock.
    let since = null;
    try {
      for (let n = 0; n < MAX_PAGES && since !== undefined; n++) {
        const q = new URLSearchParams({ interval: spec.interval });
        if (since !== null) q.set("since", String(since));
        const res = await fetch(`/api/markets/${encodeURIComponent(ticker)}/candles?${q}`);
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        const page = await res.json();
        pages.push(page);
        since = page.next?.since;
      }
    } catch (err) {
      if (request === this.loading) {
        this.note.textContent = "history not available right now";
        console.warn("flowboard: candles:", err);
      }
      return;
    }
    if (request !== this.loading) return;
    const history = new MarketHistory(spec.intervalMs);
    history.load(pages, this.units);
    this.history = history;
    this.rows = null;
    this.seen = new WeakSet();
    this.dirty = true;
    this.onLoaded?.();
  }

  /**
   * Fold the detail trades not folded yet (newest first, as the state holds them). A new rows
   * array means the stream resynced the detail: the store is asked again, since the trades
   * can no longer be told from those already folded.
   */
  update(detailTrades) {
    const h = this.history;
    if (!h) return;
    if (this.rows !== null && this.rows !== detailTrades) {
      this.open(this.ticker, this.units);
      return;
    }
    this.rows = detailTrades;
    for (let i = detailTrades.length - 1; i >= 0; i--) {
      const t = detailTrades[i];
      if (this.seen.has(t)) continue;
      this.seen.add(t);
      if (h.fold(t)) this.dirty = true;
    }
  }

  draw() {
    if (!this.dirty || this.canvas.closest("[hidden]")) return;
    this.dirty = false;
    const cv = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(100, cv.clientWidth);
    const h = Math.max(80, cv.clientHeight);
    if (cv.width !== Math.round(w * ratio)) cv.width = Math.round(w * ratio);
    if (cv.height !== Math.round(h * ratio)) cv.height = Math.round(h * ratio);
    const g = cv.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, w, h);
    const hist = this.history;
    if (!hist) return;
    const candles = hist.candles;
    const spec = SPANS[this.span];
    const now = this.now();
    const end = now - (now % spec.intervalMs) + spec.intervalMs;
    const spanStart = end - spec.spanMs - spec.intervalMs;
    const shown = candles.filter((c) => c.start >= spanStart);
    const last = shown[shown.length - 1];
    // A market younger than the span is drawn from its first candle (at least MIN_PERIODS
    // wide), not squeezed against the right edge of an empty day or week.
    const start = shown.length ? Math.max(spanStart, Math.min(shown[0].start, end - MIN_PERIODS * spec.intervalMs)) : spanStart;
    if (!last) {
      this.note.textContent = `no trades in the last ${this.span === "24h" ? "24 hours" : "7 days"}`;
      cv.setAttribute("aria-label", this.note.textContent);
      return;
    }
    const priceH = h * 0.72;
    const volTop = h * 0.78;
    const padR = 44;
    const plotW = w - padR;
    const x = (ms) => ((ms - start) / (end - start)) * plotW;
    let lo = Infinity;
    let hi = -Infinity;
    let maxUsd = 0;
    for (const c of shown) {
      lo = Math.min(lo, c.low);
      hi = Math.max(hi, c.high);
      maxUsd = Math.max(maxUsd, c.usd);
    }
    const pad = Math.max((hi - lo) * 0.08, 1);
    const y = (p) => 4 + (1 - (p - (lo - pad)) / (hi - lo + 2 * pad)) * (priceH - 8);
    const cw = (spec.intervalMs / (end - start)) * plotW;
    const yes = css("--yes") || "#22c55e";
    const no = css("--no") || "#ef4444";
    // Volume bars.
    g.fillStyle = "rgba(59,130,246,.55)";
    for (const c of shown) {
      const bh = (c.usd / maxUsd) * (h - volTop - 2);
      g.fillRect(x(c.start), h - bh, Math.max(1, cw * 0.8), bh);
    }
    if (cw >= MIN_CANDLE_PX) {
      for (const c of shown) {
        const cx = x(c.start) + cw * 0.4;
        g.strokeStyle = g.fillStyle = c.close >= c.open ? yes : no;
        g.beginPath();
        g.moveTo(cx, y(c.high));
        g.lineTo(cx, y(c.low));
        g.stroke();
        const top = y(Math.max(c.open, c.close));
        g.fillRect(x(c.start) + cw * 0.1, top, Math.max(1, cw * 0.6), Math.max(1, y(Math.min(c.open, c.close)) - top));
      }
    } else {
      g.strokeStyle = css("--accent") || "#22d3a6";
      g.lineWidth = 1.5;
      g.beginPath();
      shown.forEach((c, i) => (i ? g.lineTo : g.moveTo).call(g, x(c.start) + cw / 2, y(c.close)));
      g.stroke();
    }
    g.fillStyle = css("--muted") || "#8b97ad";
    g.font = "11px ui-sans-serif, system-ui, sans-serif";
    g.textBaseline = "middle";
    g.fillText(fmt.price(hi), plotW + 4, y(hi));
    g.fillText(fmt.price(lo), plotW + 4, y(lo));
    g.fillText(fmt.usdShort(maxUsd), plotW + 4, volTop + 6);
    const what = `${shown.length} ${spec.interval} candles`;
    this.note.textContent = `${what} · ${time.dateTime(shown[0].start)} – now · YES price ${fmt.price(lo)}–${fmt.price(hi)}`;
    cv.setAttribute("aria-label", `${what}, last close ${fmt.price(last.close)}`);
    cv.dataset.candles = String(shown.length);
    cv.dataset.lastClose = String(last.close);
    cv.dataset.lastTrades = String(last.trades);
  }
}
