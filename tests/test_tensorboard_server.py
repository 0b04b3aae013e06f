"""TensorBoard source, url mode: against a real `tensorboard` server, and against tiny servers that misbehave."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboardX import SummaryWriter

from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.sources.tensorboard import TensorBoardSource

from rawhttp import free_port, http_response, raw_http_server, silent_server_error
from tbfixtures import (
    SPECIALS,
    OpenWriter,
    add_summary,
    drain,
    fetch_json,
    key,
    keys,
    tensor_summary,
    tensorboard_server,
    wait_for,
)

LONG_STEPS = 3000
SHORT_STEPS = 200


def url_source(url: str, max_points: int = 50_000, **config: Any) -> TensorBoardSource:
    return TensorBoardSource({"url": url, **config}, SourceContext(max_batch_points=max_points))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One TensorBoard server (default settings: fast loader, 1,000-point samples) for the whole module."""
    logdir = tmp_path_factory.mktemp("tb")
    with SummaryWriter(str(logdir)) as w:  # run "."
        for i in range(SHORT_STEPS):
            w.add_scalar("loss", SPECIALS[i % 3] if i % 50 == 7 else 1 / (i + 1) + 0.1, i)
            add_summary(w, tensor_summary("acc", "DT_FLOAT", i / 300), i)  # a new-style scalar tensor
    with SummaryWriter(str(logdir / "eval" / "b")) as w:
        for i in range(0, SHORT_STEPS, 10):
            w.add_scalar("eval/loss", 0.3 + i / 1e4, i)
    with SummaryWriter(str(logdir / "long")) as w:
        for i in range(LONG_STEPS):
            w.add_scalar("loss", 1 / (i + 1), i)
    with tensorboard_server(logdir) as url:
        def ready() -> bool:
            tags = fetch_json(f"{url}/data/plugin/scalars/tags")
            if set(tags) != {".", "eval/b", "long"} or set(tags["."]) != {"loss", "acc"}:
                return False
            long = fetch_json(f"{url}/data/plugin/scalars/scalars", run="long", tag="loss")
            return bool(long) and long[-1][1] == LONG_STEPS - 1
        wait_for(ready, what="TensorBoard to load the logdir")
        yield url, logdir


def _server_points(url: str) -> list[tuple]:
    out = []
    for run, tags in fetch_json(f"{url}/data/plugin/scalars/tags").items():
        for tag in tags:
            for wall, step, value in fetch_json(f"{url}/data/plugin/scalars/scalars", run=run, tag=tag):
                value = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value, value)
                out.append((tag, step, wall, value, run))
    return keys(out)


async def test_points_equal_the_server_and_the_files(served: tuple[str, Path]):
    url, logdir = served
    points, _, batches = await drain(url_source(url))
    assert keys(points) == _server_points(url)
    assert len(set(map(key, points))) == len(points)
    # Short runs are complete on the server, so url mode and logDir mode agree point for point. The server
    # keeps wall_time as a double and float32 values widened to doubles, so equality is exact, not approximate.
    files = TensorBoardSource({"logDir": str(logdir)}, SourceContext())
    file_points = (await files.poll(None)).points
    short = [k for k in keys(points) if k[0] in (".", "eval/b")]
    assert short == [k for k in keys(file_points) if k[0] in (".", "eval/b")]
    assert len(short) == 2 * SHORT_STEPS + SHORT_STEPS // 10
    by = {(p.run, p.metric, p.step): p.value for p in points}
    assert math.isnan(by[(".", "loss", 57)])
    assert by[(".", "loss", 7)] == math.inf and by[(".", "loss", 107)] == -math.inf
    assert batches[0].info["runs"] == [".", "eval/b", "long"]


async def test_long_run_is_detected_as_sampled(served: tuple[str, Path]):
    url, _ = served
    points, _, batches = await drain(url_source(url))
    long = sorted(p.step for p in points if p.run == "long")
    assert len(long) == 1000 and long[-1] == LONG_STEPS - 1  # the server's reservoir keeps the latest step
    assert batches[0].info["sampled_tags"] == 1
    (note,) = batches[0].notes
    assert "sampled for 1 tag" in note and "long/loss" in note and "--samples_per_plugin scalars=" in note


async def test_cursor_returns_only_newer_points(served: tuple[str, Path]):
    url, logdir = served
    src = url_source(url, tags={"include": ["late*"]})
    writer = OpenWriter(logdir / "late")
    try:
        for i in range(5):
            writer.add_scalar("late", float(i), i)
        writer.flush()
        wait_for(lambda: len(fetch_json(f"{url}/data/plugin/scalars/scalars", run="late", tag="late") or []) == 5,
                 what="the first 5 points")
        first, cursor, _ = await drain(src)
        assert [(p.run, p.step) for p in first] == [("late", i) for i in range(5)]
        assert (await drain(src, cursor))[0] == []
        for i in range(5, 12):
            writer.add_scalar("late", float(i), i)
        writer.flush()
        wait_for(lambda: len(fetch_json(f"{url}/data/plugin/scalars/scalars", run="late", tag="late")) == 12,
                 what="7 more points")
        second, cursor, _ = await drain(src, cursor)
        assert [p.step for p in second] == list(range(5, 12))
    finally:
        writer.close()


async def test_bounded_batches(served: tuple[str, Path]):
    url, _ = served
    src = url_source(url, max_points=150, tags={"exclude": ["late"]})
    points, _, batches = await drain(src)
    assert len(batches) > 5 and all(b.more for b in batches[:-1])
    assert keys(points) == [k for k in _server_points(url) if k[0] != "late"]
    assert len(set(map(key, points))) == len(points)


async def test_server_down_is_unreachable():
    port = free_port()  # bound then released: nothing listens there
    with pytest.raises(SourceError) as err:
        await url_source(f"http://127.0.0.1:{port}").poll(None)
    assert err.value.reason == "Unreachable" and f"127.0.0.1:{port}" in str(err.value)


TAGS = json.dumps({"run": {"loss": {"displayName": "", "description": ""}}})


@pytest.mark.parametrize(("tags_answer", "scalars_answer", "reason", "words"), [
    (http_response("<html>hi</html>", content_type="text/html"), None, "BadResponse", "not JSON"),
    (http_response("[1, 2]"), None, "BadResponse", "{run: {tag"),
    (http_response('{"run": [1]}'), None, "BadResponse", "{run: {tag"),
    (http_response("boom", status="500 INTERNAL SERVER ERROR"), None, "HttpError", "500"),
    (http_response("nope", status="404 NOT FOUND"), None, "HttpError", "is this a TensorBoard server"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", None, "BadResponse", "HTTP"),
    (http_response(TAGS), http_response('{"a": 1}'), "BadResponse", "'run' tag 'loss'"),
    (http_response(TAGS), http_response("[[1.0, 2]]"), "BadResponse", "[[wall_time, step, value]"),
    (http_response(TAGS), http_response('[[1.0, "x", 3.0]]'), "BadResponse", "[[wall_time, step, value]"),
    (http_response(TAGS), http_response('[[1.0, 2, "many"]]'), "BadResponse", "[[wall_time, step, value]"),
    (http_response(TAGS), http_response("busy", status="503 SERVICE UNAVAILABLE"), "HttpError", "503"),
])
async def test_misbehaving_server(tags_answer: bytes, scalars_answer: bytes | None, reason: str, words: str):
    async def handler(path: str) -> bytes:
        return tags_answer if path.startswith("/data/plugin/scalars/tags") else scalars_answer or b""

    async with raw_http_server(handler) as url:
        src = url_source(url)
        try:
            with pytest.raises(SourceError) as err:
                await src.poll(None)
        finally:
            await src.aclose()
    assert err.value.reason == reason and words in str(err.value), str(err.value)


async def test_bare_nan_and_vanished_tags_are_handled():
    async def handler(path: str) -> bytes:
        if path.startswith("/data/plugin/scalars/tags"):
            return http_response(json.dumps({"r": {"gone": {}, "loss": {}}}))
        if "tag=gone" in path:
            return http_response("Not found: No scalar data", status="404 NOT FOUND", content_type="text/plain")
        return http_response('[[10.5, 1, NaN], [11.5, 2, Infinity], [12.5, 3, -Infinity], [13.5, 4, "NaN"], '
                             '[14, 5, 2]]')

    async with raw_http_server(handler) as url:
        src = url_source(url)
        batch = await src.poll(None)
        await src.aclose()
    assert [key(p) for p in batch.points] == [("r", "loss", 1, 10.5, "nan"), ("r", "loss", 2, 11.5, math.inf),
                                              ("r", "loss", 3, 12.5, -math.inf), ("r", "loss", 4, 13.5, "nan"),
                                              ("r", "loss", 5, 14.0, 2.0)]
    assert batch.skipped == {"vanished": 1}


async def test_slow_server_times_out():
    err = await silent_server_error(lambda url: url_source(url, timeout="200ms"))
    assert err.reason == "Timeout" and "0.2s" in str(err)
