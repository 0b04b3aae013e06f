// The dashboard's entry: a hash router (#/ the fleet, #/w/<uid>?... a workload, #/compare?... several workloads'
// metric), so the API's own paths stay free.
import './style.css';
import * as api from './api.js';
import { h } from './dom.js';
import { compareView } from './compare.js';
import { listView } from './list.js';
import { workloadView } from './workload.js';

const main = document.getElementById('main');
let unmount = null;

function authForm() {
  const input = h('input', { type: 'password', id: 'token', autocomplete: 'off', required: true });
  main.replaceChildren(
    h('h1', { tabindex: '-1' }, 'A token is needed'),
    h('p', {}, 'This API requires a bearer token (TRAINSCOPE_API_TOKEN). It is kept for this browser tab only.'),
    h('form', { class: 'token-form', onsubmit: (e) => { e.preventDefault(); api.setToken(input.value.trim()); route(); } },
      h('label', { for: 'token' }, 'Token'), input, h('button', { type: 'submit' }, 'Use token')));
  input.focus();
}

function onAuthNeeded() {
  if (unmount) { unmount(); unmount = null; }
  api.setToken('');
  authForm();
}

function route() {
  if (unmount) { unmount(); unmount = null; }
  const hash = location.hash.replace(/^#/, '') || '/';
  const [path, qs] = hash.split('?');
  const query = new URLSearchParams(qs || '');
  const m = path.match(/^\/w\/(.+)$/);
  if (m) {
    unmount = workloadView(main, decodeURIComponent(m[1]), query, { onAuthNeeded });
  } else if (path === '/compare') {
    document.title = 'Compare · trainscope';
    unmount = compareView(main, query, { onAuthNeeded });
  } else {
    document.title = 'Workloads · trainscope';
    unmount = listView(main, { onAuthNeeded });
  }
  main.querySelector('h1')?.focus({ preventScroll: true });
}

let lastPath = null;
window.addEventListener('hashchange', () => {
  // A view rewrites its own query (filters, zoom) with replaceState; only a new path is a new view.
  const path = (location.hash.replace(/^#/, '') || '/').split('?')[0];
  if (path !== lastPath) { lastPath = path; route(); }
});
lastPath = (location.hash.replace(/^#/, '') || '/').split('?')[0];
route();

// The skip link must not change the hash (the router owns it).
document.querySelector('.skip')?.addEventListener('click', (e) => {
  e.preventDefault();
  main.focus();
});
