// A Workload page: one chart per (selected) metric, grouped by prefix; x = step, time or relative time; log scale;
// TensorBoard's debiased EMA smoothing; one line per data source / source / run (overlaid on one chart); a min/max
// band when downsampled; zoom that asks the API for the range downsampled; live points over SSE; health markers;
// the CSV of what is shown; every choice in the URL.
import * as api from './api.js';
import { MetricChart } from './chart.js';
import { h } from './dom.js';
import { subscribe } from './sse.js';
import { CSV_HEADER, formatDuration, formatValue, groupSeries, metricGroups, orderedSeries, resolution, shownRows, toCsv,
  zoomRange } from './series.js';
import { downloadText, parseSmooth } from './view.js';

const DEFAULT_CHARTS = 12;
const HEADER_REFRESH_MS = 10000;

export function workloadView(root, uid, query, { onAuthNeeded }) {
  const state = {
    metrics: query.get('metrics') ? query.get('metrics').split(',').filter(Boolean) : null,
    x: ['time', 'relative'].includes(query.get('x')) ? query.get('x') : 'step',
    log: query.get('log') === '1',
    smooth: parseSmooth(query.get('smooth')),
    band: query.get('band') !== '0',
    live: query.get('live') !== '0',
    range: query.get('from') && query.get('to') ? [Number(query.get('from')), Number(query.get('to'))] : null,
    full: null,
  };
  if (state.range && !state.range.every(Number.isFinite)) state.range = null;
  const charts = new Map(); // metric -> {chart, series: Map}
  let available = [];
  let events = null; // null: the API serves no health events
  let seq = 0;
  let loads = 0;
  let livePoints = 0;
  let closeStream = null;
  let stopped = false;
  let headerTimer = null;
  let flushTimer = null;
  const pending = [];
  const controller = new AbortController();

  // ---- skeleton ------------------------------------------------------------------------------------------
  const title = h('h1', { tabindex: '-1' }, 'Workload');
  const summary = h('dl', { class: 'summary' });
  const metricBoxes = h('div', { class: 'metric-boxes' });
  const xStep = h('input', { type: 'radio', name: 'x', value: 'step', id: 'x-step', checked: state.x === 'step' });
  const xTime = h('input', { type: 'radio', name: 'x', value: 'time', id: 'x-time', checked: state.x === 'time' });
  const xRel = h('input', { type: 'radio', name: 'x', value: 'relative', id: 'x-relative', checked: state.x === 'relative' });
  const smoothInput = h('input', { type: 'range', id: 'smoothing', min: '0', max: '0.999', step: '0.001',
    value: String(state.smooth), 'aria-describedby': 'smoothing-value' });
  const smoothOut = h('output', { id: 'smoothing-value', for: 'smoothing' }, state.smooth.toFixed(3));
  const bandBox = h('input', { type: 'checkbox', id: 'band', checked: state.band });
  const shownCsv = h('button', { type: 'button', id: 'csv-shown' }, 'CSV of this view');
  const logBox = h('input', { type: 'checkbox', id: 'log-scale', checked: state.log });
  const liveBox = h('input', { type: 'checkbox', id: 'live', checked: state.live });
  const liveState = h('span', { class: 'live-state', id: 'live-state', role: 'status' }, '');
  const fromInput = h('input', { id: 'range-from', name: 'from' });
  const toInput = h('input', { id: 'range-to', name: 'to' });
  const csv = h('a', { class: 'button', id: 'csv', download: `${uid}-metrics.csv` }, 'All points (API CSV)');
  const chartsEl = h('section', { class: 'charts', id: 'charts', 'aria-label': 'Charts', dataset: { state: 'loading', loads: '0' } });
  const healthEl = h('section', { class: 'health', id: 'health', 'aria-labelledby': 'health-title' },
    h('h2', { id: 'health-title' }, 'Health events'), h('p', { class: 'muted' }, 'Loading…'));
  const status = h('p', { class: 'status', id: 'page-status', role: 'status' }, 'Loading…');
  const runsEl = h('section', { class: 'runs', id: 'runs', 'aria-labelledby': 'runs-title' },
    h('h2', { id: 'runs-title' }, 'Runs'), h('p', { class: 'muted' }, 'Loading…'));

  const controls = h('form', { class: 'controls', 'aria-label': 'Chart options', onsubmit: (e) => { e.preventDefault(); applyRangeInputs(); } },
    h('fieldset', { class: 'metrics-pick' }, h('legend', {}, 'Metrics'), metricBoxes),
    h('fieldset', {}, h('legend', {}, 'X axis'),
      h('label', { class: 'check' }, xStep, ' Step'), h('label', { class: 'check' }, xTime, ' Time'),
      h('label', { class: 'check' }, xRel, ' Relative time')),
    h('fieldset', { class: 'smoothing' }, h('legend', {}, 'Smoothing'),
      h('label', { for: 'smoothing', class: 'visually-hidden' }, 'Smoothing weight (exponential moving average)'),
      smoothInput, smoothOut),
    h('fieldset', {}, h('legend', {}, 'Display'),
      h('label', { class: 'check' }, logBox, ' Log scale'),
      h('label', { class: 'check' }, bandBox, ' Min/max band when downsampled'),
      h('label', { class: 'check' }, liveBox, ' Live updates'), liveState),
    h('fieldset', { class: 'range' }, h('legend', {}, 'Range'),
      h('label', { for: 'range-from' }, 'From'), fromInput,
      h('label', { for: 'range-to' }, 'To'), toInput,
      h('button', { type: 'submit', id: 'apply-range' }, 'Apply'),
      h('button', { type: 'button', id: 'zoom-in', onclick: () => zoomBy(0.5) }, 'Zoom in'),
      h('button', { type: 'button', id: 'zoom-out', onclick: () => zoomBy(2) }, 'Zoom out'),
      h('button', { type: 'button', id: 'zoom-reset', onclick: () => setRange(null) }, 'Reset zoom'),
      h('p', { class: 'hint' }, 'Drag across a chart to zoom; double-click it to reset.')),
    h('div', { class: 'export' }, shownCsv, ' ', csv));

  root.replaceChildren(
    h('nav', { 'aria-label': 'Breadcrumb' }, h('a', { href: '#/', id: 'back' }, '\u2190 All workloads')),
    title, summary, status, controls, chartsEl, runsEl, healthEl);

  xStep.addEventListener('change', () => setX('step'));
  xTime.addEventListener('change', () => setX('time'));
  xRel.addEventListener('change', () => setX('relative'));
  smoothInput.addEventListener('input', () => {
    state.smooth = parseSmooth(smoothInput.value);
    smoothOut.textContent = state.smooth.toFixed(3);
    keepState();
    redrawAll();
  });
  bandBox.addEventListener('change', () => { state.band = bandBox.checked; keepState(); redrawAll(); });
  shownCsv.addEventListener('click', () => {
    const rows = [];
    for (const [metric, c] of charts) {
      rows.push(...shownRows(metric, orderedSeries(c.series).filter((s) => !c.chart.hidden.has(s.key)),
        { xMode: state.x, smooth: state.smooth, range: state.range }));
    }
    downloadText(`${uid}-shown.csv`, toCsv(CSV_HEADER, rows), 'text/csv');
  });
  logBox.addEventListener('change', () => { state.log = logBox.checked; keepState(); redrawAll(); });
  liveBox.addEventListener('change', () => { state.live = liveBox.checked; keepState(); restartStream(); });

  // ---- state <-> URL -------------------------------------------------------------------------------------
  function keepState() {
    const q = new URLSearchParams();
    if (state.metrics) q.set('metrics', state.metrics.join(','));
    if (state.x !== 'step') q.set('x', state.x);
    if (state.log) q.set('log', '1');
    if (state.smooth > 0) q.set('smooth', String(state.smooth));
    if (!state.band) q.set('band', '0');
    if (!state.live) q.set('live', '0');
    if (state.range) { q.set('from', String(state.range[0])); q.set('to', String(state.range[1])); }
    const hash = `#/w/${encodeURIComponent(uid)}${q.toString() ? `?${q}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    updateCsv();
    syncRangeInputs();
  }

  function selected() {
    return state.metrics ?? available.slice(0, DEFAULT_CHARTS).map((m) => m.name);
  }

  function rangeQuery() {
    if (!state.range || state.x === 'relative') return {}; // relative time differs per series: zoom in the page
    const [a, b] = state.range;
    if (state.x === 'time') return { start: Math.max(0, Math.floor(a * 1000)), end: Math.ceil(b * 1000) };
    return { from_step: Math.floor(a), to_step: Math.ceil(b) };
  }

  function updateCsv() {
    const query = { metrics: selected().join(','), format: 'csv', include: 'run,source', ...rangeQuery() };
    csv.href = api.apiUrl(`workloads/${api.enc(uid)}/metrics/data`, query);
  }

  csv.addEventListener('click', async (e) => {
    if (!api.token()) return; // a plain link streams the file; with a token, fetch it with the header
    e.preventDefault();
    const res = await fetch(csv.href, { headers: api.authHeaders() });
    const url = URL.createObjectURL(await res.blob());
    const a = h('a', { href: url, download: csv.getAttribute('download') });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });

  function toInputValue(x) {
    if (state.x === 'step') return String(Math.round(x));
    if (state.x === 'relative') return String(Math.round(x));
    const d = new Date(x * 1000);
    const local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
    return local.toISOString().slice(0, 19);
  }

  function fromInputValue(v) {
    if (v === '') return null;
    if (state.x === 'step' || state.x === 'relative') return Number(v);
    const t = new Date(v).getTime();
    return Number.isFinite(t) ? t / 1000 : null;
  }

  function syncRangeInputs() {
    for (const el of [fromInput, toInput]) {
      el.type = state.x === 'time' ? 'datetime-local' : 'number';
      if (state.x === 'time') el.step = '1'; else el.removeAttribute('step');
    }
    const r = state.range || state.full;
    fromInput.value = r ? toInputValue(r[0]) : '';
    toInput.value = r ? toInputValue(r[1]) : '';
  }

  function applyRangeInputs() {
    const a = fromInputValue(fromInput.value);
    const b = fromInputValue(toInput.value);
    if (a == null || b == null || !(b > a)) {
      status.textContent = 'The range needs a "From" below its "To".';
      return;
    }
    setRange([a, b]);
  }

  // ---- zoom ----------------------------------------------------------------------------------------------
  function setRange(range) {
    if (range && state.full && range[0] <= state.full[0] && range[1] >= state.full[1]) range = null;
    state.range = range;
    keepState();
    if (state.x === 'relative') { redrawAll(); return; } // the loaded points already cover it
    load();
  }

  function zoomBy(factor) {
    const full = state.full ?? state.range;
    if (!full) return;
    const r = zoomRange(state.range, full, factor, state.x !== 'time');
    if (!state.full && factor > 1 && r) { setRange(zoomRange(state.range, [-Infinity, Infinity], factor, state.x !== 'time')); return; }
    setRange(r);
  }

  function onZoom(min, max) {
    if (!(max > min)) return;
    setRange(state.x === 'time' ? [min, max] : [Math.floor(min), Math.ceil(max)]);
  }

  function setX(x) {
    if (state.x === x) return;
    state.x = x;
    state.range = null; // a step range means nothing on a time axis
    state.full = null;
    keepState();
    load();
  }

  // ---- charts --------------------------------------------------------------------------------------------
  function ensureCharts() {
    const want = selected();
    for (const [metric, c] of charts) {
      if (!want.includes(metric)) { c.chart.destroy(); c.chart.figure.remove(); charts.delete(metric); }
    }
    for (const metric of want) {
      if (charts.has(metric)) continue;
      const figure = h('figure', { class: 'chart' });
      chartsEl.append(figure);
      const chart = new MetricChart(figure, { metric, xMode: state.x, log: state.log, onZoom, onReset: () => setRange(null) });
      charts.set(metric, { chart, series: new Map() });
    }
    // keep the chosen order, a heading before each prefix group (train/, eval/...)
    chartsEl.querySelectorAll('h2.group').forEach((el) => el.remove());
    for (const [prefix, names] of metricGroups(want)) {
      chartsEl.append(h('h2', { class: 'group', dataset: { group: prefix } }, prefix || 'Other metrics',
        h('span', { class: 'muted' }, ` (${names.length})`)));
      for (const metric of names) chartsEl.append(charts.get(metric).chart.figure);
    }
    chartsEl.querySelector('.empty')?.remove();
    if (!want.length) chartsEl.append(h('p', { class: 'empty' }, 'No metric selected.'));
  }

  function redraw(metric) {
    const c = charts.get(metric);
    if (!c) return;
    c.chart.update(orderedSeries(c.series), { range: state.range, events: events || [], xMode: state.x, log: state.log,
      smooth: state.smooth, band: state.band && c.chart.figure.dataset.downsampled === 'true' });
  }

  function redrawAll() {
    for (const metric of charts.keys()) redraw(metric);
  }

  async function load() {
    ensureCharts();
    const my = ++seq;
    const metrics = selected();
    chartsEl.dataset.state = 'loading';
    if (!metrics.length) { chartsEl.dataset.state = 'ready'; return; }
    const width = chartsEl.querySelector('.plot')?.clientWidth || chartsEl.clientWidth || 600;
    // aligned buckets: their edges stay put as a live run grows, and the API reads them from whole rollup blocks
    const query = { metrics: metrics.join(','), include: 'run,source', downsample: resolution(width), buckets: 'aligned',
      ...rangeQuery() };
    try {
      const body = await api.data(uid, query, { signal: controller.signal });
      if (my !== seq || stopped) return;
      const byMetric = new Map(metrics.map((m) => [m, []]));
      for (const p of body.data) byMetric.get(p.metric_name)?.push(p);
      for (const [metric, items] of byMetric) {
        const c = charts.get(metric);
        c.series = groupSeries(items);
        c.chart.figure.dataset.downsampled = String(Boolean(body.downsampled));
      }
      if (!state.range) state.full = extent();
      redrawAll();
      loads += 1;
      chartsEl.dataset.loads = String(loads);
      chartsEl.dataset.downsampled = String(Boolean(body.downsampled));
      chartsEl.dataset.sourcePoints = String(body.downsample?.source_points ?? body.total_count);
      chartsEl.dataset.state = 'ready';
      const reduced = body.downsampled ? `, downsampled from ${body.downsample.source_points} points` : '';
      const where = state.range ? ` in ${state.x} ${fromInput.value} to ${toInput.value}` : '';
      status.textContent = `${body.total_count} points of ${metrics.length} metric${metrics.length === 1 ? '' : 's'}${where}${reduced}.`;
      syncRangeInputs();
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      if (err.status === 401) { onAuthNeeded(); return; }
      chartsEl.dataset.state = 'error';
      status.textContent = `Could not load the metrics: ${err.message}`;
    }
  }

  function extent() {
    let lo = Infinity;
    let hi = -Infinity;
    for (const { series } of charts.values()) {
      for (const s of series.values()) {
        const t0 = Math.min(...[...s.points.values()].map((p) => p.t));
        for (const [step, { t }] of s.points) {
          const x = state.x === 'time' ? t / 1000 : state.x === 'relative' ? (t - t0) / 1000 : step;
          if (x < lo) lo = x;
          if (x > hi) hi = x;
        }
      }
    }
    return lo <= hi ? [lo, hi] : null;
  }

  // ---- live ----------------------------------------------------------------------------------------------
  function restartStream() {
    if (closeStream) { closeStream(); closeStream = null; }
    if (!state.live || stopped) { liveState.textContent = 'off'; liveState.dataset.state = 'off'; return; }
    const url = api.apiUrl(`workloads/${api.enc(uid)}/metrics/stream`, { metrics: selected().join(','), include: 'run,source' });
    closeStream = subscribe(url, {
      headers: api.authHeaders(),
      onState: (s, detail) => {
        liveState.dataset.state = s;
        liveState.textContent = { connecting: 'connecting…', open: 'live', retrying: `reconnecting (${detail || 'error'})`, closed: detail ? `stopped (${detail})` : 'off' }[s] || s;
      },
      onEvent: (ev) => {
        if (ev.type !== 'points') return;
        let body;
        try { body = JSON.parse(ev.data); } catch { return; }
        pending.push(...body.data);
        if (!flushTimer) flushTimer = setTimeout(flush, 100);
      },
    });
  }

  function inRange(p) {
    if (!state.range || state.x === 'relative') return true;
    const x = state.x === 'time' ? p.timestamp / 1000 : p.iteration;
    return x >= state.range[0] && x <= state.range[1];
  }

  function flush() {
    flushTimer = null;
    const items = pending.splice(0);
    const touched = new Set();
    let top = null;
    for (const p of items) {
      top = Math.max(top ?? p.iteration, p.iteration);
      const c = charts.get(p.metric_name);
      if (!c || !inRange(p)) continue;
      groupSeries([p], c.series);
      touched.add(p.metric_name);
    }
    livePoints += items.length;
    chartsEl.dataset.livePoints = String(livePoints);
    if (!state.range) {
      state.full = extent() ?? state.full;
      if (![fromInput, toInput].includes(document.activeElement)) syncRangeInputs(); // never under the user's typing
    }
    for (const metric of touched) redraw(metric);
    if (top != null) {
      const stepEl = summary.querySelector('[data-field="step"]');
      if (stepEl && Number(stepEl.dataset.value || -Infinity) < top) { stepEl.dataset.value = String(top); stepEl.textContent = String(top); }
    }
  }

  // ---- header and health -----------------------------------------------------------------------------------
  function renderSummary(w) {
    title.textContent = `${w.namespace}/${w.name}`;
    document.title = `${w.namespace}/${w.name} · trainscope`;
    const pct = w.progress != null ? Math.min(1, Math.max(0, w.progress)) : null;
    const pm = w.primary_metric;
    const item = (label, value, field) => [h('dt', {}, label), h('dd', field ? { dataset: { field, value: String(value ?? '') } } : {}, value ?? '–')];
    summary.replaceChildren(
      ...item('Phase', (w.phase || w.deleted) ? h('span', { class: `phase phase-${w.phase || 'Deleted'}` }, w.phase || 'Deleted') : 'n/a'),
      ...item('Step', w.step, 'step'),
      ...item('Total steps', w.total_steps),
      h('dt', {}, 'Progress'),
      h('dd', {}, pct == null ? '–' : [h('progress', { max: '1', value: String(pct), 'aria-label': 'Progress' }), ` ${(pct * 100).toFixed(1)}%`]),
      ...item('Primary metric', pm ? `${pm.name} = ${formatValue(pm.value)} @ ${pm.iteration} (${pm.data_source})` : null),
      ...(w.eta_seconds != null ? item('ETA', formatDuration(w.eta_seconds)) : []),
      h('dt', {}, 'Data sources'),
      h('dd', {}, w.data_sources.join(', ') || '–', w.data_sources.includes('tensorflow')
        ? h('span', { class: 'muted note' }, ' (tensorflow is TensorBoard: the API keeps the seed API\'s name for the source the Workload calls tensorboard)')
        : null),
      ...item('UID', w.uid));
  }

  function renderHealth() {
    const body = healthEl.querySelector('h2');
    if (events === null) {
      healthEl.dataset.available = 'false';
      healthEl.replaceChildren(body, h('p', { class: 'muted' },
        'The health events could not be read, so no markers are drawn on the curves. '
        + 'Conditions are in the Workload status (kubectl describe tsw) and its Kubernetes events.'));
      return;
    }
    healthEl.dataset.available = 'true';
    healthEl.replaceChildren(body, events.length
      ? h('ol', { class: 'events' }, ...events.map((e) => h('li', { class: `status-${e.status}` },
        h('strong', {}, e.type), ` ${e.status === 'True' ? 'raised' : 'cleared'}`,
        e.iteration != null ? ` at step ${e.iteration}` : '',
        e.timestamp != null ? ` (${new Date(e.timestamp).toLocaleString()})` : '',
        e.message ? `: ${e.message}` : '')))
      : h('p', {}, 'No health event recorded.'));
  }

  async function refreshHeader() {
    try {
      const [w, ev] = await Promise.all([api.workload(uid, { signal: controller.signal }),
        api.healthEvents(uid, { signal: controller.signal }).catch(() => null)]);
      if (stopped) return;
      renderSummary(w);
      const changed = JSON.stringify(ev) !== JSON.stringify(events);
      events = ev;
      renderHealth();
      if (changed) redrawAll();
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      if (err.status === 401) { onAuthNeeded(); return; }
    }
    if (!stopped) headerTimer = setTimeout(refreshHeader, HEADER_REFRESH_MS);
  }

  function renderMetricBoxes() {
    const chosen = new Set(selected());
    const info = new Map(available.map((m) => [m.name, m]));
    let i = 0;
    const onChange = () => {
      state.metrics = [...metricBoxes.querySelectorAll('input:checked')].map((b) => b.value);
      keepState();
      load();
      restartStream();
    };
    metricBoxes.replaceChildren(...[...metricGroups(available.map((m) => m.name))].map(([prefix, names]) => {
      const name = prefix || 'other';
      const boxes = names.map((n) => {
        const m = info.get(n);
        const id = `metric-${i++}`;
        const box = h('input', { type: 'checkbox', id, value: n, checked: chosen.has(n) });
        box.addEventListener('change', onChange);
        return h('label', { class: 'check', for: id }, box, ` ${n} `,
          h('span', { class: 'muted' }, `(${m.data_source.join(', ')}; ${m.count})`));
      });
      const all = (on) => () => {
        for (const label of boxes) label.querySelector('input').checked = on;
        onChange();
      };
      return h('div', { class: 'metric-group', role: 'group', 'aria-label': `${name} metrics`, dataset: { group: prefix } },
        h('span', { class: 'group-name' }, `${name}/`),
        h('button', { type: 'button', class: 'small', onclick: all(true), 'aria-label': `Show all ${name} metrics` }, 'all'),
        h('button', { type: 'button', class: 'small', onclick: all(false), 'aria-label': `Show none of the ${name} metrics` }, 'none'),
        ...boxes);
    }));
  }

  async function loadRuns() {
    const title = runsEl.querySelector('h2');
    try {
      const body = await api.runs(uid, { signal: controller.signal });
      if (stopped) return;
      if (!body.runs.length) { runsEl.replaceChildren(title, h('p', { class: 'muted' }, 'The sources reported no run details.')); return; }
      const nameOf = (info) => info.display_name ?? info.displayName ?? info.name ?? '–';
      const details = (info) => {
        const rest = Object.fromEntries(Object.entries(info).filter(([k]) => !['display_name', 'displayName', 'name', 'state'].includes(k)));
        const text = Object.keys(rest).length ? JSON.stringify(rest) : '–';
        return h('td', { class: 'details', title: text }, text.length > 100 ? `${text.slice(0, 100)}…` : text);
      };
      runsEl.replaceChildren(title, h('div', { class: 'table-wrap' }, h('table', { class: 'runs-table', id: 'runs-table' },
        h('thead', {}, h('tr', {}, ...['Source', 'Run', 'Name', 'State', 'Details', 'Updated'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, ...body.runs.map((r) => h('tr', {}, h('td', {}, r.source), h('th', { scope: 'row' }, r.run || '(default)'),
          h('td', {}, String(nameOf(r.info))), h('td', {}, String(r.info.state ?? '–')), details(r.info),
          h('td', {}, new Date(r.updated_at).toLocaleString())))))));
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      runsEl.replaceChildren(title, h('p', { class: 'muted' }, `Could not load the runs: ${err.message}`));
    }
  }

  async function start() {
    try {
      const [w, av, ev] = await Promise.all([api.workload(uid, { signal: controller.signal }),
        api.available(uid, { signal: controller.signal }),
        api.healthEvents(uid, { signal: controller.signal }).catch(() => null)]);
      if (stopped) return;
      available = av.metrics;
      events = ev;
      renderSummary(w);
      renderHealth();
      if (state.metrics) state.metrics = state.metrics.filter((m) => available.some((a) => a.name === m));
      renderMetricBoxes();
      keepState();
      await load();
      restartStream();
      loadRuns();
      headerTimer = setTimeout(refreshHeader, HEADER_REFRESH_MS);
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      if (err.status === 401) { onAuthNeeded(); return; }
      chartsEl.dataset.state = 'error';
      status.textContent = err.status === 404 ? `No workload ${uid}.` : `Could not load the workload: ${err.message}`;
    }
  }

  start();
  return () => {
    stopped = true;
    controller.abort();
    clearTimeout(headerTimer);
    clearTimeout(flushTimer);
    if (closeStream) closeStream();
    for (const c of charts.values()) c.chart.destroy();
  };
}
