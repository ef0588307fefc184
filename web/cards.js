// Hot-market cards: one keyed element per market; only cards whose market changed are
// rewritten, and a rank change slides the cards to their new places (FLIP).
import * as fmt from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const REORDER_EVERY_MS = 1000; // re-rank the DOM at most this often, so cards do not jitter
const RANK_MARK_MS = 4000; // how long a rank change stays marked

/** Points for an SVG polyline of prices in a w x h box (y up). */
export function sparkPoints(points, w, h, pad = 2) {
  if (!points.length) return "";
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of points) {
    if (p.price < lo) lo = p.price;
    if (p.price > hi) hi = p.price;
  }
  if (hi - lo < 200) {
    const mid = (hi + lo) / 2;
    lo = mid - 100;
    hi = mid + 100;
  }
  const n = points.length;
  const step = n > 1 ? (w - 2 * pad) / (n - 1) : 0;
  let out = "";
  for (let i = 0; i < n; i++) {
    const x = n > 1 ? pad + i * step : w / 2;
    const y = pad + (h - 2 * pad) * (1 - (points[i].price - lo) / (hi - lo));
    out += `${x.toFixed(1)},${y.toFixed(1)} `;
  }
  return out;
}

function el(tag, cls, parent, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function setText(node, text) {
  if (node._text === text) return;
  node._text = text;
  const first = node.firstChild;
  if (first !== null && first.nodeType === 3 && first.nextSibling === null) first.data = text;
  else node.textContent = text;
}

// Attribute / property writes only when the value differs: an unchanged write still
// invalidates style (and, for SVG points, the path) in some engines.
function setAttr(node, name, value) {
  const key = `_a_${name}`;
  if (node[key] === value) return;
  node[key] = value;
  node.setAttribute(name, value);
}

function setStyle(node, prop, value) {
  const key = `_s_${prop}`;
  if (node[key] === value) return;
  node[key] = value;
  node.style[prop] = value;
}

function sameOrder(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export class HotCards {
  constructor(list, onOpen) {
    this.list = list;
    this.onOpen = onOpen;
    this.cards = new Map(); // market id -> card
    this.order = []; // ids in the order shown
    this.blanks = []; // placeholder cards that keep the grid's height steady
    this.lastReorder = 0;
    list.addEventListener("click", (e) => this._activate(e));
    list.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        this._activate(e);
      }
    });
  }

  _activate(e) {
    const li = e.target.closest(".card[data-ticker]");
    if (li) this.onOpen(li.dataset.ticker);
  }

  _make(id) {
    const li = el("li", "card");
    li.tabIndex = 0;
    const r1 = el("div", "row1", li);
    const c = { li, id, rank: 0, rankAt: 0 };
    c.rank_ = el("span", "rank", r1);
    c.title = el("span", "title", r1);
    c.lp = el("span", "lp num", r1);
    c.lp.title = "last YES price";
    const meta = el("div", "meta", li);
    c.tk = el("span", "tk", meta);
    c.cat = el("span", "cat", meta);
    const nums = el("div", "nums num", li);
    const cell = (label) => {
      const d = el("div", "", nums);
      const b = el("b", "", d);
      el("span", "", d, label);
      return b;
    };
    // Labels are shown in capitals: "10 min", never "10m" (which reads as $10 million).
    c.usd = cell("$ vol · 10\u00a0min");
    c.ct = cell("contracts");
    c.tr = cell("trades");
    const flow = el("div", "flow num", li);
    c.yes = el("span", "yes", flow);
    const mid = el("div", "flowmid", flow);
    el("span", "unit", mid, "contracts");
    const bar = el("div", "flowbar", mid);
    c.bar = el("i", "", bar);
    c.no = el("span", "no", flow);
    const foot = el("div", "foot", li);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 130 30");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    c.line = document.createElementNS(SVG, "polyline");
    svg.appendChild(c.line);
    foot.appendChild(svg);
    c.closes = el("span", "closes num", foot);
    return c;
  }

  /** Repaint: `changed` holds ids whose data changed; `hotChanged` when membership did. */
  render(state, changed, hotChanged, now) {
    const ranked = state.rankedHot();
    const wantOrder = !sameOrder(ranked, this.order);
    let reorder = false;
    if (hotChanged || (wantOrder && now - this.lastReorder >= REORDER_EVERY_MS)) reorder = wantOrder;
    if (wantOrder && !reorder) this.pendingReorder = true;

    for (const [id, c] of this.cards) {
      if (!ranked.includes(id)) {
        c.li.remove();
        this.cards.delete(id);
      }
    }
    for (const id of ranked) {
      let c = this.cards.get(id);
      if (!c) {
        c = this._make(id);
        this.cards.set(id, c);
        this._fill(c, state, now);
        reorder = true;
      } else if (changed.has(id)) {
        this._fill(c, state, now);
      }
    }
    if (reorder) this._reorder(ranked, now, state.hotLen);
    else this._fadeRanks(now);
  }

  _reorder(ranked, now, slots) {
    this.pendingReorder = false;
    this.lastReorder = now;
    const before = new Map();
    for (const id of this.order) {
      const c = this.cards.get(id);
      if (c && c.li.isConnected) before.set(id, c.li.getBoundingClientRect());
    }
    const frag = document.createDocumentFragment();
    ranked.forEach((id, i) => {
      const c = this.cards.get(id);
      const rank = i + 1;
      if (c.rank && c.rank !== rank) {
        c.move = c.rank > rank ? "up" : "down";
        c.rankAt = now;
      }
      c.rank = rank;
      setAttr(c.li, "data-rank", String(rank));
      setAttr(c.li, "aria-label", `Rank ${rank}: ${c.title.textContent || c.tk.textContent}`);
      frag.appendChild(c.li);
    });
    while (this.blanks.length < slots - ranked.length) {
      const b = el("li", "card empty");
      b.setAttribute("aria-hidden", "true");
      this.blanks.push(b);
    }
    this.blanks.length = Math.max(0, slots - ranked.length);
    for (const b of this.blanks) frag.appendChild(b);
    this.list.replaceChildren(frag);
    this.order = ranked.slice();
    this._fadeRanks(now);
    if (!before.size || matchMedia("(prefers-reduced-motion: reduce)").matches) return;
    for (const id of ranked) {
      const old = before.get(id);
      if (!old) continue;
      const li = this.cards.get(id).li;
      const cur = li.getBoundingClientRect();
      const dx = old.left - cur.left;
      const dy = old.top - cur.top;
      if (dx || dy) {
        li.animate([{ transform: `translate(${dx}px, ${dy}px)` }, { transform: "none" }],
          { duration: 450, easing: "cubic-bezier(.2,.7,.2,1)" });
      }
    }
  }

  _fadeRanks(now) {
    for (const c of this.cards.values()) {
      const mark = c.move && now - c.rankAt < RANK_MARK_MS ? c.move : "";
      const text = mark === "up" ? `${c.rank}▲` : mark === "down" ? `${c.rank}▼` : `${c.rank || ""}`;
      setText(c.rank_, text);
      setAttr(c.rank_, "class", `rank num ${mark}`);
    }
  }

  _fill(c, state, now) {
    const m = state.markets.get(c.id);
    const w = state.window(c.id);
    setAttr(c.li, "data-ticker", m.ticker);
    setAttr(c.li, "data-usd", String(w.usd));
    setAttr(c.li, "data-trades", String(w.trades));
    setAttr(c.li, "data-contracts", String(w.contracts));
    setText(c.title, m.title || m.ticker);
    setAttr(c.title, "title", m.title);
    setText(c.tk, m.ticker);
    setText(c.cat, m.category || "—");
    setText(c.lp, fmt.price(state.lastPrice(c.id)));
    setText(c.usd, fmt.usdShort(w.usd));
    setText(c.ct, fmt.contractsShort(w.contracts));
    setText(c.tr, fmt.count(w.trades));
    setText(c.yes, `YES ${fmt.contractsShort(w.yesFlow)}`);
    setText(c.no, `NO ${fmt.contractsShort(w.noFlow)}`);
    setAttr(c.yes, "title", `YES flow: ${fmt.contracts(w.yesFlow)} contracts`);
    setAttr(c.no, "title", `NO flow: ${fmt.contracts(w.noFlow)} contracts`);
    const total = w.yesFlow + w.noFlow;
    const net = w.yesFlow - w.noFlow;
    const share = total ? Math.abs(net) / total : 0;
    setAttr(c.bar, "class", net >= 0 ? "pos" : "neg");
    setStyle(c.bar, "width", `${(share * 50).toFixed(1)}%`);
    setStyle(c.bar, "left", net >= 0 ? "50%" : `${(50 - share * 50).toFixed(1)}%`);
    setAttr(c.bar.parentNode, "title", `Net flow ${net >= 0 ? "+" : "−"}${fmt.contracts(Math.abs(net))} contracts (YES − NO)`);
    setAttr(c.line, "points", sparkPoints(m.spark, 130, 30));
    this._closes(c, state, now);
  }

  _closes(c, state, now) {
    const m = state.markets.get(c.id);
    const close = m ? m.close : null;
    const left = close === null ? "" : fmt.until(close, now);
    setText(c.closes, close === null ? "" : left === "closed" ? "closed" : `closes in ${left}`);
  }

  /** Once a second: the countdowns. */
  tick(state, now) {
    for (const c of this.cards.values()) this._closes(c, state, now);
    if (this.pendingReorder) this.render(state, new Set(), false, now);
  }
}
