// Trader tools on the page: the alert feed (with this viewer's own whale threshold and opt-in
// browser notifications while the tab is hidden), the flows table and the movers panel.
// They fold from the v2 channels alerts / flows / movers (docs/protocol.md), which the page
// subscribes to once it is live; every figure stays an exact integer until formatted here.
import * as fmt from "./format.js";
import * as time from "./time.js";

const MIN_KEY = "flowboard.alertMin"; // this viewer's whale threshold, in dollars ("" = the server's)
const NOTIFY_KEY = "flowboard.alertNotify"; // "1" once the viewer turned notifications on
const PERIOD_KEY = "flowboard.moversPeriod";
const CHANNELS = ["alerts", "flows", "movers"];
const KIND = ["Whale", "Accum."];

const $ = (id) => document.getElementById(id);

// Lists are repainted in place: row i keeps its nodes and only texts that changed are written,
// so a list replaced every second costs a few text writes, not new nodes and a new layout.
function syncRows(container, count, tag, cells) {
  while (container.children.length > count) container.lastChild.remove();
  while (container.children.length < count) {
    const row = document.createElement(tag);
    for (let i = 0; i < cells; i++) row.append(document.createElement(tag === "tr" ? "td" : "span"));
    container.append(row);
  }
  return container.children;
}

function put(node, cls, text) {
  if (node.className !== cls) node.className = cls;
  if (node.textContent !== text) node.textContent = text;
}

function stored(key, fallback) {
  try {
    return localStorage.getItem(key) ?? fallback;
  } catch {
    return fallback;
  }
}

function store(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch { /* private mode: the setting lasts for this page only */ }
}

const FLOW_SORTS = {
  ticker: (s) => (a, b) => (s.tickerOf(a[0]) < s.tickerOf(b[0]) ? -1 : s.tickerOf(a[0]) > s.tickerOf(b[0]) ? 1 : b[1] - a[1]),
  usd: () => (a, b) => b[2] - a[2],
  contracts: () => (a, b) => b[3] - a[3],
  trades: () => (a, b) => b[4] - a[4],
  vwap: () => (a, b) => b[5] - a[5],
};

export class TraderPanels {
  /**
   * @param {(msg: object) => void} send  sends a command on the live socket
   * @param {(ticker: string) => void} openDrawer
   */
  constructor(send, openDrawer) {
    this.send = send;
    this.openDrawer = openDrawer;
    this.minUsd = 0; // usd units; whale alerts below it are not shown
    this.notify = stored(NOTIFY_KEY, "") === "1";
    this.period = stored(PERIOD_KEY, "10m") === "1h" ? "1h" : "10m";
    this.flowSort = "usd";
    this.notified = 0; // notifications shown (for tests)
    this._wire();
  }

  /** After each (re)connection: ask for the channels the panels show, if the stream lacks them. */
  subscribe(state) {
    const missing = CHANNELS.filter((c) => !state.channels.has(c));
    if (missing.length) this.send({ op: "sub", ch: missing });
  }

  render(state, ch) {
    if (ch.reset || ch.alertsReset || ch.alerts.length) this._paintAlerts(state);
    if (ch.alerts.length) this._notify(state, ch.alerts);
    if (ch.reset || ch.flows) this._paintFlows(state);
    if (ch.reset || ch.movers) this._paintMovers(state);
  }

  _wire() {
    const min = $("al-min");
    min.value = stored(MIN_KEY, "");
    this.minUsd = min.value === "" ? 0 : fmt.usdUnits(Number(min.value));
    min.addEventListener("input", () => {
      const dollars = Number(min.value);
      this.minUsd = min.value === "" || !(dollars >= 0) ? 0 : fmt.usdUnits(dollars);
      store(MIN_KEY, min.value);
      if (this._state) this._paintAlerts(this._state);
    });
    const button = $("al-notify");
    const paintButton = () => {
      const on = this.notify && "Notification" in window && Notification.permission === "granted";
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "Notifications on" : "Notify me";
      button.disabled = !("Notification" in window) || Notification.permission === "denied";
    };
    button.addEventListener("click", async () => {
      if (this.notify && Notification.permission === "granted") {
        this.notify = false;
      } else {
        this.notify = (await Notification.requestPermission()) === "granted";
      }
      store(NOTIFY_KEY, this.notify ? "1" : "");
      paintButton();
    });
    paintButton();
    for (const th of document.querySelectorAll("#flows-table th[data-sort]")) {
      th.addEventListener("click", () => {
        this.flowSort = th.dataset.sort;
        for (const other of document.querySelectorAll("#flows-table th[data-sort]")) {
          other.setAttribute("aria-sort", other === th ? "descending" : "none");
        }
        if (this._state) this._paintFlows(this._state);
      });
    }
    for (const b of document.querySelectorAll("#movers-period button")) {
      b.setAttribute("aria-checked", String(b.dataset.period === this.period));
      b.addEventListener("click", () => {
        this.period = b.dataset.period;
        store(PERIOD_KEY, this.period);
        for (const o of document.querySelectorAll("#movers-period button")) {
          o.setAttribute("aria-checked", String(o === b));
        }
        if (this._state) this._paintMovers(this._state);
      });
    }
    for (const id of ["alerts", "flows-body", "movers"]) {
      $(id).addEventListener("click", (e) => {
        const ticker = e.target.closest("[data-ticker]")?.dataset.ticker;
        if (ticker) this.openDrawer(ticker);
      });
    }
  }

  _shown(alert) {
    return alert.kind !== 0 || alert.usd >= this.minUsd;
  }

  _paintAlerts(state) {
    this._state = state;
    const shown = state.alerts.filter((a) => this._shown(a));
    const rows = syncRows($("alerts"), shown.length, "li", 6);
    shown.forEach((a, i) => {
      const li = rows[i];
      const ticker = state.markets.get(a.market)?.ticker ?? "";
      li.dataset.ticker = ticker;
      li.dataset.kind = a.kind === 0 ? "whale" : "accumulation";
      li.dataset.usd = String(a.usd);
      const c = li.children;
      put(c[0], "t num", time.clock(a.ts));
      put(c[1], `kind k${a.kind}`, KIND[a.kind]);
      put(c[2], "mk", ticker);
      put(c[3], a.side ? "yes" : "no", a.side ? "YES" : "NO");
      put(c[4], "r num", fmt.usd(a.usd));
      put(c[5], "r num muted", a.kind === 0 ? `${fmt.contracts(a.contracts)} ct`
        : `${a.trades} trades · ${Math.max(1, Math.round((a.ts - a.firstTs) / 60_000))}m`);
    });
    $("alerts-empty").hidden = shown.length > 0;
  }

  _notify(state, fresh) {
    if (!this.notify || !document.hidden || !("Notification" in window) || Notification.permission !== "granted") return;
    for (const a of fresh) {
      if (!this._shown(a)) continue;
      const ticker = state.markets.get(a.market)?.ticker ?? "";
      const side = a.side ? "YES" : "NO";
      const body = a.kind === 0 ? `${fmt.contracts(a.contracts)} contracts ${side} · ${fmt.usd(a.usd)}`
        : `${side} takers: ${fmt.usd(a.usd)} in ${a.trades} trades`;
      new Notification(`${KIND[a.kind]} · ${ticker}`, { body, tag: `${ticker}:${a.kind}:${a.ts}` });
      this.notified++;
    }
  }

  tickerOf(id) {
    return this._state?.markets.get(id)?.ticker ?? "";
  }

  _paintFlows(state) {
    this._state = state;
    const rows = [...state.flows].sort(FLOW_SORTS[this.flowSort](this));
    const trs = syncRows($("flows-body"), rows.length, "tr", 6);
    rows.forEach(([id, side, usd, contracts, trades, vwap], i) => {
      const tr = trs[i];
      tr.dataset.ticker = state.markets.get(id)?.ticker ?? "";
      const c = tr.children;
      put(c[0], "mk", tr.dataset.ticker);
      put(c[1], side ? "yes" : "no", side ? "YES" : "NO");
      put(c[2], "r num", fmt.usd(usd));
      put(c[3], "r num", fmt.contracts(contracts));
      put(c[4], "r num", fmt.price(vwap));
      put(c[5], "r num", fmt.count(trades));
    });
  }

  _paintMovers(state) {
    this._state = state;
    const rows = state.movers.get(this.period) ?? [];
    const lis = syncRows($("movers"), rows.length, "li", 5);
    rows.forEach(([id, first, last, usd], i) => {
      const li = lis[i];
      li.dataset.ticker = state.markets.get(id)?.ticker ?? "";
      const change = last - first;
      const sign = change > 0 ? "+" : "";
      const c = li.children;
      put(c[0], "mk", li.dataset.ticker);
      put(c[1], "num muted", `${fmt.price(first)} → ${fmt.price(last)}`);
      put(c[2], `r num ${change > 0 ? "yes" : "no"}`, `${sign}${fmt.price(change)}`);
      put(c[3], "r num", first > 0 ? `${sign}${((change * 100) / first).toFixed(1)}%` : "–");
      put(c[4], "r num muted", fmt.usdShort(usd));
    });
  }
}
