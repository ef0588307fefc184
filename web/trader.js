// Trader tools on the page: the hot-events view (markets -> events), the parlays switch and the
// watchlist (pinned markets, kept in localStorage, delivered by the server as a `watch`
// subscription). The state comes from the decoder (state.hotEvents, state.watched,
// state.parlays); this module only paints it and sends the commands that change it.

import * as fmt from "./format.js";
import { sparkPoints } from "./cards.js";

const WATCH_KEY = "flowboard.watch";
const PARLAYS_KEY = "flowboard.parlays";
const HOT_KEY = "flowboard.hot";
export const MAX_WATCHED = 20; // the server's bound (v2.MAX_WATCHED)

const $ = (id) => document.getElementById(id);

function loadWatch() {
  try {
    const list = JSON.parse(localStorage.getItem(WATCH_KEY) ?? "[]");
    return Array.isArray(list) ? list.filter((t) => typeof t === "string").slice(0, MAX_WATCHED) : [];
  } catch {
    return [];
  }
}

export class Trader {
  /** @param {{state: object, send: (msg: object) => void, openDrawer: (t: string) => void, detail: () => string | null}} deps */
  constructor(deps) {
    this.state = deps.state;
    this.send = deps.send;
    this.detail = deps.detail;
    this.openDrawer = deps.openDrawer;
    this.watch = loadWatch(); // pinned tickers, the page's order
    this.parlays = localStorage.getItem(PARLAYS_KEY) === "1";
    this.mode = localStorage.getItem(HOT_KEY) === "events" ? "events" : "markets";
    this._bind();
    this._paintMode();
    this.paintPin();
  }

  _bind() {
    $("parlays").checked = this.parlays;
    $("parlays").addEventListener("change", () => this.setParlays($("parlays").checked));
    for (const b of document.querySelectorAll(".toggle button[data-hot]")) {
      b.addEventListener("click", () => this.setMode(b.dataset.hot));
    }
    $("dr-pin").addEventListener("click", () => this.togglePin(this.detail()));
    const open = (e) => {
      const ticker = e.target.closest("[data-ticker]")?.dataset.ticker;
      if (e.target.closest(".unpin")) this.togglePin(ticker);
      else if (ticker) this.openDrawer(ticker);
    };
    $("watch").addEventListener("click", open);
    $("events").addEventListener("click", open);
  }

  /** The connection is live (new or resumed): bring the server in line with what the page wants. */
  onLive() {
    const state = this.state;
    if (state.parlays !== this.parlays) this.send({ op: "parlays", on: this.parlays });
    const wantEvents = this.mode === "events";
    if (wantEvents !== state.channels.has("events")) this.send({ op: wantEvents ? "sub" : "unsub", ch: ["events"] });
    if (this.watch.length) this.send({ op: "watch", tickers: this.watch });
  }

  setParlays(on) {
    this.parlays = on;
    localStorage.setItem(PARLAYS_KEY, on ? "1" : "0");
    this.send({ op: "parlays", on });
  }

  setMode(mode) {
    if (mode === this.mode) return;
    this.mode = mode;
    localStorage.setItem(HOT_KEY, mode);
    // Only viewers of the events view pay for its updates.
    this.send({ op: mode === "events" ? "sub" : "unsub", ch: ["events"] });
    this._paintMode();
  }

  _paintMode() {
    for (const b of document.querySelectorAll(".toggle button[data-hot]")) {
      b.setAttribute("aria-checked", String(b.dataset.hot === this.mode));
    }
    $("hot").hidden = this.mode !== "markets";
    $("events").hidden = this.mode !== "events";
  }

  togglePin(ticker) {
    if (!ticker) return;
    const at = this.watch.indexOf(ticker);
    if (at >= 0) this.watch.splice(at, 1);
    else if (this.watch.length < MAX_WATCHED) this.watch.push(ticker);
    else return;
    localStorage.setItem(WATCH_KEY, JSON.stringify(this.watch));
    this.send({ op: "watch", tickers: this.watch });
    this.paintPin();
    this.paintWatch();
  }

  paintPin() {
    const pinned = this.watch.includes(this.detail());
    $("dr-pin").textContent = pinned ? "★ Pinned" : "☆ Pin";
    $("dr-pin").setAttribute("aria-pressed", String(pinned));
  }

  /** Repaint what the decoder's changes touched. */
  paint(ch) {
    if (ch.reset || ch.parlays) $("parlays").checked = this.parlays;
    if (ch.reset || ch.detail) this.paintPin();
    if (ch.reset || ch.events) this.paintEvents();
    const watchedChanged = this.state.watched.some((id) => ch.markets.has(id));
    if (ch.reset || ch.watch || watchedChanged) this.paintWatch();
  }

  paintEvents() {
    const state = this.state;
    const items = state.hotEvents.map(([event, usd, trades, , marketCount, ...members]) => {
      const li = document.createElement("li");
      li.className = "event";
      li.dataset.event = event;
      const head = document.createElement("div");
      head.className = "ev-head";
      head.innerHTML = `<span class="ev-t"></span><span class="num ev-usd"></span><span class="muted num ev-n"></span>`;
      head.children[0].textContent = event;
      head.children[1].textContent = fmt.usd(usd);
      head.children[2].textContent = `${trades} trades · ${marketCount} mkts`;
      const list = document.createElement("ol");
      list.className = "ev-markets";
      for (const [id, mUsd, price] of members) {
        const m = state.markets.get(id);
        const row = document.createElement("li");
        row.dataset.ticker = m ? m.ticker : "";
        row.tabIndex = 0;
        row.innerHTML = `<span class="mk"></span><span class="num"></span><span class="num"></span>`;
        row.children[0].textContent = m ? m.title || m.ticker : "?";
        row.children[0].title = m ? m.ticker : "";
        row.children[1].textContent = fmt.price(price);
        row.children[2].textContent = fmt.usd(mUsd);
        list.appendChild(row);
      }
      li.append(head, list);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No events traded in the last 10 minutes";
      items.push(li);
    }
    $("events").replaceChildren(...items);
  }

  paintWatch() {
    const state = this.state;
    const items = this.watch.map((ticker) => {
      const id = state.byTicker.get(ticker);
      const m = id === undefined ? undefined : state.markets.get(id);
      const li = document.createElement("li");
      li.dataset.ticker = ticker;
      li.innerHTML = `<span class="mk"></span><svg class="spark" viewBox="0 0 80 24" preserveAspectRatio="none"><polyline></polyline></svg><span class="num px"></span><span class="num usd"></span><button type="button" class="icon unpin" aria-label="Unpin">✕</button>`;
      const c = li.children;
      c[0].textContent = m?.title || ticker;
      c[0].title = ticker;
      if (m && state.watched.includes(id)) {
        c[1].firstChild.setAttribute("points", sparkPoints(m.spark, 80, 24));
        const last = state.lastPrice(id);
        c[2].textContent = last === null ? "–" : fmt.price(last);
        c[3].textContent = fmt.usd(state.window(id).usd);
      } else {
        c[2].textContent = "–";
        c[3].textContent = "no trades yet";
      }
      return li;
    });
    $("watch-panel").hidden = !items.length;
    $("watch").replaceChildren(...items);
  }
}
