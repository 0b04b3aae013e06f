"""A fleet of Workloads in a real store, for the fleet view's tests and bench/bench_dashboard.py: N workloads in
10 namespaces, each with a train/loss series of 40 points at its own stride (so steps, progress and pace differ),
some with a raised health condition (Stalled every 50th, NonFiniteMetric every 100th), written through the store."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from trainscope.collector.health import Condition, HealthEvent
from trainscope.collector.points import Point
from trainscope.collector.store import Store

POINTS = 40
TOTAL = 1000


@dataclass(frozen=True, slots=True)
class FleetMember:
    uid: str
    namespace: str
    name: str
    stride: int  # steps between points: the last step is POINTS * stride
    seconds_per_step: float
    condition: str | None  # a raised health condition, if any

    @property
    def last_step(self) -> int:
        return POINTS * self.stride


def member(i: int) -> FleetMember:
    cond = "Stalled" if i % 50 == 7 else "NonFiniteMetric" if i % 100 == 3 else None
    return FleetMember(f"fleet-{i:04d}", f"team-{i % 10}", f"job-{i:04d}", 1 + i % 25, 0.5 + (i % 4) * 0.5, cond)


async def fill_fleet(url: str, n: int) -> list[FleetMember]:
    members = [member(i) for i in range(n)]
    t0 = time.time() - 3600
    store = await Store.open(url, min_size=1, max_size=4)
    try:
        for m in members:
            await store.register_workload(m.uid, m.namespace, m.name, {"primaryMetric": "train/loss",
                                                                        "totalSteps": TOTAL})
            pts = [Point("train/loss", k * m.stride, t0 + k * m.stride * m.seconds_per_step,
                         2.0 * math.exp(-k / 15) + 0.3 + 0.01 * (k % 3)) for k in range(1, POINTS + 1)]
            await store.write(m.uid, "tb", "tensorboard", pts, None)
            if m.condition:
                await store.add_health_events(m.uid, [HealthEvent(t0 + 3000, Condition(
                    m.condition, "True", "Test", f"{m.condition} for the fleet test", None, m.last_step, None))])
    finally:
        await store.close()
    return members


# Every row of the fleet table, in the table's order (aria-rowindex), read as a user sees them: scrolling the page a
# screen at a time, so that the windowed table puts each row in the DOM; also the most rows the DOM held at once.
# A table that is not windowed (the bench's baseline) gives the same answer in one step.
ALL_ROWS = """async () => {
  const frame = () => new Promise((r) => requestAnimationFrame(() => setTimeout(r, 0)));
  const rows = new Map();
  let maxDom = 0;
  window.scrollTo(0, 0);
  await frame(); await frame();
  for (let guard = 0; guard < 100000; guard++) {
    const trs = document.querySelectorAll('#workloads tbody tr[data-uid]');
    maxDom = Math.max(maxDom, trs.length);
    trs.forEach((r, i) => rows.has(r.dataset.uid) || rows.set(r.dataset.uid, {
      index: Number(r.getAttribute('aria-rowindex') || i + 2), uid: r.dataset.uid, rank: Number(r.dataset.rank),
      name: r.cells[1].textContent,
      progress: r.querySelector('progress') ? Number(r.querySelector('progress').value) : null,
      steps: r.querySelector('.steps')?.textContent.trim() ?? null,
      eta: r.cells[5].textContent, rate: r.cells[6].textContent,
      spark: r.querySelector('svg.spark path')?.getAttribute('d') ?? null}));
    const before = window.scrollY;
    window.scrollBy(0, window.innerHeight);
    await frame(); await frame();
    if (window.scrollY === before) break;
  }
  window.scrollTo(0, 0);
  await frame();
  return { rows: [...rows.values()].sort((a, b) => a.index - b.index), maxDom };
}"""
