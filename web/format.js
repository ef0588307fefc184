// Number and time formatting for the page. Values arrive as exact integers in the
// units the server's hello declares (by default price $0.000001, count 0.01 contract,
// usd $0.00000001: setUnits); they are only turned into decimals here, for display.

let USD_SCALE = 10 ** 8;
let COUNT_SCALE = 100;
let PRICE_PER_CENT = 10 ** 4;
let CENT_DECIMALS = 4; // the decimals of a price in cents

/** Take the units of a hello ({price, count, usd}: decimals of each). */
export function setUnits(units) {
  USD_SCALE = 10 ** units.usd;
  COUNT_SCALE = 10 ** units.count;
  CENT_DECIMALS = Math.max(0, units.price - 2);
  PRICE_PER_CENT = 10 ** CENT_DECIMALS;
}

/** Dollars as a float, for charts (display only). */
export function dollars(units) {
  return units / USD_SCALE;
}

/** Usd units from dollars (a filter's threshold). */
export function usdUnits(dollarsValue) {
  return Math.round(dollarsValue * USD_SCALE);
}

const int = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const cents = new Intl.NumberFormat("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });
const compact2 = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 });

/** "$1,234" (whole dollars, cents under $100). */
export function usd(units) {
  const d = units / USD_SCALE;
  return Math.abs(d) < 100 ? `$${cents.format(d)}` : `$${int.format(d)}`;
}

/** "$1.2M" for tight spaces. */
export function usdShort(units) {
  const d = units / USD_SCALE;
  return Math.abs(d) < 1000 ? `$${int.format(Math.round(d))}` : `$${compact2.format(d)}`;
}

/** Contracts: "1,250" or "3.47". */
export function contracts(count) {
  return count % COUNT_SCALE === 0 ? int.format(count / COUNT_SCALE) : cents.format(count / COUNT_SCALE);
}

/** Contracts for tight spaces: decimals only under 100, "12.3K" from 10,000. */
export function contractsShort(count) {
  const c = count / COUNT_SCALE;
  if (Math.abs(c) < 100) return contracts(count);
  return Math.abs(c) < 10_000 ? int.format(Math.round(c)) : compact.format(c);
}

export function count(n) {
  return int.format(n);
}

/** A price as cents: "36¢", "36.5¢", "36.505¢", "0.25¢"; sub-cent ticks survive. */
export function price(p) {
  if (p === null || p === undefined) return "–";
  const c = p / PRICE_PER_CENT;
  return `${Number.isInteger(c) ? c : +c.toFixed(CENT_DECIMALS)}¢`;
}

/** Time left until `ms`: "3d 4h", "5h 12m", "14m", "closed". */
export function until(ms, now) {
  if (ms === null || ms === undefined) return "–";
  let s = Math.floor((ms - now) / 1000);
  if (s <= 0) return "closed";
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  if (d > 365) return `${Math.floor(d / 365)}y ${Math.floor((d % 365) / 30)}mo`;
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${m}m`;
  if (m > 0) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}
