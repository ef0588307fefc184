// Times on the page, in one zone for everything: UTC (the default, the zone of the server's
// analytics buckets and of "today") or the browser's local zone. The viewer's choice is kept
// in localStorage; every label that shows a time names the zone (zoneName()).

const STORAGE_KEY = "flowboard.tz";
const DAY_MS = 86_400_000;

let current = localStorage.getItem(STORAGE_KEY) === "local" ? "local" : "utc";
let formats = build(current);

function build(zone) {
  const timeZone = zone === "utc" ? "UTC" : undefined;
  return {
    clock: new Intl.DateTimeFormat("en-GB", {
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false, timeZone,
    }),
    hm: new Intl.DateTimeFormat("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false, timeZone }),
    dateTime: new Intl.DateTimeFormat("en-GB", {
      day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hour12: false, timeZone,
    }),
    name: new Intl.DateTimeFormat("en-US", { timeZoneName: "short", timeZone }),
  };
}

/** "utc" or "local". */
export function zone() {
  return current;
}

export function setZone(zone) {
  current = zone === "local" ? "local" : "utc";
  formats = build(current);
  localStorage.setItem(STORAGE_KEY, current);
}

/** The zone's short name at `ms` (default now): "UTC", "EST", "GMT+1". */
export function zoneName(ms = Date.now()) {
  if (current === "utc") return "UTC";
  return formats.name.formatToParts(ms).find((p) => p.type === "timeZoneName")?.value ?? "local";
}

export function clock(ms) {
  return formats.clock.format(ms);
}

export function hm(ms) {
  return formats.hm.format(ms);
}

export function dateTime(ms) {
  return formats.dateTime.format(ms);
}

/** Start (Unix ms) of the UTC day holding `ms`: the server's "today" begins there. */
export function utcDayStart(ms) {
  return ms - (ms % DAY_MS);
}
