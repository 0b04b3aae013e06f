"""A run's end as the logs source sees it (the framework's normal end, a traceback, the container's exit), a log
without any metric line (NoMetricLines), and hostile input: counted and skipped, never a wrong step.

End to end: kopf operator + KMock serving recorded real console output as a pod's log + real PostgreSQL; the
container's terminated state is set on the pod's status as the kubelet reports it (core/v1 ContainerStatus:
state.terminated.exitCode/reason/message)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

from trainscope.collector.points import RunState
from trainscope.collector.sources.base import ContainerState, SourceContext
from trainscope.collector.sources.logformats import LineSplitter, LogParser, decode_lines
from trainscope.collector.sources.logs import NO_METRIC_LINES, LogsSource, container_end, run_state

from kube import Cluster, Operator, condition, eventually, show, source_status

sys.path.insert(0, str(Path(__file__).parent / "data" / "logruns"))
import truth

T0 = 1_714_564_800.0


# ---- the end of a run, per stream ------------------------------------------------------------------------------


def test_container_exit_says_finished_or_failed():
    assert container_end(None, "p/c") is None
    assert container_end(ContainerState(restarts=0), "p/c") is None  # running
    assert container_end(ContainerState(exit_code=0, reason="Completed"), "p/c")[0] == "finished"
    state, why = container_end(ContainerState(exit_code=137, reason="OOMKilled", message="  "), "p/c")
    assert state == "failed" and why == "p/c: container terminated with exit code 137 (OOMKilled)"
    state, why = container_end(ContainerState(exit_code=1, reason="Error", message="CUDA error\n"), "p/c")
    assert why.endswith("(Error): CUDA error")
    assert container_end(ContainerState(waiting="CrashLoopBackOff", last_exit_code=1), "p/c")[0] == "failed"
    assert container_end(ContainerState(waiting="ContainerCreating"), "p/c") is None


def test_run_state_over_streams():
    data = {"p": {"P": 3}}
    fin = {"p": {"P": 3, "e": "finished", "em": "HF Trainer printed its train summary"}}
    bad = {"p": {"P": 3, "e": "failed", "em": "ValueError: boom"}}
    quiet = {"p": {"L": 40}}  # a rank that prints no metric line says nothing about the run
    assert run_state({}, {}) == (None, None)
    assert run_state({"a": quiet}, {}) == (None, None)
    assert run_state({"a": data, "b": quiet}, {})[0] == RunState.RUNNING
    assert run_state({"a": fin, "b": quiet}, {}) == (RunState.FINISHED, "HF Trainer printed its train summary")
    assert run_state({"a": fin, "b": data}, {})[0] == RunState.RUNNING  # rank b still prints
    assert run_state({"a": fin, "b": bad}, {}) == (RunState.FAILED, "b: ValueError: boom")
    # the container's exit overrides the log's view; a non-zero exit carries the log's last error line
    assert run_state({"a": bad}, {"a": ("finished", "a: exit 0")})[0] == RunState.FINISHED
    state, why = run_state({"a": bad}, {"a": ("failed", "a: container terminated with exit code 1 (Error)")})
    assert state == RunState.FAILED and why.endswith("; last error line: ValueError: boom")
    assert run_state({"a": quiet}, {"a": ("failed", "a: exit 2")}) == (RunState.FAILED, "a: exit 2")


def parser_on(text: str | bytes, **kw: Any) -> tuple[LogParser, list]:
    parser = LogParser("auto", **kw)
    out: list = []
    splitter = LineSplitter()
    data = text.encode() if isinstance(text, str) else text
    for blob, _ in [*splitter.feed(data), *splitter.flush()]:
        parser.feed_lines(decode_lines(blob), 0.0, "r", out, 1 << 30)
    return parser, out


def test_a_traceback_fails_the_stream_and_later_points_clear_it():
    tb = ("step 1: loss 2.5\nTraceback (most recent call last):\n  File \"train.py\", line 3, in <module>\n"
          "    main()\nDuring handling of the above exception, another exception occurred:\n\n"
          "Traceback (most recent call last):\n  File \"train.py\", line 9\n"
          "torch.OutOfMemoryError: CUDA out of memory.\n")
    parser, out = parser_on(tb)
    assert (parser.end, parser.end_message) == ("failed", "torch.OutOfMemoryError: CUDA out of memory.")
    assert [(p[0], p[1]) for p in out] == [("loss", 1)]
    again = LogParser("auto", state=parser.state())  # the run was resumed: its points say it runs again
    more: list = []
    again.feed("step 2: loss 2.4", 0.0, "r", more)
    assert again.end is None and more


# ---- NoMetricLines ------------------------------------------------------------------------------------------------


async def test_a_log_without_metric_lines_says_so(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"INFO epoch done, saving {i}\n" for i in range(20)))
    source = LogsSource({"path": str(log)}, SourceContext(base_dir=tmp_path))
    batch = await source.poll(None)
    assert batch.problem is None and not batch.points  # a job's start-up: not yet
    with log.open("a") as f:
        f.write("".join(f"INFO still nothing {i}\n" for i in range(NO_METRIC_LINES)))
    batch = await source.poll(batch.cursor)
    cursor = batch.cursor
    assert batch.problem == ("NoMetricLines", f"read {NO_METRIC_LINES + 20} lines, none matched a known format; "
                                              "set format or patterns")
    # a run that ended without a metric line says so at once
    short = tmp_path / "short.log"
    short.write_text("starting\nTraceback (most recent call last):\n  File \"x.py\"\nKeyError: 'lr'\n")
    batch = await LogsSource({"path": str(short)}, SourceContext(base_dir=tmp_path)).poll(None)
    assert batch.state == RunState.FAILED and batch.problem[0] == "NoMetricLines"
    assert batch.info["runEnd"] == "short.log: KeyError: 'lr'"
    # one data point and the problem is gone
    with log.open("a") as f:
        f.write("step 3: loss 1.0\n")
    batch = await source.poll(cursor)
    assert batch.problem is None and [(p[0], p[1]) for p in batch.points] == [("loss", 3)]


# ---- hostile input: counted and skipped, never a wrong step ----------------------------------------------------


def test_binary_garbage_gives_nothing_and_no_step():
    rnd = random.Random(21).randbytes(1 << 20)
    parser, out = parser_on(rnd + b"\n{'loss': '1.5', 'epoch': '0.1'}\n")
    assert parser.parsed == 1
    # the dict after the garbage: a log without a bar, so the running count (step 1), nothing from the garbage
    assert [(p[0], p[1]) for p in out] == [("loss", 1), ("epoch", 1)]


def test_a_100_mb_line_is_cut_and_counted_in_bounded_memory():
    splitter = LineSplitter()
    chunk = b"x" * (1 << 20)
    pieces = []
    for _ in range(100):
        pieces += splitter.feed(chunk)
        assert splitter.pending <= 1 << 20
    pieces += splitter.feed(b"\nstep 7: loss 0.5\n")
    assert splitter.cut == 1
    parser = LogParser("auto")
    out: list = []
    for blob, _ in pieces:
        parser.feed_lines(decode_lines(blob), 0.0, "r", out, 1 << 30)
    assert [(p[0], p[1], p[3]) for p in out] == [("loss", 7, 0.5)]


def test_ansi_only_frames_and_bars_without_dicts_give_no_point():
    frames = "".join(f"\r\x1b[2K\x1b[1A\x1b[2K\x1b[38;5;56m\x1b[0m\r{i:3d}%|#   | {i}/60 [00:0{i % 10}<00:10, 3.1it/s]"
                     for i in range(1, 30))
    parser, out = parser_on("\x1b[?25l\x1b[0m\r\n" + frames + "\n\x1b[?25h\n")
    assert out == [] and parser.failed == 0


def test_a_dict_apart_from_its_bar_is_skipped_not_misplaced():
    """A stream with a tqdm bar whose dict is not written by tqdm.write (no clear before it): its step is unknown."""
    text = ("\r 10%|#  | 6/60 [00:01<00:09, 6.0it/s]\r 17%|## | 10/60 [00:02<00:08, 6.0it/s]\n"
            "{'loss': '3.906', 'grad_norm': '0.826', 'learning_rate': '0.00425', 'epoch': '0.4167'}\n"
            "\r 33%|### | 20/60 [00:04<00:06, 6.0it/s]\n")
    parser, out = parser_on(text)
    assert out == [] and parser.nostep == 1
    # with loggingSteps set, the user's rule places it
    parser, out = parser_on(text, logging_steps=10)
    assert {(p[0], p[1]) for p in out} == {("loss", 10), ("grad_norm", 10), ("learning_rate", 10), ("epoch", 10)}


def test_an_invalid_user_regex_is_refused_at_validation_naming_the_field():
    import pytest

    from trainscope.collector.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as err:
        parse_spec({"sources": [{"name": "l", "logs": {"path": "x.log", "patterns": [
            "loss=(?P<loss>[0-9.]+)", "(unclosed"]}}]})
    assert str(err.value).startswith("spec.sources[0].logs.patterns[1]: pattern '(unclosed' is not a supported "
                                     "regex: missing )")
    with pytest.raises(SpecError) as err:
        parse_spec({"sources": [{"name": "l", "logs": {"path": "x.log", "filter": {"metricsFormat": ["(a)"]}}}]})
    assert str(err.value).startswith("spec.sources[0].logs.filter.metricsFormat[0]: metricsFormat '(a)' needs two")


# ---- end to end: the pod's container ends ------------------------------------------------------------------------


async def _terminate(cluster: Cluster, pod: str, code: int, reason: str) -> None:
    """The kubelet reports the container terminated (state.terminated), as in core/v1 ContainerStatus."""
    statuses = [{"name": "trainer", "restartCount": 0,
                 "state": {"terminated": {"exitCode": code, "reason": reason}}}]
    rsp = await cluster.emu.patch(f"/api/v1/namespaces/default/pods/{pod}",
                                  json={"status": {"phase": "Succeeded" if code == 0 else "Failed",
                                                   "containerStatuses": statuses}},
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert rsp.status == 200, await rsp.text()


async def test_pods_finished_and_crashed_runs_end_as_succeeded_and_failed(
        cluster: Cluster, operator: Operator, database_url: str) -> None:
    runs = {"hf-ok": ("hf5_pty", 0, "Completed"), "hf-crash": ("hf5_crash_pipe", 1, "Error")}
    for name, (rec, _, _) in runs.items():
        await cluster.add_pod(f"{name}-0", {"job": name})
        cluster.write_log(f"{name}-0", truth.console(rec), at=T0, spacing=0.01)
        spec = {"selector": {"matchLabels": {"job": name}}, "pollInterval": "200ms",
                "sources": [{"name": "log", "logs": {"pods": {}}}]}
        await cluster.create(name, spec)

    async def phase_is(name: str, phase: str, step: int) -> dict[str, Any]:
        obj = await cluster.workload(name)
        st = obj.get("status", {})
        assert st.get("phase") == phase and st.get("step") == step, show(obj)
        return obj

    # the HF run printed its summary: Succeeded from the log alone, before the container exits
    obj = await eventually(lambda: phase_is("hf-ok", "Succeeded", 60), within=30, what="hf-ok Succeeded")
    assert obj["status"]["totalSteps"] == 60 and obj["status"]["progress"] == 100.0
    assert obj["status"]["etaSeconds"] == 0 and "throughput" not in obj["status"]
    assert condition(obj, "RunEnded")["reason"] == "Succeeded"
    assert condition(obj, "Stalled")["status"] == "False"
    await _terminate(cluster, "hf-ok-0", 0, "Completed")
    # the crash: the traceback fails the run; the container's exit code joins the message
    obj = await eventually(lambda: phase_is("hf-crash", "Failed", 20), within=30, what="hf-crash Failed")
    assert "ValueError: synthetic failure at step 25: loss went bad" in condition(obj, "RunEnded")["message"]
    await _terminate(cluster, "hf-crash-0", 1, "Error")

    async def exit_reported() -> dict[str, Any]:
        obj = await cluster.workload("hf-crash")
        msg = condition(obj, "RunEnded")["message"]
        assert "exit code 1 (Error); last error line: ValueError: synthetic failure" in msg, show(obj)
        return obj

    obj = await eventually(exit_reported, within=30, what="the container's exit in the message")
    assert source_status(obj, "log")["state"] == "Healthy" and obj["status"]["phase"] == "Failed"
    obj = await eventually(lambda: phase_is("hf-ok", "Succeeded", 60), within=30, what="hf-ok still Succeeded")


async def test_no_metric_lines_shows_in_status(store, tmp_path: Path):
    from trainscope.collector.collector import Collector
    from trainscope.collector.sources import REGISTRY
    from trainscope.collector.spec import parse_spec
    from trainscope.operator.status import build_status

    log = tmp_path / "train.log"
    log.write_text("".join(f"[rank0] epoch {i} done, checkpoint saved to /ckpt/{i}\n" for i in range(600)))
    spec = parse_spec({"sources": [{"name": "log", "logs": {"path": str(log)}}], "pollInterval": "50ms"})
    c = Collector("no-metrics", spec, store, name="wl", registry=REGISTRY, backoff_base=0.02, backoff_cap=0.1)
    await c.start()
    try:
        async def flagged() -> None:
            assert c.snapshot().sources[0].state == "NoMetricLines"

        await eventually(flagged, within=30, what="NoMetricLines")
        snap = c.snapshot()
    finally:
        await c.stop()
    status = build_status(snap, now=snap.taken_at)
    src = source_status({"status": status}, "log")
    assert (src["state"], src["reason"]) == ("NoMetricLines", "NoMetricLines") and status["phase"] == "Degraded"
    assert src["lastError"] == "read 600 lines, none matched a known format; set format or patterns"
    assert condition({"status": status}, "SourcesHealthy")["reason"] == "NoMetricLines"
