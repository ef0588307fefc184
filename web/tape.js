// The trade tape: every trade, newest first, virtualised.
//
// Only the rows in view (plus a small margin) exist in the DOM; each row element is
// keyed to its trade, so a new trade creates one row and moves the others with a
// transform instead of rewriting every row's text. Scrolling away from the top keeps
// the rows in view still and counts the new ones in a pill.
import * as fmt from "./format.js";
import * as time from "./time.js";
import { takerPrice } from "./decoder.js";

const MARGIN_ROWS = 6;
const BIG_DOLLARS = 1_000; // highlighted from here

export class Tape {
  constructor({ view, spacer, pill, counter, limit, onOpen }) {
    this.view = view;
    this.spacer = spacer;
    this.pill = pill;
    this.counter = counter;
    this.limit = limit;
    this.onOpen = onOpen;
    this.rowH = parseFloat(getComputedStyle(view).getPropertyValue("--row-h")) || 28;
    this.rows = []; // trades passing the filter, oldest first
    this.live = new Map(); // trade -> row element in the DOM
    this.free = []; // detached row elements for reuse
    this.pending = 0; // new trades above the fold while scrolled away
    this.sel = -1; // keyboard-highlighted row (index from the top), -1: none
    this.filter = { text: "", category: "", minUsd: 0 };
    this.state = null;
    this._dirty = true;
    // Layout is read only in the scroll event and by the resize observer, never while painting:
    // a read after this paint's writes would force a layout in the middle of it.
    this.scrollTop = 0;
    this.height = view.clientHeight;
    this.spacerH = "";
    this.counterText = "";
    this.pillText = "";
    view.style.overflowAnchor = "none";
    new ResizeObserver(() => {
      if (view.clientHeight !== this.height) {
        this.height = view.clientHeight;
        this._dirty = true;
        this.requestPaint?.();
      }
    }).observe(view);
    view.addEventListener("scroll", () => this._onScroll(), { passive: true });
    view.addEventListener("click", (e) => this._click(e));
    view.addEventListener("keydown", (e) => this._key(e));
    pill.addEventListener("click", () => {
      this._scrollTo(0);
      view.focus();
    });
  }

  setFilter(filter) {
    this.filter = filter;
    if (this.state) this.rebuild(this.state);
  }

  _passes(t) {
    const f = this.filter;
    if (f.minUsd && t.usd < f.minUsd) return false;
    if (!f.text && !f.category) return true;
    const m = this.state.markets.get(t.market);
    if (!m) return false;
    if (f.category && m.category !== f.category) return false;
    if (f.text && !m.ticker.toLowerCase().includes(f.text) && !m.title.toLowerCase().includes(f.text)) return false;
    return true;
  }

  /** Rebuild from the state's tape; `keepScroll`: a late trade moved rows, keep the reader's place. */
  rebuild(state, keepScroll = false) {
    this.state = state;
    const rows = [];
    for (let i = state.tapeLength - 1; i >= 0; i--) {
      const t = state.tapeAt(i);
      if (this._passes(t)) rows.push(t);
    }
    const grew = rows.length - this.rows.length;
    this.rows = rows;
    this._sizeSpacer();
    if (keepScroll && this.scrollTop > this.rowH / 2 && grew > 0) {
      this.pending += grew;
      this._scrollTo(this.scrollTop + grew * this.rowH);
    } else if (!keepScroll) {
      this.pending = 0;
      this.sel = -1;
      this._scrollTo(0);
    }
    this._dirty = true;
  }

  /** `n` trades were added to the state's tape since the last call. */
  add(state, n) {
    this.state = state;
    if (n >= state.tapeLength) return this.rebuild(state);
    let added = 0;
    for (let i = n - 1; i >= 0; i--) {
      const t = state.tapeAt(i);
      if (this._passes(t)) {
        this.rows.push(t);
        added++;
      }
    }
    if (this.rows.length > this.limit * 1.25) this.rows.splice(0, this.rows.length - this.limit);
    if (!added) return undefined;
    this._sizeSpacer();
    if (this.scrollTop > this.rowH / 2) {
      // Keep what the reader is looking at where it is.
      this.pending += added;
      this._scrollTo(this.scrollTop + added * this.rowH);
    }
    if (this.sel >= 0) this.sel += added;
    this._dirty = true;
    return undefined;
  }

  _scrollTo(y) {
    // The spacer was sized before, so the scroller can take y; the scroll event confirms it.
    this.scrollTop = Math.max(0, y);
    this.view.scrollTop = this.scrollTop;
  }

  _onScroll() {
    this.scrollTop = this.view.scrollTop;
    if (this.scrollTop <= this.rowH / 2 && this.pending) this.pending = 0;
    this._dirty = true;
    this.requestPaint?.();
  }

  render() {
    if (!this._dirty) return;
    this._dirty = false;
    const rows = this.rows;
    const n = this._sizeSpacer();
    const top = this.scrollTop;
    const first = Math.max(0, Math.floor(top / this.rowH) - MARGIN_ROWS);
    const last = Math.min(n - 1, Math.ceil((top + this.height) / this.rowH) + MARGIN_ROWS);
    const keep = new Set();
    for (let i = first; i <= last; i++) keep.add(rows[rows.length - 1 - i]);
    for (const [t, el] of this.live) {
      if (!keep.has(t)) {
        el.remove();
        this.live.delete(t);
        this.free.push(el);
      }
    }
    for (let i = first; i <= last; i++) {
      const t = rows[rows.length - 1 - i];
      let el = this.live.get(t);
      if (!el) {
        el = this.free.pop() ?? this._makeRow();
        this._fill(el, t);
        this.live.set(t, el);
        this.view.appendChild(el);
      }
      const y = i * this.rowH;
      if (el._y !== y) {
        el._y = y;
        el.style.transform = `translateY(${y}px)`;
      }
      const sel = i === this.sel;
      if (el._sel !== sel) {
        el._sel = sel;
        el.classList.toggle("sel", sel);
      }
    }
    if (this.pill.hidden !== (this.pending === 0)) this.pill.hidden = this.pending === 0;
    if (this.pending) {
      const text = `${fmt.count(this.pending)} new trade${this.pending === 1 ? "" : "s"} ↑`;
      if (text !== this.pillText) this.pill.textContent = this.pillText = text;
    }
    const label = `${fmt.count(n)} shown`;
    if (label !== this.counterText) this.counter.textContent = this.counterText = label;
  }

  /** Rewrite the rows in the DOM (their times, after the time zone changed). */
  refill() {
    for (const [t, el] of this.live) this._fill(el, t);
  }

  _sizeSpacer() {
    const n = Math.min(this.rows.length, this.limit);
    const h = `${n * this.rowH}px`;
    if (this.spacerH !== h) this.spacer.style.height = this.spacerH = h;
    return n;
  }

  _makeRow() {
    const el = document.createElement("div");
    el.className = "trow num";
    el.setAttribute("role", "listitem");
    for (const cls of ["t", "mk", "sd", "p r", "s r", "d r"]) {
      const s = document.createElement("span");
      s.className = cls;
      el.appendChild(s);
    }
    return el;
  }

  _fill(el, t) {
    const m = this.state.markets.get(t.market);
    const c = el.children;
    el._trade = t;
    el.dataset.ticker = m ? m.ticker : "";
    el.dataset.usd = String(t.usd);
    el.classList.toggle("big", t.usd >= fmt.usdUnits(BIG_DOLLARS));
    el.title = m && m.title ? m.title : "";
    c[0].textContent = time.clock(t.ts);
    c[1].textContent = m ? m.ticker : "?";
    el.classList.toggle("parlay", m !== undefined && m.parlay);
    c[2].textContent = t.side === 1 ? "YES" : "NO";
    c[2].className = t.side === 1 ? "sd yes" : "sd no";
    c[3].textContent = fmt.price(takerPrice(t));
    c[4].textContent = fmt.contractsShort(t.count);
    c[5].textContent = fmt.usd(t.usd);
  }

  _click(e) {
    const row = e.target.closest(".trow");
    if (row && row.dataset.ticker) this.onOpen(row.dataset.ticker);
  }

  // The tape is one focus stop: arrows move a highlighted row, Enter opens its market.
  _key(e) {
    const n = Math.min(this.rows.length, this.limit);
    if (!n) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      const top = Math.ceil(this.scrollTop / this.rowH);
      const cur = this.sel < 0 ? top - 1 : this.sel;
      this.sel = Math.max(0, Math.min(n - 1, cur + (e.key === "ArrowDown" ? 1 : -1)));
      const y = this.sel * this.rowH;
      if (y < this.scrollTop) this._scrollTo(y);
      else if (y + this.rowH > this.scrollTop + this.height) this._scrollTo(y + this.rowH - this.height);
      this._dirty = true;
      this.requestPaint?.();
    } else if (e.key === "Enter" && this.sel >= 0) {
      const t = this.rows[this.rows.length - 1 - this.sel];
      const m = t && this.state.markets.get(t.market);
      if (m) this.onOpen(m.ticker);
    } else if (e.key === "Home") {
      this._scrollTo(0);
      this._dirty = true;
      this.requestPaint?.();
    }
  }
}
