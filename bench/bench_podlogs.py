"""Pod-log reading for many pods: log reads and bytes per poll, the reading of today's main against the new one.

Run: python bench/bench_podlogs.py [--pods 1000 --rounds 6 --finished 0.1 --interval 10] [--utc-offset -05:00]

One in-process emulated API server (tests/kube.py: KMock + the kubelet-like pods/log) serves `--pods` training
pods, each printing Megatron iteration lines, one per second of (simulated) time, with a shared-timestamp burst
every round; after the second round a `--finished` fraction of the pods completes (container terminated,
phase Succeeded). Each round prints `--interval` seconds of lines into every log, then both readers poll the same
cluster state, in alternating order (ABAB, BABA): "main" is collector/sources/logs.py as it was before this
reader (loaded from git), "new" is the current LogsSource (podlogs.py). Both use the same KubeClient.

Per poll it counts the pods/log requests and log bytes the emulator served to that reader and the poll's wall
time; it prints medians, the reads per minute at `--interval` seconds between polls, and the load average. Before
printing it checks that each reader delivered every point of every pod exactly once (the oracle is the text
written); with `--utc-offset` (every node in that zone) main's reader is known to fail that check, which is then
printed instead. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TRAINSCOPE_STATUS_INTERVAL", "0.3")

import kopf  # noqa: E402

from trainscope.collector.points import Point  # noqa: E402
from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.logs import LogsSource  # noqa: E402
from trainscope.operator.kube import KubeClient  # noqa: E402

from kube import Cluster  # noqa: E402

BASE = "0b91242"  # main before the kubelet-faithful reader
T0 = 1_714_564_800.0


def old_logs_source() -> type:
    """LogsSource as it was on main at BASE (its own module, loaded from git)."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{BASE}:collector/sources/logs.py"], check=True,
                          capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "logs_main.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("logs_main", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LogsSource


def lines(first: int, last: int, at: float) -> tuple[str, list[float]]:
    """Megatron iteration lines `first`..`last`, one per second from `at`; the first three share a timestamp
    (printed in one burst), as the kubelet stamps a burst."""
    text = "".join(f" iteration {it:8d}/{100000:8d} | consumed samples: {it * 64:12d} | learning rate: "
                   f"{3e-4:.6E} | lm loss: {9.0 / it:.6E} | grad norm: {1 + 1 / it:.3f} |\n"
                   for it in range(first, last + 1))
    return text, [at + max(0, i - 2) for i in range(last - first + 1)]


class Reader:
    def __init__(self, name: str, cls: type, kube: KubeClient):
        self.name, self.cls, self.kube = name, cls, kube
        self.cursor: Any = None
        self.points: dict[tuple[str, str, int], int] = {}
        self.reads: list[int] = []
        self.bytes: list[int] = []
        self.wall: list[float] = []

    async def poll(self, cluster: Cluster) -> None:
        logs = cluster.emu.pod_logs
        reads, sent = logs.served, logs.bytes_served
        start = time.perf_counter()
        src = self.cls({"pods": {}, "format": "megatron"}, SourceContext(
            namespace="default", selector={"matchLabels": {"job": "gpt"}}, pods=self.kube))
        while True:
            batch = await src.poll(self.cursor)
            self.cursor = batch.cursor
            for p in map(Point._make, batch.points):
                key = (p.run, p.metric, p.step)
                self.points[key] = self.points.get(key, 0) + 1
            if not batch.more:
                break
        await src.aclose()
        self.wall.append(time.perf_counter() - start)
        self.reads.append(logs.served - reads)
        self.bytes.append(logs.bytes_served - sent)


async def main(args: argparse.Namespace) -> None:
    async with Cluster() as cluster:
        pods = [f"gpt-{i:04d}" for i in range(args.pods)]
        for pod in pods:
            await cluster.add_pod(pod, {"job": "gpt"}, utc_offset=args.utc_offset)
        kube = KubeClient(kopf.ConnectionInfo(server=cluster.url), read_timeout=300)
        readers = [Reader("main", old_logs_source(), kube), Reader("new", LogsSource, kube)]
        finished = set(pods[: int(len(pods) * args.finished)])
        per_round = int(args.interval)
        for rnd in range(args.rounds):
            first = rnd * per_round + 1
            for pod in pods:
                if pod in finished and rnd >= 2:
                    continue
                text, stamps = lines(first, first + per_round - 1, T0 + first)
                for line, ts in zip(text.splitlines(keepends=True), stamps, strict=True):
                    cluster.write_log(pod, line, at=ts)
            if rnd == 2:
                for pod in finished:
                    await cluster.finish_container(pod)
            order = readers if rnd % 2 == 0 else readers[::-1]
            for reader in order:
                await reader.poll(cluster)
            print(f"round {rnd}: " + ", ".join(f"{r.name} {r.reads[-1]} reads {r.bytes[-1] / 1e6:.2f} MB "
                                              f"{r.wall[-1]:.2f}s" for r in readers)
                  + f"  load {os.getloadavg()[0]:.2f}", flush=True)
        want = sum((2 if pod in finished else args.rounds) * per_round for pod in pods) * 4
        for r in readers:
            dup = sum(1 for n in r.points.values() if n > 1)
            verdict = f"{r.name}: {len(r.points)} distinct points of {want}, {dup} delivered more than once"
            if len(r.points) != want or dup:
                if r.name == "new" or args.utc_offset == "Z":
                    raise AssertionError(verdict)
                print("WRONG DATA " + verdict)
            else:
                print("checked " + verdict)
        await kube.aclose()

    print(f"\n{args.pods} pods on {args.utc_offset} nodes, {args.finished:.0%} finished after round 2, a poll every "
          f"{args.interval:g}s; "
          f"medians over rounds 3..{args.rounds - 1} (steady state), load average {os.getloadavg()}")
    print(f"{'reader':8s} {'reads/poll':>10s} {'reads/min':>10s} {'MB/poll':>9s} {'bytes/pod/poll':>15s} "
          f"{'poll s':>7s}")
    for r in readers:
        reads = statistics.median(r.reads[3:])
        sent = statistics.median(r.bytes[3:])
        wall = statistics.median(r.wall[3:])
        print(f"{r.name:8s} {reads:10.0f} {reads * 60 / args.interval:10.0f} {sent / 1e6:9.2f} "
              f"{sent / args.pods:15.0f} {wall:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--finished", type=float, default=0.1)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds of log per round = poll interval")
    parser.add_argument("--utc-offset", default="Z", help="the nodes' zone, e.g. +08:00 or -05:00")
    asyncio.run(main(parser.parse_args()))
