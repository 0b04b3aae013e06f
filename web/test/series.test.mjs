// Unit tests of the pure helpers (node --test; run by tests/test_dashboard_bundle.py).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { align, drawnCounts, etaSeconds, formatDuration, formatValue, groupSeries, orderedSeries, resolution,
  seriesLabel, stepRate, zoomRange } from '../src/series.js';
import { SseParser } from '../src/sse.js';

const item = (ds, step, v, extra = {}) => ({ metric_name: 'train/loss', value: v, timestamp: 1000 * step,
  iteration: step, data_source: ds, ...extra });

test('one line per data source, source and run; a re-sent step replaces the value', () => {
  const m = groupSeries([item('log', 1, 2), item('wandb', 1, 2.1, { run: 'r1' }), item('log', 2, 1.5),
    item('log', 2, 1.4), item('wandb', 1, 2.2, { run: 'r2' })]);
  const s = orderedSeries(m);
  assert.deepEqual(s.map(seriesLabel), ['log', 'wandb r1', 'wandb r2']);
  assert.equal(s[0].points.get(2).v, 1.4);
  assert.equal(seriesLabel({ data_source: 'tensorflow', source: 'tb', run: '.' }), 'tensorflow');
  assert.equal(seriesLabel({ data_source: 'tensorflow', source: 'eval-tb', run: 'seed1' }), 'tensorflow (eval-tb) seed1');
});

test('aligned data: missing steps span, non-finite values and log-scale non-positives are gaps', () => {
  const s = orderedSeries(groupSeries([item('log', 1, 1), item('log', 3, null), item('wandb', 2, 0), item('wandb', 3, 4)]));
  assert.deepEqual(align(s), [[1, 2, 3], [1, undefined, null], [undefined, 0, 4]]);
  assert.deepEqual(align(s, 'step', true), [[1, 2, 3], [1, undefined, null], [undefined, null, 4]]);
  assert.deepEqual(align(s, 'time')[0], [1, 2, 3]);
  assert.deepEqual(drawnCounts(s), [1, 2]);
  assert.deepEqual(drawnCounts(s, true), [1, 1]);
});

test('zoom arithmetic', () => {
  assert.deepEqual(zoomRange(null, [0, 100], 0.5), [25, 75]);
  assert.deepEqual(zoomRange([25, 75], [0, 100], 2), null); // back to everything
  assert.deepEqual(zoomRange([80, 100], [0, 100], 2), [60, 100]);
  assert.deepEqual(zoomRange([10, 11], [0, 100], 0.5), [9, 12]);
  assert.ok(resolution(600) >= 64 && resolution(1e9) === 4000);
});

test('pace, ETA and formats', () => {
  const pts = [0, 1, 2, 3, 4, 10].map((i) => ({ iteration: i + 1, timestamp: i * 60_000 }));
  assert.equal(stepRate(pts), 1 / 60);
  assert.equal(etaSeconds(120, 200, 1 / 60), 4800);
  assert.equal(etaSeconds(200, 200, null), 0);
  assert.equal(etaSeconds(10, null, 1), null);
  assert.equal(formatDuration(4800), '1h20m');
  assert.equal(formatDuration(45), '45s');
  assert.equal(formatDuration(3 * 86400 + 7200), '3d2h');
  assert.equal(formatValue(null), 'non-finite');
  assert.equal(formatValue(0.42451234), '0.42451');
  assert.equal(formatValue(3e-4), '3.000e-4');
});

test('SSE parser: events, ids, comments, chunks split anywhere, CRLF', () => {
  const text = 'retry: 2000\n\nid: 1:1:\nevent: subscribed\ndata: {"a":1}\n\n: keep-alive\n\n'
    + 'id: 5:5:\r\nevent: points\r\ndata: {"data":[1,\r\ndata: 2]}\r\n\r\n';
  for (const size of [1, 3, 7, text.length]) {
    const p = new SseParser();
    const events = [];
    for (let i = 0; i < text.length; i += size) events.push(...p.feed(text.slice(i, i + size)));
    assert.deepEqual(events, [{ type: 'subscribed', data: '{"a":1}', id: '1:1:' },
      { type: 'points', data: '{"data":[1,\n2]}', id: '5:5:' }]);
    assert.equal(p.retry, 2000);
  }
});

test("TensorBoard's debiased EMA: first value kept, bias removed, non-finite passed through, constant untouched", async () => {
  const { emaSmooth, envelope, metricGroups, plotData, toCsv } = await import('../src/series.js');
  const w = 0.6;
  const ys = [1, 3, null, 2];
  const out = emaSmooth(ys, w);
  // by hand: last1 = 0.4, debias 0.4 -> 1; last2 = 0.24 + 1.2 = 1.44, debias 1 - 0.36 = 0.64 -> 2.25; null stays;
  // last3 = 0.864 + 0.8 = 1.664, debias 1 - 0.216 = 0.784 -> 2.1224...
  assert.equal(out[0], 1);
  assert.ok(Math.abs(out[1] - 2.25) < 1e-12);
  assert.equal(out[2], null);
  assert.ok(Math.abs(out[3] - 1.664 / 0.784) < 1e-12);
  assert.deepEqual(emaSmooth([5, 5, 5], 0.9), [5, 5, 5]);
  assert.deepEqual(emaSmooth([1, 2], 0), [1, 2]);
  assert.deepEqual(envelope([1, 5, 2, null, 4]), { lo: [1, 1, 2, 2, 4], hi: [5, 5, 5, 4, 4] });
  assert.deepEqual([...metricGroups(['train/loss', 'eval/loss', 'lr', 'train/acc'])],
    [['eval', ['eval/loss']], ['', ['lr']], ['train', ['train/acc', 'train/loss']]]);
  const s = { key: 'k', data_source: 'log', source: '', run: '', points: new Map([[1, { t: 5000, v: 1 }], [2, { t: 7000, v: 3 }]]) };
  const pd = plotData([s], { xMode: 'relative', smooth: 0.6 });
  assert.deepEqual(pd.data, [[0, 2], [1, 3], [1, 2.25]]);
  assert.deepEqual(pd.layout.map((l) => l.role), ['raw', 'smooth']);
  assert.equal(toCsv(['a', 'b'], [['x,y', 'q"']]), 'a,b\r\n"x,y","q"""\r\n');
});
