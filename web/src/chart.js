// One metric's chart: uPlot (https://github.com/leeoniya/uPlot, ~50 KB) with our own accessible legend,
// drag-to-zoom reported to the page (which asks the API for that range, downsampled), and health markers.
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { drawnCounts, formatDuration, formatValue, plotData, seriesLabel } from './series.js';

// Each at least 4.5:1 on white; a data source keeps its colour on every chart (tensorflow blue, wandb red, log
// green...) and dashes tell data sources apart without colour.
const PALETTE = ['#0b57d0', '#b3261e', '#146c2e', '#7a3db8', '#8a4b00', '#006a6a', '#a8005a', '#3d4a57'];
const SOURCE_COLOR = { tensorflow: 0, wandb: 1, log: 2, swanlab: 3, qianfan: 4 };

/** Colours for the series of one chart: by data source, then the next free colour for a second run. */
function colours(series) {
  const used = new Set();
  return series.map((s) => {
    if (s.colourIndex != null) return PALETTE[s.colourIndex % PALETTE.length];
    let i = SOURCE_COLOR[s.data_source] ?? 5;
    while (used.has(i % PALETTE.length) && used.size < PALETTE.length) i++;
    used.add(i % PALETTE.length);
    return PALETTE[i % PALETTE.length];
  });
}
const DASH = { tensorflow: [], wandb: [6, 3], log: [2, 2], swanlab: [8, 2, 2, 2], qianfan: [1, 3] };
const EVENT_COLOR = { True: '#b3261e', False: '#146c2e', Unknown: '#5f6368' };

let nextId = 0;

/** A y tick: short enough for the axis (2.0e-4, 0.0315, 1200). */
function tick(v) {
  if (v == null) return '';
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

export class MetricChart {
  /**
   * @param {HTMLElement} figure  the <figure> this chart fills (its data-* attributes expose what is drawn)
   * @param {{metric: string, xMode: string, log: boolean, onZoom: Function, onReset: Function}} opts
   */
  constructor(figure, opts) {
    this.figure = figure;
    this.opts = opts;
    this.id = `chart-${++nextId}`;
    this.series = [];
    this.events = [];
    this.range = null;
    this.hidden = new Set();
    this.plot = null;
    this.signature = '';

    const caption = document.createElement('figcaption');
    caption.id = `${this.id}-caption`;
    caption.textContent = opts.metric;
    figure.setAttribute('aria-labelledby', caption.id);
    figure.dataset.metric = opts.metric;
    figure.dataset.points = '0';
    figure._chart = this; // the tests read what is drawn (this.data) from the element
    this.plotEl = document.createElement('div');
    this.plotEl.className = 'plot';
    this.readout = document.createElement('p');
    this.readout.className = 'readout';
    this.readout.textContent = '\u00a0';
    this.legend = document.createElement('ul');
    this.legend.className = 'legend';
    this.legend.setAttribute('aria-label', `${opts.metric} series`);
    this.markers = document.createElement('ul');
    this.markers.className = 'markers';
    this.markers.setAttribute('aria-label', `${opts.metric} health events`);
    figure.append(caption, this.plotEl, this.readout, this.legend, this.markers);

    this.resizer = new ResizeObserver(() => {
      if (this.plot) this.plot.setSize({ width: this.width(), height: this.height() });
    });
    this.resizer.observe(this.plotEl);
  }

  width() {
    return Math.max(240, Math.floor(this.plotEl.clientWidth || this.figure.clientWidth || 600));
  }

  height() {
    return 240;
  }

  /**
   * Draw `series` (from groupSeries/orderedSeries); `range` is the x range asked for, or null for all; `smooth` the
   * EMA weight (0: off; the raw line stays, faint); `band`: shade each series' min..max spread (downsampled data).
   */
  update(series, { range = null, events = this.events, xMode = this.opts.xMode, log = this.opts.log,
    smooth = this.opts.smooth || 0, band = this.opts.band || false } = {}) {
    const shape = `${xMode}|${log}|${smooth > 0}|${band}|${series.map((s) => s.key).join('|')}`;
    const rebuild = shape !== this.signature;
    Object.assign(this.opts, { xMode, log, smooth, band });
    this.series = series;
    this.events = events || [];
    this.range = range;
    const { data, layout } = plotData(series, { xMode, log, smooth, band });
    this.layout = layout;
    this.data = data; // what is drawn (read by the tests and the CSV of the view)
    if (rebuild || !this.plot) { this.signature = shape; this.build(data); } else this.plot.setData(data);
    this.describe(data);
  }

  build(data) {
    if (this.plot) this.plot.destroy();
    const { xMode, log, metric } = this.opts;
    const self = this;
    this.colours = colours(this.series);
    const colourOf = new Map(this.series.map((s, i) => [s.key, this.colours[i]]));
    const xLabel = { step: 'step', time: 'time', relative: 'relative time' }[xMode] || 'step';
    const bands = [];
    const ySeries = this.layout.map((l, i) => {
      const c = colourOf.get(l.key);
      const base = { label: `${seriesLabel(l.series)}${l.role === 'line' || l.role === 'smooth' ? '' : ` (${l.role})`}`,
        spanGaps: false, show: !this.hidden.has(l.key), dash: DASH[l.series.data_source] || [] };
      if (l.role === 'hi') bands.push({ series: [i + 1, i + 2], fill: `${c}26` });
      if (l.role === 'hi' || l.role === 'lo') return { ...base, stroke: `${c}40`, width: 0.5, dash: [], points: { show: false } };
      if (l.role === 'raw') return { ...base, stroke: `${c}59`, width: 1, points: { show: false } };
      return { ...base, stroke: c, width: l.role === 'smooth' ? 2 : 1.5, points: { size: 4 } };
    });
    const opts = {
      width: this.width(),
      height: this.height(),
      scales: {
        x: {
          time: xMode === 'time',
          range: (u, min, max) => (self.range ? [self.range[0], self.range[1]] : [min, max]),
        },
        y: { distr: log ? 3 : 1 },
      },
      axes: [
        { label: xLabel, stroke: '#202124', grid: { stroke: '#e3e3e3' },
          ...(xMode === 'relative' ? { values: (u, splits) => splits.map((v) => formatDuration(v)) } : {}) },
        { label: metric + (log ? ' (log)' : ''), stroke: '#202124', size: 76, grid: { stroke: '#e3e3e3' },
          values: (u, splits) => splits.map(tick) },
      ],
      series: [{ label: xLabel }, ...ySeries],
      bands,
      legend: { show: false },
      cursor: {
        drag: { x: true, y: false, setScale: false },
        bind: {
          dblclick: () => () => { self.opts.onReset(); return null; },
        },
      },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 3) return;
          const min = u.posToVal(u.select.left, 'x');
          const max = u.posToVal(u.select.left + u.select.width, 'x');
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
          self.opts.onZoom(min, max);
        }],
        setCursor: [(u) => self.showCursor(u)],
        draw: [(u) => self.drawEvents(u)],
      },
    };
    this.plot = new uPlot(opts, data, this.plotEl);
    const canvas = this.plotEl.querySelector('canvas');
    if (canvas) canvas.setAttribute('role', 'img');
    this.renderLegend();
  }

  renderLegend() {
    this.legend.replaceChildren();
    this.series.forEach((s, i) => {
      const li = document.createElement('li');
      li.dataset.series = seriesLabel(s);
      li.dataset.dataSource = s.data_source;
      const label = document.createElement('label');
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = !this.hidden.has(s.key);
      box.addEventListener('change', () => {
        if (box.checked) this.hidden.delete(s.key); else this.hidden.add(s.key);
        this.layout.forEach((l, j) => { if (l.key === s.key) this.plot.setSeries(j + 1, { show: box.checked }); });
        this.figure.dataset.hidden = String(this.hidden.size);
      });
      const swatch = document.createElement('span');
      swatch.className = `swatch dash-${s.data_source}`;
      swatch.style.borderColor = this.colours[i];
      swatch.setAttribute('aria-hidden', 'true');
      const text = document.createElement('span');
      text.className = 'series-label';
      text.textContent = seriesLabel(s);
      const count = document.createElement('span');
      count.className = 'count';
      label.append(box, swatch, text, count);
      li.append(label);
      this.legend.append(li);
    });
  }

  describe(data) {
    const counts = drawnCounts(this.series, this.opts.log);
    const total = counts.reduce((a, b) => a + b, 0);
    this.figure.dataset.points = String(total);
    this.figure.dataset.series = String(this.series.length);
    this.figure.dataset.x = this.opts.xMode;
    this.figure.dataset.log = String(this.opts.log);
    this.figure.dataset.smooth = String(this.opts.smooth || 0);
    this.figure.dataset.band = String(Boolean(this.opts.band));
    [...this.legend.children].forEach((li, i) => {
      li.dataset.points = String(counts[i]);
      const nonFinite = [...this.series[i].points.values()].filter((p) => p.v === null).length;
      li.querySelector('.count').textContent = ` ${counts[i]} points${nonFinite ? `, ${nonFinite} non-finite (gaps)` : ''}`;
    });
    const xs = data[0];
    const xText = (x) => this.xText(x);
    const span = xs.length ? `, ${this.opts.xMode} ${xText(xs[0])} to ${xText(xs[xs.length - 1])}` : ', no data';
    const summary = `${this.opts.metric}: ${this.series.length} series, ${total} points drawn${span}`;
    const canvas = this.plotEl.querySelector('canvas');
    if (canvas) canvas.setAttribute('aria-label', summary);
    this.renderMarkers();
  }

  xText(x) {
    if (this.opts.xMode === 'time') return new Date(x * 1000).toLocaleString();
    if (this.opts.xMode === 'relative') return `${formatDuration(x) || '0s'} in`;
    return `step ${x}`;
  }

  showCursor(u) {
    const idx = u.cursor.idx;
    if (idx == null) { this.readout.textContent = '\u00a0'; return; }
    const parts = [];
    this.layout.forEach((l, i) => {
      const v = u.data[i + 1][idx];
      if (v === undefined || l.role === 'hi' || l.role === 'lo') return;
      if (l.role === 'raw') { parts.push(`${seriesLabel(l.series)} ${formatValue(v)}`); return; }
      parts.push(l.role === 'smooth' ? `(smoothed ${formatValue(v)})` : `${seriesLabel(l.series)} ${formatValue(v)}`);
    });
    this.readout.textContent = `${this.xText(u.data[0][idx])}: ${parts.join(', ').replace(/, \(smoothed/g, ' (smoothed')}`;
  }

  /** Health events that concern this metric (or the whole run, e.g. Stalled). */
  relevantEvents() {
    return this.events.filter((e) => !e.metric || e.metric === this.opts.metric);
  }

  eventX(e) {
    if (this.opts.xMode === 'time') return e.timestamp != null ? e.timestamp / 1000 : null;
    if (this.opts.xMode === 'relative') {
      const t0 = Math.min(...this.series.map((s) => Math.min(...[...s.points.values()].map((p) => p.t))));
      return e.timestamp != null && Number.isFinite(t0) ? (e.timestamp - t0) / 1000 : null;
    }
    return e.iteration ?? null;
  }

  drawEvents(u) {
    const ctx = u.ctx;
    const { top, height } = u.bbox;
    for (const e of this.relevantEvents()) {
      const x = this.eventX(e);
      if (x == null || x < u.scales.x.min || x > u.scales.x.max) continue;
      const px = Math.round(u.valToPos(x, 'x', true));
      ctx.save();
      ctx.strokeStyle = EVENT_COLOR[e.status] || EVENT_COLOR.Unknown;
      ctx.lineWidth = 1.5 * uPlot.pxRatio;
      ctx.setLineDash([4 * uPlot.pxRatio, 3 * uPlot.pxRatio]);
      ctx.beginPath();
      ctx.moveTo(px, top);
      ctx.lineTo(px, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = ctx.strokeStyle;
      ctx.beginPath();
      ctx.moveTo(px - 5 * uPlot.pxRatio, top);
      ctx.lineTo(px + 5 * uPlot.pxRatio, top);
      ctx.lineTo(px, top + 8 * uPlot.pxRatio);
      ctx.fill();
      ctx.restore();
    }
  }

  renderMarkers() {
    const events = this.relevantEvents();
    this.figure.dataset.markers = String(events.length);
    this.markers.replaceChildren(...events.map((e) => {
      const li = document.createElement('li');
      li.className = `marker status-${e.status}`;
      const where = e.iteration != null ? `step ${e.iteration}` : '';
      li.textContent = `${e.status === 'True' ? '\u25bc' : '\u25bd'} ${e.type} ${e.status === 'True' ? 'raised' : 'cleared'}`
        + `${where ? ` at ${where}` : ''}${e.message ? `: ${e.message}` : ''}`;
      return li;
    }));
  }

  destroy() {
    this.resizer.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
