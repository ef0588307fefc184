// The activity chart: $ volume per period as bars, trade count as a line, on two axes.
import uPlot from "./vendor/uplot/uPlot.esm.js";
import * as fmt from "./format.js";
import * as time from "./time.js";

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export class ActivityChart {
  constructor(el, tip) {
    this.el = el;
    this.tip = tip;
    this.bucketMs = 60_000;
    this.xMin = 0; // the x scale in Unix s: from the first period's start to the current one's end
    this.xMax = 1;
    this.data = [[], [], []];
    const muted = css("--muted");
    const grid = { stroke: "#1e2738", width: 1 };
    const axisFont = "11px ui-sans-serif, system-ui, sans-serif";
    this.plot = new uPlot(
      {
        width: Math.max(200, el.clientWidth),
        height: el.clientHeight || 240,
        padding: [8, 4, 0, 4],
        legend: { show: false },
        // Ticks at whole hours and minutes of the zone the page shows times in.
        tzDate: (s) => (time.zone() === "utc" ? uPlot.tzDate(new Date(s * 1000), "Etc/UTC") : new Date(s * 1000)),
        cursor: { drag: { x: false, y: false }, points: { size: 7 } },
        // Each bucket is drawn across its whole period: a point at the period's middle, and the x
        // scale running to the end of the current period, so its bar is not cut off at the edge.
        scales: { x: { time: true, range: () => [this.xMin, this.xMax] }, usd: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
          n: { range: (u, min, max) => [0, Math.max(1, max * 1.15)] } },
        axes: [
          { stroke: muted, grid, ticks: grid, font: axisFont,
            values: (u, splits) => splits.map((s) => time.hm(s * 1000)) },
          { scale: "usd", stroke: muted, grid, ticks: grid, font: axisFont, size: 56,
            label: "$ volume", labelFont: axisFont, labelSize: 14,
            values: (u, splits) => splits.map((s) => fmt.usdShort(fmt.usdUnits(s))) },
          { scale: "n", side: 1, stroke: muted, grid: { show: false }, ticks: grid, font: axisFont, size: 44,
            label: "trades", labelFont: axisFont, labelSize: 14,
            values: (u, splits) => splits.map((s) => (Number.isInteger(s) ? fmt.count(s) : "")) },
        ],
        series: [
          {},
          { label: "$ volume", scale: "usd", fill: "rgba(59,130,246,.55)", stroke: "rgba(59,130,246,.9)", width: 0,
            paths: uPlot.paths.bars({ size: [0.78, 28], align: 0 }), points: { show: false } },
          { label: "trades", scale: "n", stroke: css("--warn"), width: 1.6, points: { show: false } },
        ],
        hooks: { setCursor: [(u) => this._tooltip(u)] },
      },
      this.data,
      el,
    );
    new ResizeObserver(() => {
      const w = Math.max(200, el.clientWidth);
      const h = el.clientHeight || 240;
      if (w !== this.plot.width || h !== this.plot.height) this.plot.setSize({ width: w, height: h });
    }).observe(el);
  }

  /** view: {first, step, buckets} with times in Unix ms. */
  set(view) {
    const bucketMs = view.step;
    this.bucketMs = bucketMs;
    const n = view.buckets.length;
    const xs = new Array(n);
    const usd = new Array(n);
    const trades = new Array(n);
    this.xMin = view.first / 1000;
    this.xMax = (view.first + n * bucketMs) / 1000;
    for (let i = 0; i < n; i++) {
      xs[i] = (view.first + (i + 0.5) * bucketMs) / 1000;
      usd[i] = fmt.dollars(view.buckets[i][0]);
      trades[i] = view.buckets[i][1];
    }
    this.data = [xs, usd, trades];
    this.plot.setData(this.data);
    if (this.plot.cursor.idx !== null && this.plot.cursor.idx !== undefined) this._tooltip(this.plot);
  }

  /** Redraw the axis in the page's time zone (after it changed). */
  retime() {
    this.plot.redraw(true, true);
  }

  _tooltip(u) {
    const i = u.cursor.idx;
    if (i === null || i === undefined || u.cursor.left < 0 || !this.data[0].length) {
      this.tip.hidden = true;
      return;
    }
    const start = this.data[0][i] * 1000 - this.bucketMs / 2;
    const label = this.bucketMs >= 3_600_000
      ? `${time.hm(start)}–${time.hm(start + this.bucketMs)}`
      : time.hm(start);
    this.tip.innerHTML = "";
    const head = document.createElement("div");
    head.className = "muted";
    head.textContent = i === this.data[0].length - 1 ? `${label} · live` : label;
    const a = document.createElement("div");
    a.innerHTML = `<b></b> $ volume`;
    a.firstChild.textContent = fmt.usd(fmt.usdUnits(this.data[1][i]));
    const b = document.createElement("div");
    b.innerHTML = `<b></b> trades`;
    b.firstChild.textContent = fmt.count(this.data[2][i]);
    this.tip.append(head, a, b);
    this.tip.hidden = false;
    const left = u.cursor.left + u.over.offsetLeft;
    const w = this.tip.offsetWidth;
    const x = left + 12 + w > this.el.clientWidth ? left - w - 12 : left + 12;
    this.tip.style.transform = `translate(${x}px, ${Math.max(0, u.cursor.top - 10)}px)`;
  }
}
