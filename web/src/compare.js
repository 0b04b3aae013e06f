// The compare view (#/compare?uids=a,b&metric=train/loss): one metric of several Workloads overlaid on one chart,
// one line per Workload (and per data source / run when a Workload has several), with the same smoothing, x axis,
// log scale, band and CSV as a Workload page. Every choice is in the URL, so a comparison is a link.
import * as api from './api.js';
import { MetricChart } from './chart.js';
import { h } from './dom.js';
import { CSV_HEADER, groupSeries, orderedSeries, resolution, seriesLabel, shownRows, toCsv } from './series.js';
import { downloadText, parseSmooth } from './view.js';

export function compareView(root, query, { onAuthNeeded }) {
  const state = {
    uids: (query.get('uids') || '').split(',').filter(Boolean),
    metric: query.get('metric') || '',
    x: ['time', 'relative'].includes(query.get('x')) ? query.get('x') : 'step',
    log: query.get('log') === '1',
    smooth: parseSmooth(query.get('smooth')),
    band: query.get('band') !== '0',
  };
  const controller = new AbortController();
  let stopped = false;
  let chart = null;
  let series = [];
  let names = new Map(); // uid -> namespace/name
  let seq = 0;

  const title = h('h1', { tabindex: '-1' }, 'Compare workloads');
  const status = h('p', { class: 'status', id: 'page-status', role: 'status' }, 'Loading…');
  const metricSelect = h('select', { id: 'compare-metric' });
  const xs = ['step', 'time', 'relative'].map((x) => h('input', { type: 'radio', name: 'x', value: x, id: `x-${x}`, checked: state.x === x }));
  const logBox = h('input', { type: 'checkbox', id: 'log-scale', checked: state.log });
  const bandBox = h('input', { type: 'checkbox', id: 'band', checked: state.band });
  const smoothInput = h('input', { type: 'range', id: 'smoothing', min: '0', max: '0.999', step: '0.001', value: String(state.smooth),
    'aria-describedby': 'smoothing-value' });
  const smoothOut = h('output', { id: 'smoothing-value', for: 'smoothing' }, state.smooth.toFixed(3));
  const csvButton = h('button', { type: 'button', id: 'csv-shown' }, 'CSV of this view');
  const members = h('ul', { class: 'members', id: 'members', 'aria-label': 'Compared workloads' });
  const chartsEl = h('section', { class: 'charts single', id: 'charts', 'aria-label': 'Chart', dataset: { state: 'loading', loads: '0' } });

  root.replaceChildren(
    h('nav', { 'aria-label': 'Breadcrumb' }, h('a', { href: '#/', id: 'back' }, '\u2190 All workloads')),
    title, status, members,
    h('form', { class: 'controls', 'aria-label': 'Chart options', onsubmit: (e) => e.preventDefault() },
      h('fieldset', {}, h('legend', {}, 'Metric'), h('label', { for: 'compare-metric', class: 'visually-hidden' }, 'Metric'), metricSelect),
      h('fieldset', {}, h('legend', {}, 'X axis'),
        ...xs.map((el, i) => h('label', { class: 'check' }, el, ` ${['Step', 'Time', 'Relative time'][i]}`))),
      h('fieldset', { class: 'smoothing' }, h('legend', {}, 'Smoothing'),
        h('label', { for: 'smoothing', class: 'visually-hidden' }, 'Smoothing weight (exponential moving average)'), smoothInput, smoothOut),
      h('fieldset', {}, h('legend', {}, 'Display'),
        h('label', { class: 'check' }, logBox, ' Log scale'),
        h('label', { class: 'check' }, bandBox, ' Min/max band when downsampled')),
      h('div', { class: 'export' }, csvButton)),
    chartsEl);

  function keepState() {
    const q = new URLSearchParams({ uids: state.uids.join(',') });
    if (state.metric) q.set('metric', state.metric);
    if (state.x !== 'step') q.set('x', state.x);
    if (state.log) q.set('log', '1');
    if (state.smooth > 0) q.set('smooth', String(state.smooth));
    if (!state.band) q.set('band', '0');
    const hash = `#/compare?${q}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  function draw() {
    if (!chart) return;
    const downsampled = chartsEl.dataset.downsampled === 'true';
    chart.update(series, { xMode: state.x, log: state.log, smooth: state.smooth, band: state.band && downsampled, events: [] });
  }

  for (const el of xs) el.addEventListener('change', () => { state.x = el.value; keepState(); draw(); });
  logBox.addEventListener('change', () => { state.log = logBox.checked; keepState(); draw(); });
  bandBox.addEventListener('change', () => { state.band = bandBox.checked; keepState(); draw(); });
  smoothInput.addEventListener('input', () => {
    state.smooth = parseSmooth(smoothInput.value);
    smoothOut.textContent = state.smooth.toFixed(3);
    keepState();
    draw();
  });
  metricSelect.addEventListener('change', () => { state.metric = metricSelect.value; keepState(); load(); });
  csvButton.addEventListener('click', () => {
    const shown = series.filter((s) => !chart?.hidden.has(s.key));
    downloadText(`compare-${state.metric.replace(/[^\w.-]+/g, '_')}.csv`,
      toCsv(CSV_HEADER, shownRows(state.metric, shown, { xMode: state.x, smooth: state.smooth })), 'text/csv');
  });

  function renderMembers() {
    members.replaceChildren(...state.uids.map((uid) => h('li', {},
      h('a', { href: `#/w/${encodeURIComponent(uid)}` }, names.get(uid) || uid), ' ',
      h('button', { type: 'button', class: 'small', 'aria-label': `Remove ${names.get(uid) || uid} from the comparison`,
        onclick: () => { state.uids = state.uids.filter((u) => u !== uid); keepState(); renderMembers(); load(); } }, 'remove'))));
  }

  async function load() {
    const my = ++seq;
    chartsEl.dataset.state = 'loading';
    if (!state.uids.length || !state.metric) {
      status.textContent = state.uids.length ? 'Choose a metric.' : 'No workload selected: tick some in the list, then "Compare selected".';
      chartsEl.replaceChildren();
      chart = null;
      chartsEl.dataset.state = 'ready';
      return;
    }
    try {
      const width = chartsEl.clientWidth || 1000;
      const bodies = await Promise.all(state.uids.map((uid) => api.data(uid, { metrics: state.metric, include: 'run,source',
        downsample: resolution(width), buckets: 'aligned' }, { signal: controller.signal }).catch((err) => {
        if (err.status === 404) return { data: [], total_count: 0 };
        throw err;
      })));
      if (my !== seq || stopped) return;
      const all = [];
      state.uids.forEach((uid, i) => {
        const own = orderedSeries(groupSeries(bodies[i].data));
        for (const s of own) {
          const name = names.get(uid) || uid;
          all.push({ ...s, key: `${uid}\u0000${s.key}`, colourIndex: i, banded: Boolean(bodies[i].downsampled),
            label: own.length > 1 ? `${name} \u00b7 ${seriesLabel(s)}` : name });
        }
      });
      series = all;
      const downsampled = bodies.some((b) => b.downsampled);
      chartsEl.dataset.downsampled = String(downsampled);
      if (!chart) {
        const figure = h('figure', { class: 'chart' });
        chartsEl.replaceChildren(figure);
        chart = new MetricChart(figure, { metric: state.metric, xMode: state.x, log: state.log, onZoom: () => {}, onReset: () => {} });
      }
      chart.opts.metric = state.metric;
      chart.figure.dataset.metric = state.metric;
      chart.figure.querySelector('figcaption').textContent = state.metric;
      chart.figure.dataset.downsampled = String(downsampled);
      draw();
      chartsEl.dataset.loads = String(Number(chartsEl.dataset.loads) + 1);
      chartsEl.dataset.state = 'ready';
      const points = bodies.reduce((n, b) => n + b.total_count, 0);
      status.textContent = `${state.metric}: ${series.length} series from ${state.uids.length} workload${state.uids.length === 1 ? '' : 's'}, `
        + `${points} points${downsampled ? ' (downsampled)' : ''}.`;
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      if (err.status === 401) { onAuthNeeded(); return; }
      chartsEl.dataset.state = 'error';
      status.textContent = `Could not load the metric: ${err.message}`;
    }
  }

  async function start() {
    try {
      const [list, ...avail] = await Promise.all([api.workloads({ signal: controller.signal }),
        ...state.uids.map((uid) => api.available(uid, { signal: controller.signal }).catch(() => ({ metrics: [] })))]);
      if (stopped) return;
      names = new Map(list.workloads.map((w) => [w.uid, `${w.namespace}/${w.name}`]));
      const metrics = [...new Set(avail.flatMap((a) => a.metrics.map((m) => m.name)))].sort();
      if (!state.metric || !metrics.includes(state.metric)) state.metric = state.metric && !metrics.length ? state.metric : (metrics[0] || '');
      metricSelect.replaceChildren(...metrics.map((m) => h('option', { value: m, selected: m === state.metric }, m)));
      document.title = `Compare ${state.metric} · trainscope`;
      renderMembers();
      keepState();
      await load();
    } catch (err) {
      if (stopped || err.name === 'AbortError') return;
      if (err.status === 401) { onAuthNeeded(); return; }
      status.textContent = `Could not load the workloads: ${err.message}`;
    }
  }

  start();
  return () => {
    stopped = true;
    controller.abort();
    if (chart) chart.destroy();
  };
}
