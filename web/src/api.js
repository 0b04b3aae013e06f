// The Training Performance API, addressed relative to the page, so the dashboard works behind a path prefix.

const TOKEN_KEY = 'trainscope.token';

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lasts for this page only */ }
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** An absolute-path-free URL: `api/v1/...` with the given query (undefined/null/'' values left out). */
export function apiUrl(path, query = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  return `api/v1/${path}${qs ? `?${qs}` : ''}`;
}

export async function getJson(path, query = {}, { signal } = {}) {
  const res = await fetch(apiUrl(path, query), { headers: { Accept: 'application/json', ...authHeaders() }, signal });
  if (!res.ok) {
    let body = {};
    try { body = await res.json(); } catch { /* not JSON */ }
    throw new ApiError(res.status, body.code || 'Error', body.message || `HTTP ${res.status}`);
  }
  return res.json();
}

export const enc = encodeURIComponent;

export const workloads = (opts) => getJson('workloads', { include_deleted: true }, opts);
export const workload = (uid, opts) => getJson(`workloads/${enc(uid)}`, {}, opts);
export const available = (uid, opts) => getJson(`workloads/${enc(uid)}/metrics/available`, {}, opts);
export const data = (uid, query, opts) => getJson(`workloads/${enc(uid)}/metrics/data`, query, opts);
export const runs = (uid, opts) => getJson(`workloads/${enc(uid)}/runs`, {}, opts);
/** Every workload's primary-metric sparkline, recent steps/s and sources' newest points (GET /overview). */
export const overview = (points, opts) => getJson('overview', { points, include_deleted: true }, opts);

/**
 * Health events of a workload (`GET .../health/events`: items {type, status, reason, message, metric, iteration,
 * value, timestamp}). null when the route does not exist (an API older than the dashboard).
 */
export async function healthEvents(uid, opts) {
  try {
    const body = await getJson(`workloads/${enc(uid)}/health/events`, {}, opts);
    return Array.isArray(body.events) ? body.events : [];
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && err.code !== 'WorkloadNotFound') return null;
    throw err;
  }
}
