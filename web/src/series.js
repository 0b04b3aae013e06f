// Pure data helpers (no DOM): grouping API points into series, aligning them for uPlot, merging live points,
// zoom arithmetic, ETA and number formatting. Unit-tested with `node --test` (web/test/).

/** The key of one line on a chart: data source, the Workload's source name and run (seed 001's log vs wandb). */
export function seriesKey(p) {
  return `${p.data_source}\u0000${p.source ?? ''}\u0000${p.run ?? ''}`;
}

/** A short human label: "wandb", "tensorflow (tb)", "wandb run-a3b1799d"; a series may carry its own `label`. */
export function seriesLabel(s) {
  if (s.label) return s.label;
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

// ---- curves people compare: smoothing, x modes, envelopes, metric groups, CSV --------------------------------------

/**
 * TensorBoard's debiased exponential moving average ("classic" smoothing), as in TensorBoard's
 * tensorboard/webapp/widgets/line_chart_v2/data_transformer.ts (classicSmoothing): the weight is clamped to [0, 1];
 * last = last * w + (1 - w) * y over the finite values in order, each divided by 1 - w^n (n = finite values so far)
 * so the start is not biased towards the initial 0; non-finite values pass through uncounted; a constant series is
 * returned as it is. `ys` in step order; null/undefined are non-finite.
 */
export function emaSmooth(ys, weight) {
  let w = Number.isFinite(weight) ? Math.max(0, Math.min(1, weight)) : 0;
  const first = ys.length ? ys[0] : undefined;
  if (ys.every((y) => y === first)) return ys.slice();
  let last = 0;
  let n = 0;
  return ys.map((y) => {
    if (y === null || y === undefined || !Number.isFinite(y)) return y;
    last = last * w + (1 - w) * y;
    n += 1;
    const debias = w === 1 ? 1 : 1 - w ** n;
    return last / debias;
  });
}

/** The x of a point: the step, the time in s, or the seconds since the series' first point ('relative'). */
export function xOf(mode, step, t, t0) {
  if (mode === 'time') return t / 1000;
  if (mode === 'relative') return (t - t0) / 1000;
  return step;
}

/** A series' points in step order: [{step, t, v}]. */
export function sortedPoints(s) {
  return [...s.points].map(([step, { t, v }]) => ({ step, t, v })).sort((a, b) => a.step - b.step);
}

/** Rolling lowest and highest of each value and its neighbours (the spread a downsampled line zigzags over). */
export function envelope(values, radius = 1) {
  const lo = [];
  const hi = [];
  for (let i = 0; i < values.length; i++) {
    let a = Infinity;
    let b = -Infinity;
    for (let j = Math.max(0, i - radius); j <= Math.min(values.length - 1, i + radius); j++) {
      const v = values[j];
      if (v === null || v === undefined || !Number.isFinite(v)) continue;
      if (v < a) a = v;
      if (v > b) b = v;
    }
    lo.push(a === Infinity ? null : a);
    hi.push(b === -Infinity ? null : b);
  }
  return { lo, hi };
}

/**
 * What a chart draws, aligned for uPlot: `data` = [xs, ...ys] and `layout` = one entry per y array,
 * {key, role, series}: role 'line' (no smoothing), 'raw' + 'smooth' (smoothing on: the raw line stays, faint),
 * 'hi' + 'lo' (the band, when asked). Missing x of a series is `undefined` (the line spans it); non-finite values
 * and, on a log scale, values <= 0 are `null` (gaps).
 */
export function plotData(series, { xMode = 'step', log = false, smooth = 0, band = false } = {}) {
  const xsSet = new Set();
  const columns = [];
  const layout = [];
  const clean = (v) => (v === null || v === undefined || !Number.isFinite(v) || (log && v <= 0) ? null : v);
  for (const s of series) {
    const pts = sortedPoints(s);
    const t0 = pts.reduce((m, p) => Math.min(m, p.t), Infinity);
    const xs = pts.map((p) => xOf(xMode, p.step, p.t, t0));
    for (const x of xs) xsSet.add(x);
    const raw = pts.map((p) => p.v);
    const add = (role, ys) => { columns.push(new Map(xs.map((x, i) => [x, clean(ys[i])]))); layout.push({ key: s.key, role, series: s }); };
    if (band && s.banded !== false) { // a series may say it was not reduced (the compare view's)
      const env = envelope(raw);
      add('hi', env.hi);
      add('lo', env.lo);
    }
    if (smooth > 0) {
      add('raw', raw);
      add('smooth', emaSmooth(raw, smooth));
    } else {
      add('line', raw);
    }
  }
  const xs = Array.from(Float64Array.from(xsSet).sort());
  return { data: [xs, ...columns.map((m) => xs.map((x) => (m.has(x) ? m.get(x) : undefined)))], layout };
}

/** Metric names grouped by their prefix before the first "/" (TensorBoard's and W&B's sections), in name order. */
export function metricGroups(names) {
  const groups = new Map();
  for (const name of [...names].sort()) {
    const i = name.indexOf('/');
    const prefix = i > 0 ? name.slice(0, i) : '';
    if (!groups.has(prefix)) groups.set(prefix, []);
    groups.get(prefix).push(name);
  }
  return groups;
}

/** RFC 4180 CSV: a header and rows; fields with a comma, quote or newline are quoted. */
export function toCsv(header, rows) {
  const field = (v) => {
    const s = v === null || v === undefined ? '' : String(v);
    return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [header, ...rows].map((r) => r.map(field).join(',')).join('\r\n') + '\r\n';
}

/** The rows of what a chart shows: per series and point, the step, time, x, value and smoothed value. */
export function shownRows(metric, series, { xMode = 'step', smooth = 0, range = null } = {}) {
  const rows = [];
  for (const s of series) {
    const pts = sortedPoints(s);
    const t0 = pts.reduce((m, p) => Math.min(m, p.t), Infinity);
    const sm = smooth > 0 ? emaSmooth(pts.map((p) => p.v), smooth) : null;
    pts.forEach((p, i) => {
      const x = xOf(xMode, p.step, p.t, t0);
      if (range && (x < range[0] || x > range[1])) return;
      rows.push([metric, seriesLabel(s), s.data_source, s.source, s.run, p.step, new Date(p.t).toISOString(),
        p.v === null ? 'nan' : p.v, sm ? (sm[i] === null ? 'nan' : sm[i]) : '']);
    });
  }
  return rows;
}

export const CSV_HEADER = ['metric', 'series', 'data_source', 'source', 'run', 'step', 'time', 'value', 'smoothed'];

/** Age of a timestamp (ms) as a compact duration. */
export function age(ms, now = Date.now()) {
  return formatDuration(Math.max(0, (now - ms) / 1000));
}
