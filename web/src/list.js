// The Workload list: namespace, name, phase, step / total, progress, primary metric, ETA, health; filterable,
// refreshed every few seconds (the API has no stream of workloads).
import * as api from './api.js';
import { h, visuallyHidden } from './dom.js';
import { etaSeconds, formatDuration, formatValue, stepRate } from './series.js';

const REFRESH_MS = 5000;

export function listView(root, { onAuthNeeded }) {
  let timer = null;
  let stopped = false;
  let items = [];
  const etaCache = new Map(); // uid -> {step, eta, estimated}

  const filter = h('input', { type: 'search', id: 'filter', placeholder: 'namespace, name or phase',
    autocomplete: 'off', 'aria-controls': 'workloads' });
  const nsSelect = h('select', { id: 'namespace' }, h('option', { value: '' }, 'All namespaces'));
  const showDeleted = h('input', { type: 'checkbox', id: 'show-deleted' });
  const status = h('p', { class: 'status', id: 'list-status', role: 'status' }, 'Loading workloads…');
  const tbody = h('tbody');
  const table = h('table', { id: 'workloads', class: 'workloads' },
    h('caption', {}, 'Workloads', h('span', { class: 'caption-note' }, ' (refreshes every 5 s)')),
    h('thead', {}, h('tr', {},
      ...['Namespace', 'Name', 'Phase', 'Step / total', 'Progress', 'Primary metric', 'ETA', 'Health']
        .map((t) => h('th', { scope: 'col' }, t)))),
    tbody);

  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  filter.value = params.get('q') || '';
  showDeleted.checked = params.get('deleted') === '1';

  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter workloads',
    onsubmit: (e) => e.preventDefault() },
  h('label', { for: 'filter' }, 'Filter'), filter,
  h('label', { for: 'namespace' }, 'Namespace'), nsSelect,
  h('label', { class: 'check' }, showDeleted, ' Show deleted'));

  root.replaceChildren(
    h('h1', { tabindex: '-1' }, 'Workloads'),
    form, status, h('div', { class: 'table-wrap' }, table));

  for (const el of [filter, nsSelect, showDeleted]) el.addEventListener('input', () => { render(); keepState(); });

  function keepState() {
    const q = new URLSearchParams();
    if (filter.value) q.set('q', filter.value);
    if (showDeleted.checked) q.set('deleted', '1');
    const hash = `#/${q.toString() ? `?${q}` : ''}`;
    if (location.hash !== hash) history.replaceState(null, '', hash);
  }

  function visible() {
    const q = filter.value.trim().toLowerCase();
    return items.filter((w) => (showDeleted.checked || !w.deleted)
      && (!nsSelect.value || w.namespace === nsSelect.value)
      && (!q || [w.namespace, w.name, w.phase || '', w.uid, `${w.namespace}/${w.name}`]
        .some((s) => s.toLowerCase().includes(q))));
  }

  function render() {
    const namespaces = [...new Set(items.map((w) => w.namespace))].sort();
    const chosen = nsSelect.value;
    nsSelect.replaceChildren(h('option', { value: '' }, 'All namespaces'),
      ...namespaces.map((ns) => h('option', { value: ns, selected: ns === chosen }, ns)));
    nsSelect.value = namespaces.includes(chosen) ? chosen : '';
    const rows = visible();
    const focused = tbody.contains(document.activeElement) ? document.activeElement.closest('tr')?.dataset.uid : null;
    tbody.replaceChildren(...rows.map(row));
    if (focused) tbody.querySelector(`tr[data-uid="${CSS.escape(focused)}"] a`)?.focus();
    if (!rows.length) {
      tbody.append(h('tr', {}, h('td', { colspan: '8', class: 'empty' },
        items.length ? 'No workload matches the filter.' : 'No workloads in the store yet.')));
    }
    table.dataset.rows = String(rows.length);
    const hidden = items.length - rows.length;
    status.textContent = `${rows.length} workload${rows.length === 1 ? '' : 's'} shown`
      + `${hidden ? `, ${hidden} hidden by the filter` : ''}; updated ${new Date().toLocaleTimeString()}.`;
  }

  function row(w) {
    const pct = w.progress != null ? Math.min(1, Math.max(0, w.progress)) : null;
    const pm = w.primary_metric;
    const eta = etaCache.get(w.uid);
    return h('tr', { dataset: { uid: w.uid }, class: w.deleted ? 'deleted' : '' },
      h('td', {}, w.namespace),
      h('th', { scope: 'row' }, h('a', { href: `#/w/${encodeURIComponent(w.uid)}` }, w.name),
        w.deleted ? h('span', { class: 'badge' }, 'deleted') : null),
      h('td', {}, phaseBadge(w)),
      h('td', { class: 'num' }, `${w.step ?? '–'}${w.total_steps ? ` / ${w.total_steps}` : ''}`),
      h('td', {}, pct == null ? h('span', { class: 'muted' }, 'unknown')
        : h('span', { class: 'progress' },
          h('progress', { max: '1', value: String(pct), 'aria-label': `${w.namespace}/${w.name} progress` }),
          ` ${(pct * 100).toFixed(1)}%`)),
      h('td', {}, pm ? [h('span', { class: 'metric-name' }, pm.name), ' ',
        h('strong', {}, formatValue(pm.value)), h('span', { class: 'muted' }, ` @ ${pm.iteration}`)]
        : h('span', { class: 'muted' }, '–')),
      h('td', { class: 'num' }, etaCell(w, eta)),
      h('td', {}, healthCell(w)));
  }

  function phaseBadge(w) {
    const phase = w.phase || (w.deleted ? 'Deleted' : null);
    if (!phase) return h('span', { class: 'muted', title: 'the phase is in the Workload status (kubectl get tsw)' }, 'n/a');
    return h('span', { class: `phase phase-${phase}` }, phase);
  }

  function etaCell(w, eta) {
    if (w.eta_seconds != null) return formatDuration(w.eta_seconds);
    if (!eta || eta.eta == null) return h('span', { class: 'muted' }, '–');
    return h('span', { title: 'estimated by the dashboard from the primary metric\'s recent steps' },
      `~${formatDuration(eta.eta)}`);
  }

  function healthCell(w) {
    if (!Array.isArray(w.conditions)) {
      return h('span', { class: 'muted', title: 'this API does not report health conditions per workload' },
        'n/a', visuallyHidden(' (not reported by the API)'));
    }
    const active = w.conditions.filter((c) => c.status === 'True' && c.type !== 'Ready' && c.type !== 'SourcesHealthy');
    if (!active.length) return h('span', { class: 'ok' }, 'OK');
    return h('ul', { class: 'conditions' }, ...active.map((c) =>
      h('li', { class: `condition condition-${c.type}`, title: c.message || c.reason || '' }, c.type)));
  }

  /** ETA when the API gives none: the primary metric's last points give the pace (one small request each). */
  async function estimateEtas(list) {
    const todo = list.filter((w) => !w.deleted && w.eta_seconds == null && w.total_steps && w.primary_metric
      && w.step != null && w.step < w.total_steps && etaCache.get(w.uid)?.step !== w.step).slice(0, 20);
    await Promise.all(todo.map(async (w) => {
      try {
        const body = await api.data(w.uid, { metrics: w.primary_metric.name,
          data_source: w.primary_metric.data_source, last: 20 });
        const rate = stepRate(body.data);
        etaCache.set(w.uid, { step: w.step, eta: etaSeconds(w.step, w.total_steps, rate) });
      } catch { /* the estimate is optional */ }
    }));
    for (const w of list) if (w.total_steps && w.step >= w.total_steps) etaCache.set(w.uid, { step: w.step, eta: 0 });
  }

  async function refresh() {
    try {
      const body = await api.workloads();
      items = [...body.workloads].sort((a, b) => a.namespace.localeCompare(b.namespace) || a.name.localeCompare(b.name));
      render();
      await estimateEtas(items);
      if (!stopped) render();
    } catch (err) {
      if (err.status === 401) { onAuthNeeded(); return; }
      status.textContent = `Could not load workloads: ${err.message}. Retrying.`;
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }

  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
