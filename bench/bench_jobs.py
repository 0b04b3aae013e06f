"""Auto-discovery at scale: N annotated batch/v1 Jobs against today's N hand-written Workloads, in the same run.

Run: python bench/bench_jobs.py [--jobs 1000] [--duration 30] [--rounds 1]

Each round runs A (baseline: N Workloads created directly, as bench_scale.py does) then B (N Jobs annotated
`trainscope.io/collect: "true"` + `trainscope.io/tensorboard-logdir`, and `trainscope.io/template` naming a
ConfigMap that sets pollInterval 5s, with `trainscope operator --discover-jobs`), each from scratch: embedded
PostgreSQL, the KMock emulator in this process, the writer process of bench_scale.py (one TensorBoard point per
run per second) and the operator as its own process (CPU and RSS its own, psutil). Measured:

- object creation -> the Workload's first status patch (A: the Workload; B: the Job, so it includes discovery),
  p50/p95;
- B only: the Job's status set to Complete -> a status patch with phase Succeeded, p50/p95;
- operator CPU (cores) and peak RSS over a --duration window once every Workload shows a step.

Figures are printed with the 1-minute load average (the machine is shared), never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kmock
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TRAINSCOPE_STATUS_INTERVAL", "0.3")

from bench_scale import _prepare_pg, writer_main  # noqa: E402

from faults import CountingCluster, CountingEmulator, OperatorProcess  # noqa: E402


class TimingEmulator(CountingEmulator):
    """Counts as CountingEmulator does, and notes when each Workload got its first status and phase Succeeded."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_status: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}

    async def _handle(self, request: kmock.Request) -> Any:
        if request.subresource == "status" and request.action == kmock.action.UPDATE and request.name:
            now = time.monotonic()
            self.first_status.setdefault(request.name, now)
            if isinstance(request.data, dict) and (request.data.get("status") or {}).get("phase") == "Succeeded":
                self.succeeded.setdefault(request.name, now)
        return await super()._handle(request)


class TimingCluster(CountingCluster):
    def __init__(self) -> None:
        self.emu = TimingEmulator()
        self._server = kmock.Server(self.emu)


class DiscoveringOperator(OperatorProcess):
    """`trainscope operator` with extra command-line arguments."""

    def __init__(self, *args: Any, argv: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.argv = argv

    def start(self) -> DiscoveringOperator:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "trainscope.cli", "operator", *self.argv],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run(n: int, duration: float, discover: bool) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="ts-jobs-", dir="/tmp"))
    server, url = await _prepare_pg(base)
    stop = mp.Event()
    writer = mp.Process(target=writer_main, args=(str(base / "runs"), n, stop), daemon=True)
    writer.start()
    op = None
    try:
        async with TimingCluster() as cluster:
            emu: TimingEmulator = cluster.emu  # type: ignore[assignment]
            op = DiscoveringOperator(cluster.kubeconfig(base / "kubeconfig"), url, base / "operator.log",
                                     status_interval=5.0, argv=["--discover-jobs"] if discover else [])
            op.start()
            created: dict[str, float] = {}
            if discover:
                cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bench", "namespace": "default"},
                      "data": {"spec.yaml": "pollInterval: 5s\n"}}
                assert (await cluster.emu.post("/api/v1/namespaces/default/configmaps", json=cm)).status < 300
            for i in range(n):
                logdir = str(base / "runs" / f"w{i:04d}")
                if discover:
                    body = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                        "name": f"w{i:04d}", "namespace": "default",
                        "annotations": {"trainscope.io/collect": "true", "trainscope.io/template": "bench",
                                        "trainscope.io/tensorboard-logdir": logdir}},
                        "spec": {}, "status": {"active": 1}}
                    rsp = await cluster.emu.post("/apis/batch/v1/namespaces/default/jobs", json=body)
                    assert rsp.status < 300, await rsp.text()
                    created[f"w{i:04d}-job"] = time.monotonic()
                else:
                    await cluster.create(f"w{i:04d}", {"sources": [{"name": "tb", "tensorboard": {"logDir": logdir}}],
                                                       "pollInterval": "5s"})
                    created[f"w{i:04d}"] = time.monotonic()
            while len(emu.stepped) < n:
                assert op.alive(), op.tail()
                await asyncio.sleep(1.0)
            first = [emu.first_status[k] - t for k, t in created.items()]
            await asyncio.sleep(10.0)
            proc = psutil.Process(op.pid)
            rss: list[int] = []
            halt = threading.Event()

            def sample() -> None:
                while not halt.is_set():
                    rss.append(proc.memory_info().rss)
                    halt.wait(0.5)
            sampler = threading.Thread(target=sample, daemon=True)
            cpu0, t0 = op.cpu_seconds(), time.monotonic()
            sampler.start()
            await asyncio.sleep(duration)
            cpu = (op.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            halt.set()
            sampler.join()
            out = {"first_p50": pct(first, 50), "first_p95": pct(first, 95), "cpu": cpu, "rss_mb": max(rss) / 2**20}
            if discover:
                ended: dict[str, float] = {}
                for i in range(n):
                    rsp = await cluster.emu.patch(
                        f"/apis/batch/v1/namespaces/default/jobs/w{i:04d}",
                        json={"status": {"active": 0, "succeeded": 1, "conditions": [
                            {"type": "Complete", "status": "True", "reason": "CompletionsReached"}]}},
                        headers={"Content-Type": "application/merge-patch+json"})
                    assert rsp.status == 200, await rsp.text()
                    ended[f"w{i:04d}-job"] = time.monotonic()
                deadline = time.monotonic() + 300
                while len(emu.succeeded) < n and time.monotonic() < deadline:  # noqa: ASYNC110 (a bench's poll)
                    await asyncio.sleep(1.0)
                assert len(emu.succeeded) == n, f"{len(emu.succeeded)}/{n} Succeeded"
                end = [emu.succeeded[k] - t for k, t in ended.items()]
                out.update(end_p50=pct(end, 50), end_p95=pct(end, 95))
            out["load"] = os.getloadavg()[0]
            await asyncio.to_thread(op.stop)  # while the emulator still serves it
            return out
    finally:
        if op is not None:
            await asyncio.to_thread(op.stop)
        stop.set()
        writer.join(10)
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    print(f"cores: {psutil.cpu_count()}, N={args.jobs}, status interval 5s, pollInterval 5s, job interval 10s")
    print("| run | creation -> first status p50 / p95 s | job end -> Succeeded p50 / p95 s | operator CPU (cores) "
          "| operator RSS MB | load (1 min) |")
    print("|---|---:|---:|---:|---:|---:|")
    for _ in range(args.rounds):
        for discover in (False, True):
            r = asyncio.run(run(args.jobs, args.duration, discover))
            label = f"{args.jobs} annotated Jobs (--discover-jobs)" if discover else f"{args.jobs} Workloads"
            end = f"{r['end_p50']:.1f} / {r['end_p95']:.1f}" if discover else "-"
            print(f"| {label} | {r['first_p50']:.1f} / {r['first_p95']:.1f} | {end} | {r['cpu']:.2f} "
                  f"| {r['rss_mb']:.0f} | {r['load']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
