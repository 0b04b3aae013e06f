// The fleet view: every Workload with phase, health, progress, ETA, pace, the primary metric with a sparkline, the
// sources' newest points and age; failed and stalled first; search, namespace, sort; pick some to compare. The
// first load is two requests whatever the fleet's size (GET /workloads and GET /overview); then the view follows
// GET /overview/stream (Server-Sent Events: only the workloads that changed), and polls the two requests every 5 s
// while the stream is down or the API has none. Rows are rebuilt only when their data changed, so an update of
// 1,000 Workloads touches the few that moved. The table is windowed: only the rows in or near the viewport are in
// the DOM (spacer rows stand for the others, aria-rowcount/aria-rowindex tell assistive technology where a row is),
// so the first paint of 1,000 Workloads lays out a few dozen rows, not a thousand.
import * as api from './api.js';
import { h, visuallyHidden } from './dom.js';
import { subscribe } from './sse.js';
import { age, formatDuration, formatValue, seriesLabel } from './series.js';

const REFRESH_MS = 5000;
const SPARK_POINTS = 32;
const STALE_MS = 10 * 60 * 1000; // a source whose newest point is older than this, in an unfinished run, is flagged
const BAD = new Set(['Stalled', 'NonFiniteMetric', 'MetricDiverging']);
const ENDED_PHASES = new Set(['Succeeded', 'Failed', 'Deleted', 'Suspended']);
const OV_FIRST = 5; // the index of the first of a row's overview cells (ETA)
const OVERSCAN_PX = 800; // rows kept in the DOM above and below the viewport, so a scroll or a Tab finds them there
const ROW_ESTIMATE_PX = 44; // a row's height until one has been measured

// Sort keys: each returns a value compared ascending (nulls last); `attention` is the default.
const SORTS = {
  attention: { label: 'Needs attention', key: (r) => [r.rank, r.w.namespace, r.w.name] },
  name: { label: 'Name', key: (r) => [r.w.namespace, r.w.name] },
  phase: { label: 'Phase', key: (r) => [r.w.phase ?? '\uffff', r.w.name] },
  progress: { label: 'Progress', key: (r) => [r.w.progress] },
  eta: { label: 'ETA', key: (r) => [r.eta] },
  rate: { label: 'Steps/s', key: (r) => [r.rate] },
  metric: { label: 'Primary metric', key: (r) => [r.w.primary_metric?.value ?? null] },
  age: { label: 'Age', key: (r) => [-r.w.created_at] },
};

function compareKeys(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x === y) continue;
    if (x === null || x === undefined) return 1; // unknowns last, either direction
    if (y === null || y === undefined) return -1;
    if (typeof x === 'string') return x.localeCompare(y);
    return x < y ? -1 : 1;
  }
  return 0;
}

/** 0 failed, 1 stalled or non-finite/diverging, 2 other health conditions or degraded, 3 fine, 4 deleted. */
export function attentionRank(w) {
  if (w.deleted) return 4;
  if (w.phase === 'Failed') return 0;
  const active = (w.conditions || []).filter((c) => c.status === 'True' && c.type !== 'Ready' && c.type !== 'SourcesHealthy');
  if (active.some((c) => BAD.has(c.type))) return 1;
  if (active.length || w.phase === 'Degraded') return 2;
  return 3;
}

/** An inline SVG sparkline of [step, value] points (non-finite values break the line). */
function sparkline(points, label) {
  const W = 96;
  const H = 24;
  const finite = points.filter((p) => p[1] !== null);
  if (finite.length < 2) return h('span', { class: 'muted' }, '');
  const x0 = points[0][0];
  const x1 = points[points.length - 1][0];
  let lo = Infinity;
  let hi = -Infinity;
  for (const p of finite) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); }
  const sx = (x) => (x1 > x0 ? ((x - x0) / (x1 - x0)) * (W - 2) + 1 : W / 2);
  const sy = (v) => (hi > lo ? H - 2 - ((v - lo) / (hi - lo)) * (H - 4) : H / 2);
  let d = '';
  let pen = false;
  for (const p of points) {
    if (p[1] === null) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${sx(p[0]).toFixed(1)} ${sy(p[1]).toFixed(1)}`;
    pen = true;
  }
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('width', String(W));
  svg.setAttribute('height', String(H));
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', label);
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

export function listView(root, { onAuthNeeded }) {
  let timer = null;
  let stopped = false;
  let live = false; // the stream is open: no polling
  let closeStream = null;
  let items = [];
  let over = new Map();
  let loadedAt = 0;
  let firstRender = true;
  const rowCache = new Map(); // uid -> {base, ov, tr}
  let current = []; // the filtered, sorted rows (facts) the window shows a slice of
  let win = null; // the rendered slice [first, last) of `current`
  const heights = new Map(); // uid -> the row's measured height (px)
  let estimate = ROW_ESTIMATE_PX;
  let scrollQueued = false;
  let pendingOv = []; // rows whose overview cells are to be replaced: [cache entry, facts, ov signature]
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const sel = new Set((params.get('sel') || '').split(',').filter(Boolean));
  let sortBy = SORTS[params.get('sort')] ? params.get('sort') : 'attention';
  let desc = params.get('dir') === 'desc';

  const filter = h('input', { type: 'search', id: 'filter', placeholder: 'namespace, name, phase or condition',
    autocomplete: 'off', 'aria-controls': 'workloads' });
  const nsSelect = h('select', { id: 'namespace' }, h('option', { value: '' }, 'All namespaces'));
  const showDeleted = h('input', { type: 'checkbox', id: 'show-deleted' });
  const sortSelect = h('select', { id: 'sort' }, ...Object.entries(SORTS).map(([k, s]) => h('option', { value: k }, s.label)));
  const compareLink = h('a', { class: 'button', id: 'compare', href: '#/compare' }, 'Compare selected');
  const status = h('p', { class: 'status', id: 'list-status', role: 'status' }, 'Loading workloads…');
  const liveNote = h('span', { class: 'live-note' }, 'refreshes every 5 s');
  const tbody = h('tbody');
  const headers = [['', null], ['Workload', 'name'], ['Phase', 'phase'], ['Health', 'attention'], ['Progress', 'progress'],
    ['ETA', 'eta'], ['Steps/s', 'rate'], ['Primary metric', 'metric'], ['Sources', null], ['Age', 'age']];
  const headRow = h('tr', {});
  // fixed layout with set column widths: the browser lays out 1,000 rows without measuring every cell first
  const widths = ['2.2em', '13%', '7.6em', '11%', '10em', '5.5em', '5em', '17em', '11%', '4.5em']; // Phase: 'Suspended' in its box
  const table = h('table', { id: 'workloads', class: 'workloads fixed windowed' },
    h('caption', {}, 'Workloads', h('span', { class: 'caption-note' }, ' (failed and stalled first by default; ',
      liveNote, ')')),
    h('colgroup', {}, ...widths.map((w) => h('col', { style: `width: ${w}` }))),
    h('thead', {}, headRow), tbody);

  filter.value = params.get('q') || '';
  showDeleted.checked = params.get('deleted') === '1';
  sortSelect.value = sortBy;
  const wantNs = params.get('ns') || '';

  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter workloads',
    onsubmit: (e) => e.preventDefault() },
  h('label', { for: 'filter' }, 'Search'), filter,
  h('label', { for: 'namespace' }, 'Namespace'), nsSelect,
  h('label', { for: 'sort' }, 'Sort by'), sortSelect,
  h('label', { class: 'check' }, showDeleted, ' Show deleted'),
  compareLink);

  root.replaceChildren(h('h1', { tabindex: '-1' }, 'Workloads'), form, status, h('div', { class: 'table-wrap' }, table));

  for (const el of [filter, nsSelect, showDeleted]) el.addEventListener('input', () => { render(); flushOverview(); keepState(); });
  sortSelect.addEventListener('change', () => { sortBy = sortSelect.value; desc = false; render(); flushOverview(); keepState(); });

  function renderHead() {
    headRow.replaceChildren(...headers.map(([label, key]) => {
      if (!label) return h('th', { scope: 'col' }, visuallyHidden('Compare'));
      if (!key) return h('th', { scope: 'col', title: label === 'Sources' ? 'each source with the age of its newest stored point' : null }, label);
      const active = sortBy === key;
      return h('th', { scope: 'col', 'aria-sort': active ? (desc ? 'descending' : 'ascending') : null },
        h('button', { type: 'button', class: 'sort', dataset: { sort: key },
          onclick: () => { if (sortBy === key) desc = !desc; else { sortBy = key; desc = false; } sortSelect.value = sortBy; render(); flushOverview(); keepState(); } },
        label, h('span', { 'aria-hidden': 'true' }, active ? (desc ? ' \u25bc' : ' \u25b2') : '')));
    }));
  }

  function keepState() {
    const q = new URLSearchParams();
    if (filter.value) q.set('q', filter.value);
    if (nsSelect.value) q.set('ns', nsSelect.value);
    if (showDeleted.checked) q.set('deleted', '1');
    if (sortBy !== 'attention') q.set('sort', sortBy);
    if (desc) q.set('dir', 'desc');
    if (sel.size) q.set('sel', [...sel].join(','));
    const hash = `#/${q.toString() ? `?${q}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
    updateCompare();
  }

  function updateCompare() {
    const uids = [...sel].filter((u) => items.some((w) => w.uid === u));
    const metric = items.find((w) => w.uid === uids[0])?.primary_metric?.name;
    compareLink.textContent = `Compare selected (${uids.length})`;
    const q = new URLSearchParams({ uids: uids.join(',') });
    if (metric) q.set('metric', metric);
    compareLink.href = `#/compare?${q}`;
    compareLink.setAttribute('aria-disabled', String(uids.length < 1));
    compareLink.classList.toggle('disabled', uids.length < 1);
  }

  function facts(w) {
    const o = over.get(w.uid);
    // a run that ended or is held has no pace and no ETA, whatever its last points' pace was
    const ended = ENDED_PHASES.has(w.phase);
    const rate = ended ? null : o?.steps_per_second ?? null;
    let eta = ended ? null : w.eta_seconds ?? null;
    let estimated = false;
    // nor is a finish time guessed from the pace of a run whose steps stopped (Stalled)
    const stalled = (w.conditions || []).some((c) => c.type === 'Stalled' && c.status === 'True');
    if (eta == null && w.total_steps && w.step != null && w.phase !== 'Failed') {
      if (w.step >= w.total_steps) eta = 0;
      else if (rate && !stalled) { eta = (w.total_steps - w.step) / rate; estimated = true; }
    }
    return { w, o, rate, eta, estimated, rank: attentionRank(w) };
  }

  function visible() {
    const q = filter.value.trim().toLowerCase();
    return items.filter((w) => (showDeleted.checked || !w.deleted)
      && (!nsSelect.value || w.namespace === nsSelect.value)
      && (!q || [w.namespace, w.name, w.phase || '', w.uid, `${w.namespace}/${w.name}`,
        ...(w.conditions || []).filter((c) => c.status === 'True').map((c) => c.type)]
        .some((s) => s.toLowerCase().includes(q))));
  }

  function render() {
    const namespaces = [...new Set(items.map((w) => w.namespace))].sort();
    const chosen = nsSelect.value || (firstRender ? wantNs : '');
    firstRender = false;
    nsSelect.replaceChildren(h('option', { value: '' }, 'All namespaces'),
      ...namespaces.map((ns) => h('option', { value: ns }, ns)));
    nsSelect.value = namespaces.includes(chosen) ? chosen : '';
    renderHead();
    const rows = visible().map(facts);
    const key = SORTS[sortBy].key;
    rows.sort((a, b) => (desc ? -1 : 1) * compareKeys(key(a), key(b)) || compareKeys(SORTS.name.key(a), SORTS.name.key(b)));
    current = rows;
    pendingOv = [];
    drawWindow(true);
    if (!rows.length) {
      tbody.replaceChildren(h('tr', {}, h('td', { colspan: String(headers.length), class: 'empty' },
        items.length ? 'No workload matches the filter.' : 'No workloads in the store yet.')));
    }
    table.setAttribute('aria-rowcount', String(rows.length + 1)); // the header row counts
    table.dataset.rows = String(rows.length);
    table.dataset.sort = `${sortBy}${desc ? ':desc' : ''}`;
    const hidden = items.length - rows.length;
    status.textContent = `${rows.length} workload${rows.length === 1 ? '' : 's'} shown`
      + `${hidden ? `, ${hidden} hidden by the filter` : ''}; updated ${new Date(loadedAt || now).toLocaleTimeString()}.`;
    updateCompare();
  }

  /** Put the rows in or near the viewport into the tbody, spacers for the rest; `force`: even if the slice is the
   * same (the rows changed). Heights are measured as rows are shown, so the spacers converge on the true sizes. */
  function drawWindow(force) {
    const n = current.length;
    const top = tbody.getBoundingClientRect().top + window.scrollY; // where the tbody starts on the page
    const from = window.scrollY - top - OVERSCAN_PX;
    const to = window.scrollY + window.innerHeight - top + OVERSCAN_PX;
    let y = 0;
    let first = n;
    let last = n;
    let topPad = 0;
    let i = 0;
    for (; i < n; i++) {
      const hh = heights.get(current[i].w.uid) ?? estimate;
      if (first === n && y + hh > from) { first = i; topPad = y; }
      if (y >= to) break;
      y += hh;
    }
    last = Math.max(first, i);
    for (; i < n; i++) y += heights.get(current[i].w.uid) ?? estimate;
    const bottomPad = y - topPad - sliceHeight(first, last);
    if (!force && win && win[0] === first && win[1] === last) return;
    const focused = tbody.contains(document.activeElement) ? document.activeElement : null;
    const now = Date.now();
    const trs = [];
    for (let k = first; k < last; k++) {
      const tr = row(current[k], now);
      tr.setAttribute('aria-rowindex', String(k + 2));
      trs.push(tr);
    }
    tbody.replaceChildren(...(topPad > 0 ? [spacer(topPad)] : []), ...trs, ...(bottomPad > 0.5 ? [spacer(bottomPad)] : []));
    win = [first, last];
    let measured = 0;
    for (const tr of trs) {
      const hh = tr.getBoundingClientRect().height;
      if (hh > 0) { heights.set(tr.dataset.uid, hh); measured += hh; }
    }
    if (measured && trs.length) estimate = measured / trs.length;
    for (const el of tbody.querySelectorAll('[data-since]')) {
      const text = `${el.dataset.prefix || ''}${age(Number(el.dataset.since), now)}`;
      if (el.textContent !== text) el.textContent = text;
    }
    // replaceChildren took the focused element out of the document for a moment, which drops focus: give it back
    // (the same element when its row is still shown, else the link of the row rebuilt for the same workload)
    if (focused && document.activeElement !== focused) {
      if (tbody.contains(focused)) focused.focus({ preventScroll: true });
      else {
        const uid = focused.closest('tr')?.dataset.uid;
        if (uid) tbody.querySelector(`tr[data-uid="${CSS.escape(uid)}"] a`)?.focus({ preventScroll: true });
      }
    }
    table.dataset.window = `${first}-${last}`;
  }

  function sliceHeight(first, last) {
    let y = 0;
    for (let k = first; k < last; k++) y += heights.get(current[k].w.uid) ?? estimate;
    return y;
  }

  function spacer(px) {
    const td = h('td', { colspan: String(headers.length) });
    td.style.height = `${px}px`;
    return h('tr', { class: 'spacer', 'aria-hidden': 'true' }, td);
  }

  function onScroll() {
    if (scrollQueued || stopped) return;
    scrollQueued = true;
    requestAnimationFrame(() => {
      scrollQueued = false;
      if (stopped || !current.length) return;
      drawWindow(false);
      flushOverview();
    });
  }
  window.addEventListener('scroll', onScroll, { passive: true });
  window.addEventListener('resize', onScroll, { passive: true });

  function row(r, now) {
    const { w, o } = r;
    // a row is rebuilt only when the workload's own facts changed; the overview's cells (ETA, pace, sparkline,
    // sources) are replaced in place when only they changed; ages are texts updated by render's [data-since] pass
    const stale = (o?.sources || []).map((x) => isStale(w, x, now));
    const base = JSON.stringify(w); // the compare checkbox keeps its own state
    const ov = JSON.stringify([o, r.eta, stale]);
    const cached = rowCache.get(w.uid);
    if (cached && cached.base === base) {
      if (cached.ov !== ov) pendingOv.push([cached, r, ov]); // filled by flushOverview, a chunk per task
      return cached.tr;
    }
    const tr = build(r, now);
    rowCache.set(w.uid, { base, ov, tr });
    return tr;
  }

  /** The cells that come from GET /overview and the pace: ETA, steps/s, primary metric + sparkline, sources. */
  function overviewCells({ w, o, rate, eta, estimated }, now) {
    const pm = w.primary_metric;
    return [
      h('td', { class: 'num' }, eta == null ? h('span', { class: 'muted' }, '–')
        : estimated ? h('span', { title: 'remaining steps at the recent pace (median of the newest 20 points)' }, `~${formatDuration(eta)}`)
          : formatDuration(eta)),
      h('td', { class: 'num' }, rate == null ? h('span', { class: 'muted' }, '–') : formatValue(Number(rate.toPrecision(3)))),
      h('td', { class: 'metric' }, pm ? [
        h('span', { class: 'metric-name' }, pm.name), ' ', h('span', { class: 'value' }, h('strong', {}, formatValue(pm.value)),
          h('span', { class: 'muted' }, ` @ ${pm.iteration}`)), ' ',
        o && o.points.length ? sparkline(o.points, `${pm.name} over ${o.points.length} points from step ${o.points[0][0]} `
          + `to ${o.points[o.points.length - 1][0]}`) : null]
        : h('span', { class: 'muted' }, '–')),
      h('td', {}, sourcesCell(w, o, now)),
    ];
  }

  function build(r, now) {
    const { w, rank } = r;
    const label = `${w.namespace}/${w.name}`;
    const pct = w.progress != null ? Math.min(1, Math.max(0, w.progress)) : null;
    const box = h('input', { type: 'checkbox', class: 'pick', value: w.uid, checked: sel.has(w.uid),
      'aria-label': `Select ${label} for comparison` });
    box.addEventListener('change', () => { if (box.checked) sel.add(w.uid); else sel.delete(w.uid); keepState(); });
    return h('tr', { dataset: { uid: w.uid, rank: String(rank) }, class: `${w.deleted ? 'deleted' : ''} rank-${rank}` },
      h('td', {}, box),
      h('th', { scope: 'row' }, h('span', { class: 'ns' }, `${w.namespace}/`),
        h('a', { href: `#/w/${encodeURIComponent(w.uid)}` }, w.name),
        w.deleted ? h('span', { class: 'badge' }, 'deleted') : null),
      h('td', {}, phaseBadge(w)),
      h('td', {}, healthCell(w)),
      h('td', { class: 'num' }, pct == null
        ? [h('span', { class: 'muted' }, w.step != null ? `step ${w.step}` : '–')]
        : h('span', { class: 'progress' },
          h('progress', { max: '1', value: String(pct), 'aria-label': `${label} progress` }),
          ` ${(pct * 100).toFixed(1)}%`, h('span', { class: 'steps' }, ` ${w.step ?? '–'} / ${w.total_steps}`))),
      ...overviewCells(r, now),
      h('td', { class: 'num', title: new Date(w.created_at).toLocaleString(), dataset: { since: String(w.created_at) } },
        age(w.created_at, now)));
  }

  function phaseBadge(w) {
    const phase = w.phase || (w.deleted ? 'Deleted' : null);
    if (!phase) return h('span', { class: 'muted', title: 'the phase is in the Workload status (kubectl get tsw)' }, 'n/a');
    return h('span', { class: `phase phase-${phase}` }, phase);
  }

  function healthCell(w) {
    if (!Array.isArray(w.conditions)) return h('span', { class: 'muted' }, 'n/a');
    const active = w.conditions.filter((c) => c.status === 'True' && c.type !== 'Ready' && c.type !== 'SourcesHealthy');
    if (!active.length) return h('span', { class: 'ok' }, 'OK');
    return h('ul', { class: 'conditions' }, ...active.map((c) =>
      h('li', { class: `condition condition-${c.type}`, title: c.message || c.reason || '' }, c.type)));
  }

  function isStale(w, s, now) {
    const finished = w.deleted || (w.total_steps && w.step >= w.total_steps) || ['Succeeded', 'Failed'].includes(w.phase);
    return !finished && now - s.newest_timestamp > STALE_MS;
  }

  function sourcesCell(w, o, now) {
    if (!o || !o.sources.length) return h('span', { class: 'muted' }, '–');
    return h('ul', { class: 'sources' }, ...o.sources.map((s) => {
      const stale = isStale(w, s, now);
      const name = seriesLabel({ data_source: s.data_source, source: s.source });
      return h('li', { class: stale ? 'stale' : '', title: `newest point ${new Date(s.newest_timestamp).toLocaleString()}` },
        h('span', { dataset: { since: String(s.newest_timestamp), prefix: `${name} ` } }, `${name} ${age(s.newest_timestamp, now)}`),
        stale ? visuallyHidden(' (no new point for over 10 minutes)') : null,
        stale ? h('span', { 'aria-hidden': 'true' }, ' \u26a0') : null);
    }));
  }

  /** Replace the pending rows' overview cells in place (cheaper than rebuilding their rows). Measured: doing it
   * in chunks of 100 rows per task did not make the first rows usable sooner, only the sparklines later. */
  function flushOverview() {
    const now = Date.now();
    for (const [entry, r, ov] of pendingOv) {
      overviewCells(r, now).forEach((td, j) => entry.tr.cells[OV_FIRST + j].replaceWith(td));
      entry.ov = ov;
    }
    pendingOv = [];
  }

  function show(t0) {
    render();
    flushOverview();
    table.dataset.renderMs = String(Math.round(performance.now() - t0));
  }

  /** The data changed (a poll or a stream event): draw it, and count the load (the tests and the bench wait on it). */
  function loaded(t0) {
    const known = new Set(items.map((w) => w.uid));
    for (const uid of rowCache.keys()) if (!known.has(uid)) rowCache.delete(uid);
    loadedAt = Date.now();
    show(t0);
    table.dataset.loads = String(Number(table.dataset.loads || 0) + 1);
  }

  function onStreamEvent(ev) {
    const t0 = performance.now();
    let body;
    try { body = JSON.parse(ev.data); } catch { return; }
    if (ev.type === 'fleet') {
      items = body.workloads;
      over = new Map(body.overview.map((o) => [o.uid, o]));
    } else if (ev.type === 'changes') {
      const gone = new Set(body.removed);
      const byUid = new Map(items.filter((w) => !gone.has(w.uid)).map((w) => [w.uid, w]));
      for (const w of body.workloads) byUid.set(w.uid, w);
      items = [...byUid.values()];
      for (const uid of gone) over.delete(uid);
      for (const o of body.overview) over.set(o.uid, o);
    } else return;
    table.dataset.streamEvents = String(Number(table.dataset.streamEvents || 0) + 1);
    loaded(t0);
  }

  function onStreamState(state) {
    live = state === 'open';
    table.dataset.live = state;
    liveNote.textContent = live ? 'live' : 'refreshes every 5 s';
    if (live) { clearTimeout(timer); timer = null; } else if (!timer && !stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  /** Follow the fleet over SSE once the first load is in; polling goes on whenever the stream is not open. */
  function startStream() {
    if (closeStream || stopped) return;
    closeStream = subscribe(api.apiUrl('overview/stream', { points: SPARK_POINTS, include_deleted: true }),
      { headers: api.authHeaders(), onEvent: onStreamEvent, onState: onStreamState });
  }

  async function refresh() {
    timer = null;
    try {
      // the list first (rows are usable at once), the sparklines and pace when the overview answers
      // never left rejected while the list is awaited: a 401 is thrown again below, anything else means no
      // sparklines or pace (an API without /overview)
      const ovRequest = api.overview(SPARK_POINTS).catch((err) => (err.status === 401 ? err : null));
      const body = await api.workloads();
      if (stopped) return;
      items = body.workloads;
      const known = new Set(items.map((w) => w.uid));
      for (const uid of rowCache.keys()) if (!known.has(uid)) rowCache.delete(uid);
      loadedAt = Date.now();
      const first = table.dataset.loads === undefined;
      if (first || !over.size) show(performance.now());
      if (first) table.dataset.firstRenderMs = table.dataset.renderMs;
      const ov = await ovRequest;
      if (stopped) return;
      if (ov instanceof Error) throw ov;
      if (ov) over = new Map(ov.workloads.map((o) => [o.uid, o]));
      loaded(performance.now());
      if (stopped) return;
      startStream();
      if (first) {
        // for bench/bench_dashboard.py: the first full list in the DOM, and the frame after it was painted
        performance.mark('trainscope:fleet-rendered');
        requestAnimationFrame(() => setTimeout(() => performance.mark('trainscope:fleet-painted'), 0));
      }
    } catch (err) {
      if (err.status === 401) { onAuthNeeded(); return; }
      status.textContent = `Could not load workloads: ${err.message}. Retrying.`;
    }
    if (!stopped && !live && !timer) timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
    if (closeStream) closeStream();
    window.removeEventListener('scroll', onScroll);
    window.removeEventListener('resize', onScroll);
  };
}
