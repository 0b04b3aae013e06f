"""The logs source on recorded real training runs (tests/data/logruns/, made by `make record-logs`), compared point
for point with each framework's own truth: parsed by format auto, then stored through the Collector in real
PostgreSQL, with the run's end, phase, step, progress and ETA as a user sees them."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import asyncpg
import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.points import RunState
from trainscope.collector.sources.logformats import LineSplitter, LogParser, decode_lines
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.operator.status import build_status

from kube import eventually

sys.path.insert(0, str(Path(__file__).parent / "data" / "logruns"))
import truth

# run -> (exact, wrong step, wrong value, missing: never printed, missing: printed, spurious). Every printed truth
# entry is exact except: hf5_buffered_pipe (stdout block-buffered in a pipe: the dicts come apart from the bar, so
# their step is unknown and they are skipped, counted as no_step); deepspeed_info_pipe's one spurious point is the
# engine's own `step=0, ..., lr=[0.0]` line (the warmup's start), which the loop's truth file does not hold.
FIGURES = {
    "deepspeed_default_pipe": (6, 0, 0, 0, 0, 0),
    "deepspeed_info_pipe": (12, 0, 0, 0, 0, 1),
    "hf4_pipe": (40, 0, 0, 0, 0, 0),
    "hf4_pty": (40, 0, 0, 0, 0, 0),
    "hf5_buffered_pipe": (5, 0, 0, 0, 35, 0),
    "hf5_crash_pipe": (12, 0, 0, 0, 0, 0),
    "hf5_pipe": (40, 0, 0, 0, 0, 0),
    "hf5_pty": (40, 0, 0, 0, 0, 0),
    "hf5_resume_pipe": (40, 0, 0, 0, 0, 0),
    "lightning_rich_pipe": (2, 0, 0, 25, 0, 0),
    "lightning_rich_pty": (17, 0, 0, 10, 0, 0),
    "lightning_tqdm_pipe": (27, 0, 0, 0, 0, 0),
    "lightning_tqdm_pty": (27, 0, 0, 0, 0, 0),
    "loop_epoch_pipe": (20, 0, 0, 0, 0, 0),
}
# how each run ends in its log, and the total steps the log gives
ENDS = {
    "hf5_crash_pipe": ("failed", "ValueError: synthetic failure at step 25: loss went bad"),
    "lightning_tqdm_pipe": ("finished", None), "lightning_tqdm_pty": ("finished", None),
    "lightning_rich_pipe": ("finished", None), "lightning_rich_pty": ("finished", None),
    "deepspeed_default_pipe": (None, None), "deepspeed_info_pipe": (None, None), "loop_epoch_pipe": (None, None),
}
TOTALS = {"hf4_pipe": 60, "hf4_pty": 60, "hf5_pipe": 60, "hf5_pty": 60, "hf5_resume_pipe": 60,
          "hf5_crash_pipe": 60, "lightning_rich_pipe": 24, "lightning_rich_pty": 24}


def parse(name: str, chunk: int = 4096) -> tuple[dict[tuple[str, int], float], LogParser]:
    """(metric, step) -> the last value, as the store keeps it, of a recorded console fed in chunks."""
    parser = LogParser("auto")
    splitter = LineSplitter()
    data = truth.console(name)
    out: list = []
    for i in range(0, len(data), chunk):
        for blob, _ in splitter.feed(data[i:i + chunk]):
            parser.feed_lines(decode_lines(blob), 0.0, "r", out, 1 << 30)
    for blob, _ in splitter.flush():
        parser.feed_lines(decode_lines(blob), 0.0, "r", out, 1 << 30)
    return {(m, s): v for m, s, _, v, _ in out}, parser


def figures(s: truth.Score) -> tuple[int, ...]:
    return s.exact, s.wrong_step, s.wrong_value, s.missing_never_printed, s.missing_printed, s.spurious


def test_every_recorded_run_has_figures():
    assert sorted(FIGURES) == truth.runs()


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_recorded_run_against_its_truth(name: str):
    got, parser = parse(name)
    score = truth.score(name, got)
    assert figures(score) == FIGURES[name], score.examples
    assert score.wrong_step == score.wrong_value == 0  # never a wrong step or value, whatever else
    end, message = ENDS.get(name, ("finished", "HF Trainer printed its train summary"))
    assert parser.end == end
    if message:
        assert parser.end_message == message
    assert parser.total_steps == TOTALS.get(name)
    if name.startswith("lightning"):
        assert parser.meta["epochs"] == 3 and parser.meta["batchesPerEpoch"] == 8
        assert parser.meta["precision"].startswith("3 decimals" if "rich" in name else "3 significant digits")
    if name == "hf5_buffered_pipe":
        assert parser.nostep == 6  # the dicts printed apart from the bar: skipped, counted, never misplaced


@pytest.mark.parametrize("chunk", [1, 7, 977])
def test_chunking_and_line_by_line_give_the_same_points(chunk: int):
    for name in ("hf5_pty", "lightning_rich_pty", "lightning_tqdm_pipe"):
        assert parse(name, chunk)[0] == parse(name)[0]


def test_parser_state_carries_a_pending_dict_across_a_restart():
    """A cursor saved between an HF dict and the bar frame that carries its step (another process takes over)."""
    data = truth.console("hf5_pty")
    lines = [line for blob, _ in LineSplitter().feed(data) for line in decode_lines(blob)]
    whole, _ = parse("hf5_pty")
    for cut in range(1, len(lines)):
        first = LogParser("auto")
        out: list = []
        first.feed_lines(lines[:cut], 0.0, "r", out, 1 << 30)
        second = LogParser("auto", state=first.state())
        second.feed_lines(lines[cut:], 0.0, "r", out, 1 << 30)
        assert {(m, s): v for m, s, _, v, _ in out} == whole, cut


# ---- through the Collector and the store ------------------------------------------------------------------------


async def stored(url: str, uid: str) -> dict[tuple[str, int], tuple[float, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value "
            "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    return {(r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


def logs_collector(store: Store, uid: str, path: Path) -> Collector:
    from trainscope.collector.sources import REGISTRY

    spec = parse_spec({"sources": [{"name": "log", "logs": {"path": str(path)}}], "pollInterval": "50ms"})
    return Collector(uid, spec, store, name="wl", registry=REGISTRY, max_batch_points=7, backoff_base=0.02,
                     backoff_cap=0.1)


@pytest.mark.parametrize("name", ["hf5_pty", "hf4_pipe", "lightning_tqdm_pty", "lightning_rich_pty",
                                  "deepspeed_info_pipe", "loop_epoch_pipe"])
async def test_stored_points_equal_the_truth_and_the_run_ends(name: str, store: Store, database_url: str,
                                                               tmp_path: Path):
    path = tmp_path / "console.log"
    shutil.copy(truth.HERE / name / "console.log", path)
    c = logs_collector(store, f"rec-{name}", path)
    await c.start()
    try:
        want, _ = parse(name)
        await eventually(lambda: _stored_is(database_url, f"rec-{name}", want), within=30,
                         what=f"{name} stored")  # batches of 7 points: a line's points are never split
        c.evaluate_health()
        snap = c.snapshot()
    finally:
        await c.stop()
    got = {k: v for k, (_, v) in (await stored(database_url, f"rec-{name}")).items()}
    assert figures(truth.score(name, got)) == FIGURES[name]
    status = build_status(snap, now=snap.taken_at)
    if ENDS.get(name, ("finished",))[0] == "finished":
        assert snap.run_state == RunState.FINISHED and status["phase"] == "Succeeded"
        assert snap.throughput is None and snap.eta_seconds == 0.0  # steps/s stops, nothing remains
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert (stalled["status"], stalled["reason"]) == ("False", "RunEnded")
        ended = next(c for c in status["conditions"] if c["type"] == "RunEnded")
        assert ended["status"] == "True" and ended["reason"] == "Succeeded"
    else:
        assert snap.run_state == RunState.RUNNING and status["phase"] == "Collecting"
    if name in TOTALS:
        assert status["totalSteps"] == TOTALS[name] and status["progress"] == 100.0
    runs = {r.run: r.info for r in await store.runs(f"rec-{name}")}
    assert runs["console.log"]["format"] in ("hf", "lightning", "deepspeed", "loop")
    if name.startswith("lightning"):  # epochs, batches per epoch and the bar's precision: the run's metadata
        assert runs["console.log"]["epochs"] == 3 and runs["console.log"]["batchesPerEpoch"] == 8
        assert "3 " in runs["console.log"]["precision"]


async def _stored_is(url: str, uid: str, want: dict[tuple[str, int], float]) -> None:
    got = {k: v for k, (_, v) in (await stored(url, uid)).items()}
    assert got.keys() == want.keys(), sorted(set(want) ^ set(got))[:5]


async def test_a_crash_fails_the_run_with_its_last_error_line(store: Store, database_url: str, tmp_path: Path):
    path = tmp_path / "console.log"
    shutil.copy(truth.HERE / "hf5_crash_pipe" / "console.log", path)
    c = logs_collector(store, "rec-crash", path)
    await c.start()
    try:
        await eventually(lambda: _run_state_is(c, RunState.FAILED), within=30, what="the crash seen")
        c.evaluate_health()
        snap = c.snapshot()
    finally:
        await c.stop()
    status = build_status(snap, now=snap.taken_at)
    assert status["phase"] == "Failed" and snap.throughput is None
    ended = next(c for c in status["conditions"] if c["type"] == "RunEnded")
    assert ended["reason"] == "Failed"
    assert "ValueError: synthetic failure at step 25: loss went bad" in ended["message"]
    assert status["step"] == 20 and status["totalSteps"] == 60  # the last logged step; never Stalled
    assert next(c for c in status["conditions"] if c["type"] == "Stalled")["status"] == "False"


async def _run_state_is(c: Collector, state: RunState) -> None:
    assert c.snapshot().run_state == state


async def test_a_killed_and_resumed_run_follows_the_resumed_branch(store: Store, database_url: str,
                                                                  tmp_path: Path):
    """The killed run's output, then the resumed run's, appended to the same file; the resumed run's points get
    an older ts (the file's mtime set back, as a node whose clock is behind): they replace the abandoned ones all
    the same, and step, Loss and progress follow the resumed branch while it re-logs steps below the highest."""
    console = truth.console("hf5_resume_pipe")
    history = truth.HERE / "hf5_resume_pipe"
    import json

    killed = json.loads((history / "log_history.part1.json").read_text())
    resumed = json.loads((history / "log_history.json").read_text())
    top = max(e["step"] for e in killed)
    # the resumed process's output starts with transformers' config warning, printed again after the kill; the
    # killed run's last bar line ends only there (its process died mid-line)
    cut = console.find(b"\n", console.find(b"[transformers] Model config", console.find(b"{'loss'"))) + 1
    assert 0 < cut < len(console)
    path = tmp_path / "console.log"
    path.write_bytes(console[:cut])
    os.utime(path, (2_000_000_000, 2_000_000_000))
    c = logs_collector(store, "rec-resume", path)
    await c.start()
    try:
        await eventually(lambda: _step_is(c, top), within=30, what="the killed run's last step")
        assert c.snapshot().latest["loss"].value == float(f"{killed_loss(killed, top):.4g}")
    finally:
        await c.stop()
    # the resumed run's output, stamped an hour earlier; a new collector takes up from the stored cursor
    await asyncio.to_thread(_append, path, console[cut:], 2_000_000_000 - 3600)
    first = min(e["step"] for e in resumed if "loss" in e and e["step"] > 30)
    c = logs_collector(store, "rec-resume", path)
    await c.start()
    try:
        await eventually(lambda: _run_state_is(c, RunState.FINISHED), within=30, what="the resumed run's end")
        snap = c.snapshot()
    finally:
        await c.stop()
    assert first < top  # the resumed run re-logged steps below the killed run's highest
    got = await stored(database_url, "rec-resume")
    for e in resumed:  # every resumed value stored, with the resumed run's (older) ts where it re-logged
        if "loss" in e:
            assert got["loss", e["step"]][1] == float(f"{e['loss']:.4g}")
    assert got["loss", first][0] == 2_000_000_000 - 3600
    assert snap.step == 60 and snap.latest["loss"].step == 60


def _append(path: Path, data: bytes, mtime: float) -> None:
    with open(path, "ab") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def killed_loss(history: list[dict], step: int) -> float:
    return next(e["loss"] for e in history if e["step"] == step and "loss" in e)


async def _step_is(c: Collector, step: int) -> None:
    assert c.snapshot().step == step
