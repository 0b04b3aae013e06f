"""Pod logs as the kubelet really serves them, through the operator's KubeClient against the emulator (tests/kube.py):
node time zones, CRI partial records and a poll boundary inside them, CrashLoopBackOff, log rotation, and a token
rotated under a running operator. The oracle is the text the test printed, parsed line by line at each line's
kubelet time by the project's LogParser (what a perfect reader would deliver), compared point for point."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import kopf
import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.points import Point, RawPoint
from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.logparsers import LogParser
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.sources.podlogs import rfc3339
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.operator.kube import KubeClient
from trainscope.operator.kubeauth import load_credentials
from trainscope.operator.runtime import RuntimeConfig

from kube import Cluster, Operator, compare_points, db_points, eventually, operator_config, source_status
from test_logs_pods import check, drain, megatron
from waiting import eventually as until

T0 = 1_714_564_800.25  # 2024-05-01T12:00:00.25Z
TEXTS = Path(__file__).parent / "logtexts"
Oracle = dict[tuple[str, str, int], tuple[float, float]]


@pytest.fixture
async def kube(cluster: Cluster) -> Any:
    client = KubeClient(kopf.ConnectionInfo(server=cluster.url))
    yield client
    await client.aclose()


class Truth:
    """What each pod printed, parsed in order at each line's kubelet time by a LogParser of the same settings."""

    def __init__(self, fmt: str = "auto", logging_steps: int = 1):
        self.fmt, self.logging_steps = fmt, logging_steps
        self.parsers: dict[str, LogParser] = {}
        self.points: Oracle = {}

    def add(self, pod: str, written: list[tuple[float, bytes]]) -> None:
        parser = self.parsers.setdefault(pod, LogParser(self.fmt, logging_steps=self.logging_steps))
        out: list[RawPoint] = []
        for ts, line in written:
            parser.feed(line.decode().rstrip("\n"), ts, pod, out)
        for p in map(Point._make, out):
            self.points[(p.run, p.metric, p.step)] = (p.ts, p.value)


def source(kube: KubeClient, limit: int, fmt: str = "auto", **extra: Any) -> LogsSource:
    return LogsSource({"pods": {}, "format": fmt, **extra}, SourceContext(
        namespace="default", selector={"matchLabels": {"job": "gpt"}}, pods=kube, max_batch_points=limit))


# ---- node time zones -------------------------------------------------------------------------------------------------


async def test_nodes_in_plus_eight_and_minus_five_give_exact_points(cluster: Cluster, kube: KubeClient):
    """containerd stamps lines in the node's local time; on a +08:00 node a reader taking them for UTC read a few
    lines and then nothing for 8 hours, on a -05:00 node it read lines again."""
    await cluster.add_pod("gpt-0", {"job": "gpt"}, utc_offset="+08:00")
    await cluster.add_pod("gpt-1", {"job": "gpt"}, utc_offset="-05:00")
    cluster.emu.pod_logs.chunk = 97
    truth = Truth()
    cursor, points, at = None, [], T0
    for first in range(1, 121, 20):  # training goes on between polls; bursts share one timestamp
        for pod in ("gpt-0", "gpt-1"):
            truth.add(pod, cluster.write_log(pod, megatron(first, first + 9)[0], at=at, spacing=0))
            truth.add(pod, cluster.write_log(pod, megatron(first + 10, first + 19)[0], at=at + 0.5, spacing=0.07))
        at += 1.3
        cursor, _ = await drain(lambda: source(kube, 11), cursor, points, every=2)
    check(points, truth.points)
    raw = b"".join([c async for c in kube.stream_log("default", "gpt-0", None, follow=False)])
    assert raw.startswith(b"2024-05-01T20:00:00.250000000+08:00 ")  # what the emulator serves, as a kubelet would
    assert cursor["streams"]["gpt-0/trainer"]["s"] == cursor["streams"]["gpt-1/trainer"]["s"] == int(at - 1.3 + 0.5)


# ---- CRI partial records ---------------------------------------------------------------------------------------------


def tqdm_bar(first: int, last: int, total: int = 1875) -> str:
    """A tqdm bar's frames as tqdm writes them to a pipe: `\\r` + frame, no newline until the bar is closed."""
    return "".join(f"\r{100 * i // total:3d}%|{'#' * (10 * i // total):10s}| {i}/{total} [00:{i % 60:02d}<10:00,  "
                   f"1.50s/it]" for i in range(first, last + 1))


async def test_long_lines_and_a_tqdm_bar_in_partial_records_with_poll_boundaries_inside(cluster: Cluster,
                                                                                      kube: KubeClient):
    """A 40 KiB line and a tqdm bar (HF Trainer's, from a real LLaMA-Factory log) become CRI partial records; the
    bar is polled while its line is unfinished, its records span seconds, and a later answer starts with the rest of
    a line begun before sinceTime (no timestamp). Everything is read once, at the time of each line's first record."""
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    cluster.emu.pod_logs.chunk = 1000
    truth = Truth(logging_steps=10)
    real = (TEXTS / "hf_llamafactory.log").read_bytes().decode()  # bytes: read_text makes \r frames lines
    head, body = real.split("Number of trainable parameters = 20,185,088\n", 1)
    truth.add("gpt-0", cluster.write_log("gpt-0", head + "Number of trainable parameters = 20,185,088\n", at=T0))
    huge = "{'model_name_or_path': '/models/Qwen2-7B', 'note': '" + "x" * 40 * 1024 + "'}\n"  # 40 KiB: 3 records
    truth.add("gpt-0", cluster.write_log("gpt-0", huge, at=T0 + 0.5))
    points: list[Point] = []
    cursor, _ = await drain(lambda: source(kube, 7, loggingSteps=10), None, points)

    at = T0 + 1.0
    seconds: list[int] = []
    dicts = [line for line in body.splitlines() if line.startswith("{'loss'") or "{'loss'" in line]
    for n, text in enumerate(dicts[:12]):
        lo = n * 10 + 1
        # the bar grows in pieces; each piece may fill the runtime's 16 KiB buffer, stamped when it does
        for piece in range(4):
            assert not cluster.write_log("gpt-0", tqdm_bar(lo + piece * 150, lo + piece * 150 + 149), at=at)
            cursor, _ = await drain(lambda: source(kube, 5, loggingSteps=10), cursor, points, every=2)  # mid-line
            at += 0.45
        dict_text = text[text.index("{'loss'"):]
        # as in the real log: the bar is cleared (spaces between two \r) and the Trainer's dict printed over it
        # and, as tqdm.write does, the bar redrawn right after the dict: the frame that carries the dict's step
        truth.add("gpt-0", cluster.write_log("gpt-0", tqdm_bar(lo + 600, lo + 609) + "\r" + " " * 60 + "\r"
                                             + dict_text + "\n" + tqdm_bar(lo + 609, lo + 609), at=at))
        at += 0.3
        # a short line in the second where the long one ended: the next answer starts with that line's tail
        saved = cluster.write_log("gpt-0", f"\n[INFO|trainer.py:2400] step {lo} saved\n", at=at)
        truth.add("gpt-0", saved)
        seconds.append(int(saved[0][0]))
        cursor, _ = await drain(lambda: source(kube, 5, loggingSteps=10), cursor, points, every=2)
        at += 0.2
    check(points, truth.points)
    assert {m for (_, m, _) in truth.points} >= {"loss", "grad_norm", "learning_rate", "epoch"}
    entries = cluster.emu.pod_logs.instances("default", "gpt-0", "trainer")[-1].entries
    assert sum(not e.data.endswith(b"\n") for e in entries) >= 12  # partial records were written and served
    starts = []  # how the answers for those seconds begin: with the tail of the long line, in some of them
    for sec in seconds:
        answer = b"".join([c async for c in kube.stream_log("default", "gpt-0", None, follow=False,
                                                            since_time=rfc3339(sec))])
        starts.append(re.match(rb"\d{4}-\d\d-\d\dT", answer) is None)
    assert 0 < sum(starts) < len(starts), starts


# ---- CrashLoopBackOff ------------------------------------------------------------------------------------------------


async def test_crash_loop_with_three_restarts_reads_every_instance_once(cluster: Cluster, kube: KubeClient):
    """Each instance prints its own iterations, and a last line cut off by the crash; while the container waits in
    CrashLoopBackOff its current log is the dead instance. Polls fall while running, while waiting, or only after
    an instance both ran and died."""
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    cluster.emu.pod_logs.chunk = 211
    truth = Truth()
    cursor, points, at = None, [], T0

    async def poll() -> None:
        nonlocal cursor
        cursor, _ = await drain(lambda: source(kube, 13), cursor, points, every=2)

    for instance in range(4):
        first = instance * 100 + 1
        truth.add("gpt-0", cluster.write_log("gpt-0", megatron(first, first + 14)[0], at=at, spacing=0.05))
        if instance != 2:
            await poll()  # while it runs
        truth.add("gpt-0", cluster.write_log("gpt-0", megatron(first + 15, first + 29)[0], at=at + 1, spacing=0.05))
        cut = megatron(first + 30, first + 30)[0].rstrip("\n")  # printed without its newline, then the crash
        assert not cluster.write_log("gpt-0", cut, at=at + 2)
        if instance < 3:
            await cluster.crash_container("gpt-0", at=at + 2)
            truth.add("gpt-0", [(at + 2, cut.encode() + b"\n")])  # the runtime writes it out at the exit
            if instance != 1:
                await poll()  # while it waits: the current log is the dead instance
            await cluster.start_container("gpt-0")
        at += 10
    await poll()
    check(points, truth.points)
    steps = {s for (_, m, s) in truth.points if m == "lm loss"}
    assert steps == {i * 100 + k for i in range(3) for k in range(1, 32)} | set(range(301, 331))
    assert cursor["streams"]["gpt-0/trainer"]["r"] == 3
    (pod,) = await kube.list_pods("default", {"matchLabels": {"job": "gpt"}})
    assert pod.containers["trainer"] == 3 and pod.states["trainer"].waiting is None


async def test_a_finished_container_is_not_read_again(cluster: Cluster, kube: KubeClient):
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    truth = Truth()
    truth.add("gpt-0", cluster.write_log("gpt-0", megatron(1, 5)[0], at=T0))
    await cluster.crash_container("gpt-0", at=T0 + 1)
    points: list[Point] = []
    cursor, _ = await drain(lambda: source(kube, 100), None, points)
    served = cluster.emu.pod_logs.served
    batch = await source(kube, 100).poll(cursor)
    assert not batch.points and cluster.emu.pod_logs.served == served and batch.info["logReads"] == 0
    check(points, truth.points)


async def test_idle_polls_in_one_second_keep_the_count_and_a_repeated_line_loses_nothing(cluster: Cluster,
                                                                                          kube: KubeClient):
    """Bursts stamped with one time (a kubelet whose clock a restart pushed ahead, or a fast burst), polls in between
    that find nothing new, and a warning line printed again with the same text at the same time: the cursor counts
    each line of its second once (it grew by the second's lines on every idle poll, until the skip ran past the
    cursor's line and the repeated warning was taken for it, losing the iterations between)."""
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    warning = "[rank1]:[W501 12:00:00.000000000 ProcessGroupNCCL.cpp:4115] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1"
    truth = Truth()
    cursor: Any = None
    points: list[Point] = []
    for first in range(1, 41, 10):
        text = megatron(first, first + 9)[0].replace(f"iteration {first + 9} was slow", "x")
        text = re.sub(r"\[rank1\]:.*\n", warning + "\n", text)
        truth.add("gpt-0", cluster.write_log("gpt-0", text, at=T0, spacing=0))
        for _ in range(3):  # polls that find nothing new
            cursor, _ = await drain(lambda: source(kube, 1000), cursor, points)
        lines = sum(1 for line in text.splitlines() if line) * (first // 10 + 1)
        assert cursor["streams"]["gpt-0/trainer"]["k"] == lines  # every line of the second, once
    check(points, truth.points)
    assert len(points) == len(truth.points) == 4 * 40


# ---- rotation --------------------------------------------------------------------------------------------------------


async def test_rotation_records_a_gap_and_never_a_duplicate(cluster: Cluster, kube: KubeClient):
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    written = cluster.write_log("gpt-0", megatron(1, 40)[0], at=T0, spacing=0.05)
    first = await source(kube, 40).poll(None)  # the first 10 iterations (4 points each)
    read = {p.step for p in map(Point._make, first.points)}
    assert read == set(range(1, 11))
    cluster.rotate_log("gpt-0")  # iterations 11-40 go to a rotated file
    truth = Truth()
    tenth = next(i for i, (_, line) in enumerate(written) if re.search(rb"iteration +10/", line))
    truth.add("gpt-0", written[:tenth + 1])
    truth.add("gpt-0", cluster.write_log("gpt-0", megatron(41, 60)[0], at=T0 + 3, spacing=0.05))
    points = list(first.points)
    _, batches = await drain(lambda: source(kube, 40), json.loads(json.dumps(first.cursor)), points)
    check(points, truth.points)
    assert sum(b.skipped.get("lost_to_rotation", 0) for b in batches) == 1
    note = next(n for b in batches for n in b.notes if "rotated" in n)
    assert note.startswith("gpt-0/trainer: the log was rotated") and "2024-05-01T12:00:00.700" in note


async def test_rotation_shows_in_the_sources_health_with_the_real_store(cluster: Cluster, kube: KubeClient,
                                                                        store: Store, database_url: str):
    """Through a Collector and PostgreSQL: rotated after everything was read, then more lines: the gap is in the
    source's health (skipped.lost_to_rotation), every point is stored once."""
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    truth = Truth("megatron")
    truth.add("gpt-0", cluster.write_log("gpt-0", megatron(1, 30)[0], at=T0, spacing=0.05))
    spec = parse_spec({"selector": {"matchLabels": {"job": "gpt"}}, "pollInterval": "50ms",
                       "sources": [{"name": "log", "logs": {"pods": {}, "format": "megatron"}}]},
                      {"logs": LogsSource.schema})
    uid = str(uuid.uuid4())
    collector = Collector(uid, spec, store, name="gpt", pods=kube, registry={"logs": LogsSource},
                          max_batch_points=25, backoff_base=0.02, backoff_cap=0.1)
    await collector.start()
    try:
        await until(lambda: collector.snapshot().step == 30, describe=lambda: collector.snapshot().step)
        cluster.rotate_log("gpt-0")
        truth.add("gpt-0", cluster.write_log("gpt-0", megatron(31, 50)[0], at=T0 + 5, spacing=0.05))
        await until(lambda: collector.snapshot().step == 50, describe=lambda: collector.snapshot().step)
        health = collector.health["log"]
        assert health.skipped.get("lost_to_rotation") == 1 and not health.errors
        assert health.points == len(truth.points)  # each inserted once (a re-delivered point is an update)
        stored = await db_points(database_url, uid)
        compare_points(stored, {k: _scalar(v) for k, v in truth.points.items()}, "log")
    finally:
        await collector.stop()


def _scalar(v: tuple[float, float]) -> Any:
    from kube import Scalar

    return Scalar(v[0], v[1])


# ---- a token rotated under a running operator ------------------------------------------------------------------------


async def test_token_rotated_under_a_running_operator_fails_no_poll(cluster: Cluster, database_url: str,
                                                                   tmp_path: Path):
    """The operator reads pods and logs with a kubeconfig `tokenFile` (as a projected service-account token);
    the file is rewritten and the API server accepts only the new token from then on, twice: the collector's
    polls never fail, the Workload's points are all stored."""
    token_file = tmp_path / "token"
    cluster.require_token(token_file, "sa-token-1")
    config_file = tmp_path / "kubeconfig"
    config_file.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": cluster.url}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    config: RuntimeConfig = operator_config(database_url)
    config.kube_connection = await load_credentials(str(config_file))
    await cluster.add_pod("gpt-0", {"job": "gpt"})
    truth = Truth("megatron")
    truth.add("gpt-0", cluster.write_log("gpt-0", megatron(1, 20)[0], at=T0, spacing=0.1))
    op = await Operator(config).start()
    try:
        spec = {"selector": {"matchLabels": {"job": "gpt"}}, "pollInterval": "100ms",
                "sources": [{"name": "log", "logs": {"pods": {}, "format": "megatron"}}]}
        uid = (await cluster.create("gpt", spec))["metadata"]["uid"]

        async def stored(n: int) -> None:
            got = {k for k in await db_points(database_url, uid) if k[3] <= n}
            assert len(got) == 4 * n, f"{len(got)} points stored, want {4 * n}"

        await eventually(lambda: stored(20), within=20, what="iterations 1-20")
        for i, token in enumerate(("sa-token-2", "sa-token-3")):
            refused = cluster.emu.unauthorized
            cluster.rotate_token(token_file, token)
            last = 40 + 20 * i
            truth.add("gpt-0", cluster.write_log("gpt-0", megatron(last - 19, last)[0], at=T0 + 10 * (i + 1),
                                                 spacing=0.1))
            await eventually(lambda last=last: stored(last), within=20, what=f"iterations to {last}")
            assert cluster.emu.unauthorized > refused  # the old token was refused, then the new one was read
        compare_points(await db_points(database_url, uid), {k: _scalar(v) for k, v in truth.points.items()}, "log")
        health = op.runtime.entries[uid].collector.health["log"]
        assert not health.errors and health.consecutive_failures == 0, health.errors
        assert config.kube_connection.reloads >= 2
        obj = await cluster.workload("gpt")
        assert "lastError" not in source_status(obj, "log")
    finally:
        await op.stop()
