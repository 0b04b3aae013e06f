// Pure data helpers (no DOM): grouping API points into series, aligning them for uPlot, merging live points,
// zoom arithmetic, ETA and number formatting. Unit-tested with `node --test` (web/test/).

/** The key of one line on a chart: data source, the Workload's source name and run (seed 001's log vs wandb). */
export function seriesKey(p) {
  return `${p.data_source}\u0000${p.source ?? ''}\u0000${p.run ?? ''}`;
}

/** A short human label: "wandb", "tensorflow (tb)", "wandb run-a3b1799d". */
export function seriesLabel(s) {
  let label = s.data_source;
  if (s.source && s.source !== s.data_source && !sameKind(s.source, s.data_source)) label += ` (${s.source})`;
  if (s.run && s.run !== '.') label += ` ${s.run}`;
  return label;
}

function sameKind(source, ds) {
  return (source === 'tb' && ds === 'tensorflow') || (source === 'logs' && ds === 'log');
}

/**
 * Points of one metric (the API's items, with include=run,source) -> Map key -> {data_source, source, run,
 * points: Map iteration -> {t, v}}. A later item for the same (series, iteration) replaces the earlier one.
 */
export function groupSeries(items, into = new Map()) {
  for (const p of items) {
    const key = seriesKey(p);
    let s = into.get(key);
    if (!s) {
      s = { key, data_source: p.data_source, source: p.source ?? '', run: p.run ?? '', points: new Map() };
      into.set(key, s);
    }
    s.points.set(p.iteration, { t: p.timestamp, v: p.value });
  }
  return into;
}

/** Series in a stable order: data source, source, run. */
export function orderedSeries(map) {
  return [...map.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * uPlot's aligned data: [xs, ys1, ys2, ...]. x is the step, or the time in seconds (xMode 'time').
 * A step one series lacks is `undefined` (the line spans it); a non-finite value (the API sends null) is `null`
 * (a gap). With `log`, values <= 0 cannot be drawn and become gaps too.
 */
export function align(series, xMode = 'step', log = false) {
  const xsSet = new Set();
  const perSeries = series.map((s) => {
    const m = new Map();
    for (const [step, { t, v }] of s.points) {
      const x = xMode === 'time' ? t / 1000 : step;
      xsSet.add(x);
      m.set(x, v);
    }
    return m;
  });
  const xs = Float64Array.from(xsSet).sort();
  const data = [Array.from(xs)];
  for (const m of perSeries) {
    data.push(data[0].map((x) => {
      if (!m.has(x)) return undefined;
      const v = m.get(x);
      if (v === null || !Number.isFinite(v) || (log && v <= 0)) return null;
      return v;
    }));
  }
  return data;
}

/** How many points of each series would be drawn (finite values, positive ones on a log scale). */
export function drawnCounts(series, log = false) {
  return series.map((s) => {
    let n = 0;
    for (const { v } of s.points.values()) if (v !== null && Number.isFinite(v) && (!log || v > 0)) n++;
    return n;
  });
}

/** Zoom in (factor < 1) or out (> 1) around the middle of [min, max], clamped to [lo, hi]; integers for steps. */
export function zoomRange(range, full, factor, integer = true) {
  const [lo, hi] = full;
  const [min, max] = range ?? full;
  const mid = (min + max) / 2;
  let half = ((max - min) * factor) / 2;
  if (integer) half = Math.max(half, 1);
  let a = mid - half;
  let b = mid + half;
  if (a < lo) { b += lo - a; a = lo; }
  if (b > hi) { a -= b - hi; b = hi; }
  a = Math.max(a, lo);
  if (integer) { a = Math.floor(a); b = Math.ceil(b); }
  if (a <= lo && b >= hi) return null; // the whole series: no zoom
  return [a, b];
}

/** How many points per series to ask for: about two per horizontal pixel, within the API's bounds. */
export function resolution(widthPx) {
  return Math.max(64, Math.min(4000, Math.round((widthPx || 600) * 2)));
}

/**
 * Steps per second from recent points [{iteration, timestamp}] (ms): the median pace between consecutive
 * distinct steps, so evaluations and pauses do not dominate. null when it cannot be told.
 */
export function stepRate(points) {
  const sorted = [...points].filter((p) => Number.isFinite(p.timestamp))
    .sort((a, b) => a.iteration - b.iteration);
  const paces = [];
  for (let i = 1; i < sorted.length; i++) {
    const ds = sorted[i].iteration - sorted[i - 1].iteration;
    const dt = (sorted[i].timestamp - sorted[i - 1].timestamp) / 1000;
    if (ds > 0 && dt > 0) paces.push(dt / ds);
  }
  if (!paces.length) return null;
  paces.sort((a, b) => a - b);
  const median = paces[Math.floor(paces.length / 2)];
  return median > 0 ? 1 / median : null;
}

/** Seconds to reach `total` from `step` at `rate` steps/s; 0 when done, null when unknown. */
export function etaSeconds(step, total, rate) {
  if (step == null || !total) return null;
  if (step >= total) return 0;
  if (!rate) return null;
  return (total - step) / rate;
}

/** Compact durations as `kubectl get tsw` shows them: 45s, 12m, 1h20m, 2d3h. */
export function formatDuration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return '';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h}h${String(m % 60).padStart(2, '0')}m` : `${h}h`;
  const d = Math.floor(h / 24);
  return h % 24 ? `${d}d${h % 24}h` : `${d}d`;
}

/** A metric value in 5 significant digits; NaN/Infinity arrive as null from the API. */
export function formatValue(v) {
  if (v === null || v === undefined) return 'non-finite';
  if (!Number.isFinite(v)) return String(v);
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(3);
  return String(Number(v.toPrecision(5)));
}
