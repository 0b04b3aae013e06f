"""The logs source in pod mode against the KMock emulator serving pods and pods/{name}/log over real HTTP (tiny
chunks, delays, kubelet timestamps, second-granular sinceTime), through the operator's KubeClient; and a Collector
restart mid-stream with the real store. The oracle is the text the test wrote, metric by metric."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import kopf
import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.points import Point
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.operator.kube import KubeClient

from kube import Cluster
from waiting import eventually

T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.25Z
Oracle = dict[tuple[str, str, int], tuple[float, float]]  # (run, metric, step) -> (ts, value)


@pytest.fixture
async def kube(cluster: Cluster) -> AsyncIterator[KubeClient]:
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url))
    yield client
    await client.aclose()


def megatron(first: int, last: int, total: int = 1000) -> tuple[str, dict[tuple[str, int], float]]:
    """Megatron iteration lines and what they say, computed apart from any parser."""
    lines, want = [], {}
    for it in range(first, last + 1):
        loss = math.nan if it % 37 == 0 else 9.0 / math.sqrt(it)
        lines.append(f" iteration {it:8d}/{total:8d} | consumed samples: {it * 64:12d} | learning rate: "
                     f"{3e-4 * it / total:.6E} | lm loss: {loss:.6E} | grad norm: {1 + 1 / it:.3f} |")
        want[("consumed samples", it)] = float(it * 64)
        want[("learning rate", it)] = float(f"{3e-4 * it / total:.6E}")
        want[("lm loss", it)] = float(f"{loss:.6E}")
        want[("grad norm", it)] = float(f"{1 + 1 / it:.3f}")
        if it % 10 == 0:
            lines.append(f"[rank1]:[W501 12:00:00 ProcessGroupNCCL.cpp:4115] Warning: iteration {it} was slow")
    return "\n".join(lines) + "\n", want


def expect(oracle: Oracle, run: str, written: list[tuple[float, bytes]], want: dict[tuple[str, int], float]) -> None:
    """Point the metrics of each written iteration line at that line's kubelet timestamp."""
    for ts, line in written:
        if b" iteration " in line and b"|" in line:
            it = int(line.split(b"/")[0].split()[-1])
            for (metric, step), value in want.items():
                if step == it:
                    oracle[(run, metric, step)] = (ts, value)


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def check(points: list[Point], oracle: Oracle) -> None:
    """The points equal the oracle exactly once each: no duplicate, none missing, values and timestamps right."""
    keys = [(p.run, p.metric, p.step) for p in map(Point._make, points)]
    dups = {k for k in keys if keys.count(k) > 1} if len(set(keys)) != len(keys) else set()
    assert not dups, f"delivered twice: {sorted(dups)[:5]}"
    got = {(p.run, p.metric, p.step): (p.ts, p.value) for p in map(Point._make, points)}
    assert got.keys() == oracle.keys(), (sorted(got.keys() - oracle.keys())[:5], sorted(oracle.keys() - got.keys())[:5])
    wrong = [k for k in oracle if not same_value(got[k][1], oracle[k][1]) or abs(got[k][0] - oracle[k][0]) > 1e-6]
    assert not wrong, [(k, got[k], oracle[k]) for k in wrong[:5]]


def source(kube: KubeClient, limit: int, **pods: Any) -> LogsSource:
    return LogsSource({"pods": pods, "format": "auto"}, SourceContext(
        namespace="default", selector={"matchLabels": {"job": "gpt"}}, pods=kube, max_batch_points=limit))


async def drain(make: Any, cursor: Any, points: list[Point], every: int = 3) -> tuple[Any, list[Any]]:
    """Poll until nothing new, with a fresh source (a restarted operator) every `every` polls and the cursor
    through JSON as the store keeps it; returns the last cursor and the batches."""
    batches = []
    src = make()
    for i in range(10_000):
        if i % every == every - 1:
            await src.aclose()
            src = make()
        batch = await src.poll(cursor)
        cursor = json.loads(json.dumps(batch.cursor))
        points += batch.points
        batches.append(batch)
        if not batch.more and not batch.points:
            break
    await src.aclose()
    return cursor, batches


async def test_resumes_exactly_across_restarts_with_shared_timestamps(cluster: Cluster, kube: KubeClient):
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    cluster.emu.pod_logs.chunk, cluster.emu.pod_logs.delay = 13, 0.0  # lines arrive split anywhere
    oracle: Oracle = {}
    at = T0
    for first in range(1, 121, 12):  # bursts: 12 iterations printed at one instant, bursts 0.4 s apart
        text, want = megatron(first, first + 11)
        expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=at, spacing=0), want)
        at += 0.4
    points: list[Point] = []
    cursor, batches = await drain(lambda: source(kube, 9), None, points)  # cuts fall inside shared timestamps
    check(points, oracle)
    assert all(len(b.points) <= 9 for b in batches) and sum(b.more for b in batches) > 10
    assert batches[-1].total_steps == 1000
    assert cursor["streams"]["gpt-0/trainer"]["s"] == int(at - 0.4)

    # training goes on: only the new lines are read, from the stored cursor
    text, want = megatron(121, 130)
    expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=at, spacing=0.05), want)
    new: list[Point] = []
    await drain(lambda: source(kube, 9), cursor, new)
    assert {p.step for p in map(Point._make, new)} == set(range(121, 131))
    check(points + new, oracle)


async def test_pods_come_and_go_restart_and_ranks(cluster: Cluster, kube: KubeClient):
    index = "batch.kubernetes.io/job-completion-index"
    await cluster.add_pod("gpt-0", {"job": "gpt", index: "0"})
    await cluster.add_pod("gpt-1", {"job": "gpt", index: "1"})
    await cluster.add_pod("gpt-2", {"job": "gpt", index: "2"}, phase="Pending")  # not started: skipped quietly
    await cluster.add_pod("other", {"job": "x"})
    oracle: Oracle = {}
    text, want = megatron(1, 20)
    expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=T0), want)
    text1, want1 = megatron(1, 5)
    expect(oracle, "gpt-1", cluster.write_log("gpt-1", text1, at=T0), want1)
    cluster.write_log("other", megatron(1, 3)[0], at=T0)  # not selected
    points: list[Point] = []
    cursor, batches = await drain(lambda: source(kube, 50), None, points)
    check(points, oracle)
    assert batches[0].info["pods"] == 3 and set().union(*(b.runs for b in batches)) == {"gpt-0", "gpt-1"}

    # gpt-0 prints more, crashes and is restarted before the next poll: the previous instance's tail is read,
    # then the new instance (resumed from a checkpoint, it re-logs iterations 16-20 later in time)
    text, want = megatron(21, 25)
    expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=T0 + 30), want)
    await cluster.restart_container("gpt-0")
    text, want = megatron(16, 30)
    expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=T0 + 30.5), want)  # same second as the crash
    # gpt-1 goes away, a new pod appears
    await cluster.delete_pod("gpt-1")
    await cluster.add_pod("gpt-3", {"job": "gpt", index: "3"})
    text3, want3 = megatron(1, 4)
    expect(oracle, "gpt-3", cluster.write_log("gpt-3", text3, at=T0 + 31), want3)
    new: list[Point] = []
    cursor, _ = await drain(lambda: source(kube, 50), cursor, new)
    latest = {(p.run, p.metric, p.step): p for p in map(Point._make, points + new)}  # a re-logged step: the newest wins
    check(list(latest.values()), oracle)
    assert [p.step for p in map(Point._make, new) if p.run == "gpt-0" and p.metric == "lm loss"] == \
        [*range(21, 26), *range(16, 31)]
    assert set(cursor["streams"]) == {"gpt-0/trainer", "gpt-2/trainer", "gpt-3/trainer"}  # gpt-1 left it
    assert cursor["streams"]["gpt-0/trainer"]["r"] == 1

    # ranks: only rank 0 is read
    rank0: list[Point] = []
    await drain(lambda: source(kube, 1000, ranks=[0]), None, rank0)
    assert {p.run for p in map(Point._make, rank0)} == {"gpt-0"}


async def test_container_choice_and_errors(cluster: Cluster, kube: KubeClient):
    await cluster.add_pod("multi", {"job": "gpt"}, containers=("sidecar", "trainer"))
    cluster.write_log("multi", "step=1 loss=0.5\n", at=T0, container="trainer")
    cluster.write_log("multi", "step=1 loss=9.0\n", at=T0, container="sidecar")
    batch = await source(kube, 100, container="trainer").poll(None)
    assert [(p.metric, p.value) for p in map(Point._make, batch.points)] == [("loss", 0.5)]
    batch = await source(kube, 100, container="nope").poll(None)
    assert not batch.points and "no container 'nope'" in batch.notes[0]

    with pytest.raises(SourceError) as err:
        await LogsSource({"pods": {}}, SourceContext(pods=kube)).poll(None)
    assert err.value.reason == "BadConfig" and "selector" in str(err.value)
    with pytest.raises(SourceError) as err:
        await LogsSource({"pods": {}}, SourceContext(selector={"matchLabels": {"a": "b"}})).poll(None)
    assert err.value.reason == "NoCluster"
    dead = KubeClient(kopf.ConnectionInfo(server="http://127.0.0.1:9"))
    try:
        with pytest.raises(SourceError) as err:
            await source(dead, 10).poll(None)
        assert err.value.reason == "Unreachable"
    finally:
        await dead.aclose()


async def test_follow_stream_of_the_emulator_ends_with_the_container(cluster: Cluster, kube: KubeClient):
    """The emulator's follow=true behaves as the kubelet's: lines as they come, end when the container stops."""
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    cluster.write_log("gpt-0", "a\nb\n", at=T0)
    got = b""
    async for chunk in kube.stream_log("default", "gpt-0", None, follow=True):
        got += chunk
        if got.count(b"\n") == 2:
            cluster.write_log("gpt-0", "c\n", at=T0 + 1.5)
        if got.count(b"\n") == 3:
            await cluster.restart_container("gpt-0")
    assert got.decode().splitlines() == ["2024-05-01T12:00:00.250000000Z a", "2024-05-01T12:00:00.251000000Z b",
                                         "2024-05-01T12:00:01.750000000Z c"]
    since = b""
    async for chunk in kube.stream_log("default", "gpt-0", None, follow=False, since_time="2024-05-01T12:00:01.9Z",
                                       previous=True):
        since += chunk
    assert since.decode().splitlines() == ["2024-05-01T12:00:01.750000000Z c"]  # sinceTime is whole seconds


# ---- a Collector restarted mid-stream, the real store ---------------------------------------------------------------


async def stored(url: str, uid: str) -> Oracle:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT s.run, s.metric, p.step, extract(epoch FROM p.ts)::float8 AS ts, p.value "
                                "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    return {(r["run"], r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


async def test_collector_restart_mid_stream_stores_each_metric_once(cluster: Cluster, kube: KubeClient,
                                                                   store: Store, database_url: str):
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    await cluster.add_pod("gpt-1", {"job": "gpt"})
    cluster.emu.pod_logs.chunk, cluster.emu.pod_logs.delay = 700, 0.0002
    oracle: Oracle = {}
    at = T0
    spec = parse_spec({"selector": {"matchLabels": {"job": "gpt"}}, "pollInterval": "50ms",
                       "sources": [{"name": "log", "logs": {"pods": {}, "format": "megatron"}}]},
                      {"logs": LogsSource.schema})
    uid = str(uuid.uuid4())

    def make() -> Collector:
        return Collector(uid, spec, store, name="gpt", pods=kube, registry={"logs": LogsSource}, max_batch_points=25,
                         backoff_base=0.02, backoff_cap=0.1)

    def write(first: int, last: int) -> None:
        nonlocal at
        for pod in ("gpt-0", "gpt-1"):
            text, want = megatron(first, last)
            expect(oracle, pod, cluster.write_log(pod, text, at=at, spacing=0.01), want)
        at += (last - first + 1) * 0.01

    write(1, 60)
    first = make()
    await first.start()
    write(61, 120)  # printed while it reads
    await eventually(lambda: first.snapshot().step is not None and first.snapshot().step >= 60)
    await first.stop()  # mid-stream: the batch in hand is committed with its cursor
    write(121, 200)
    second = make()
    await second.start()
    try:
        async def complete() -> bool:
            return (await stored(database_url, uid)).keys() == oracle.keys()
        await eventually(complete, describe=lambda: second.snapshot().step)
        db = await stored(database_url, uid)
        assert all(same_value(db[k][1], oracle[k][1]) and abs(db[k][0] - oracle[k][0]) < 2e-6 for k in oracle)
        snap = second.snapshot()
        assert snap.step == 200 and snap.total_steps == 1000 and snap.progress == pytest.approx(0.2)
        assert snap.primary_metric == "lm loss"
        # each point was inserted once over both runs (a re-delivered point would be an update, not counted)
        assert second.health["log"].points == len(oracle)
    finally:
        await second.stop()


async def test_catch_up_batches_come_as_columns_equal_to_the_tuple_path(cluster: Cluster, kube: KubeClient,
                                                                        monkeypatch: pytest.MonkeyPatch):
    from trainscope.collector.points import Columns
    from trainscope.collector.sources import logs as logs_module

    class Tuples(list):  # the tuple path: the parser puts no run of lines as columns into a plain list
        def result(self) -> list:
            return list(self)

    await cluster.add_pod("gpt-0", {"job": "gpt"})
    cluster.emu.pod_logs.chunk, cluster.emu.pod_logs.delay = 4096, 0.0
    oracle: Oracle = {}
    at = T0
    for first in range(1, 601, 100):  # bursts of 100 iterations, some sharing a timestamp
        text, want = megatron(first, first + 99)
        expect(oracle, "gpt-0", cluster.write_log("gpt-0", text, at=at, spacing=0.01), want)
        at += 2.0
    runs: dict[str, list[Any]] = {}
    real = logs_module.PointSink
    for name, sink in (("columns", real), ("tuples", Tuples), ("columns again", real)):
        monkeypatch.setattr(logs_module, "PointSink", sink)
        points: list[Point] = []
        _, batches = await drain(lambda: source(kube, 500), None, points)
        check(points, oracle)
        runs[name] = [([(m, s, t, "nan" if math.isnan(v) else v, r) for m, s, t, v, r in b.points], b.cursor, b.more,
                       b.skipped, b.total_steps, isinstance(b.points, Columns)) for b in batches]
    assert any(b[-1] for b in runs["columns"]) and not any(b[-1] for b in runs["tuples"])
    same = [[b[:-1] for b in runs[name]] for name in ("columns", "tuples", "columns again")]
    assert same[0] == same[1] == same[2]
