// Small helpers the views share: the smoothing weight from the URL, and saving text the page built as a file.
import { h } from './dom.js';

/** A smoothing weight from the URL or the slider: a number in [0, 0.999], else 0 (off). */
export function parseSmooth(value) {
  const w = Number(value);
  return Number.isFinite(w) ? Math.max(0, Math.min(0.999, w)) : 0;
}

/** Offer `text` as a download named `name` (the CSV of what a view shows). */
export function downloadText(name, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name, class: 'visually-hidden' }, name);
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
