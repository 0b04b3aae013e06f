"""Batches as columns (collector/points.py `Columns`): every stage that takes them (metric filter, admission, the
Workload's latest values, step and pace, health, the writer) must end in exactly the state the same points as
tuples give, batch after batch, on the shapes sources produce (catch-up in step order, metric by metric, a resumed
run, a second run taking over, shuffled input, duplicates)."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from trainscope.collector.admit import admit
from trainscope.collector.batches import select, storable
from trainscope.collector.health import HealthMonitor, HealthSpec
from trainscope.collector.points import Columns, RawPoint
from trainscope.collector.seen import Seen
from trainscope.collector.spec import MetricFilter
from trainscope.collector.store import Store

T0 = 1_700_000_000.0
METRICS = ["loss", "lr", "grad_norm", "acc"]


def _catchup(rng: random.Random) -> list[RawPoint]:
    """Steps in order, every metric at each step (TensorBoard, a training log, W&B history)."""
    out: list[RawPoint] = []
    for s in range(rng.randint(50, 400)):
        for m in METRICS:
            out.append((m, s * 10, T0 + s * 0.5, rng.random() + (100 if rng.random() < 0.01 else 0), "r"))
    return out


def _by_metric(rng: random.Random) -> list[RawPoint]:
    """Each metric's steps in turn (SwanLab's files are read metric by metric)."""
    steps = rng.randint(50, 300)
    return [(m, s, T0 + s, rng.random(), "r") for m in METRICS for s in range(steps)]


def _resumed(rng: random.Random) -> list[RawPoint]:
    """A run that goes back to a checkpoint and re-logs steps, from a clock that is behind."""
    first, back = rng.randint(100, 300), rng.randint(10, 90)
    out = [(m, s, T0 + s, rng.random(), "r") for s in range(first) for m in METRICS]
    out += [(m, s, T0 + first + 100 + s, rng.random(), "r") for s in range(first - back, first + 200)
            for m in METRICS]
    return out


def _takeover(rng: random.Random) -> list[RawPoint]:
    """A second run (a replaced pod) starting below the first run's step, then both runs' points mixed."""
    out = [(m, s, T0 + s, rng.random(), "a") for s in range(200) for m in METRICS]
    out += [(m, s, T0 + 300 + s, rng.random(), "b") for s in range(150, 400) for m in METRICS]
    out += [(m, s, T0 + 700 + s, rng.random(), rng.choice("ab")) for s in range(400, 500) for m in METRICS]
    return out


def _shuffled(rng: random.Random) -> list[RawPoint]:
    out = _catchup(rng)
    rng.shuffle(out)
    return out


def _duplicates(rng: random.Random) -> list[RawPoint]:
    """Steps logged more than once, non-finite values, equal times."""
    out: list[RawPoint] = []
    for s in range(rng.randint(100, 300)):
        for m in METRICS:
            for _ in range(rng.choice((1, 1, 2))):
                out.append((m, s // 2, T0 + s // 3, rng.choice((rng.random(), math.nan, math.inf)), "r"))
    return out


SHAPES = [_catchup, _by_metric, _resumed, _takeover, _shuffled, _duplicates]


def _batches(points: list[RawPoint], rng: random.Random) -> list[list[RawPoint]]:
    out, i = [], 0
    while i < len(points):
        n = rng.choice((1, 7, 64, 300, 1000, 5000))
        out.append(points[i:i + n])
        i += n
    return out


def _columns(points: list[RawPoint]) -> Columns:
    cols = Columns.from_points(points)
    assert cols is not None
    return cols


def _state(seen: Seen) -> dict[str, Any]:
    rate = {k: (list(v) if hasattr(v, "maxlen") else v) for k, v in vars(seen.rate).items()}
    return {"latest": seen.latest, "step": seen.max_step, "step_ts": seen.max_step_ts, "primary": seen.primary,
            "rate": rate}


def _same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (a latest value may be NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("seed", range(8))
def test_columns_hold_the_same_points(shape: Any, seed: int) -> None:
    points = shape(random.Random(seed))
    cols = _columns(points)
    assert len(cols) == len(points)
    assert _same(cols.points(), points)
    assert _same(cols[len(points) // 2], points[len(points) // 2])
    half = cols[: len(points) // 3]
    assert isinstance(half, Columns) and _same(half.points(), points[: len(points) // 3])
    assert len(half.keys) == len({(p[4], p[0]) for p in points[: len(points) // 3]})  # only the series it holds


@pytest.mark.parametrize("shape", SHAPES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("seed", range(8))
def test_seen_takes_columns_as_it_takes_points(shape: Any, seed: int) -> None:
    rng = random.Random(seed)
    points = shape(rng)
    by_points, by_columns = Seen(), Seen()
    newest_p = newest_c = None
    for counts in (True, False) if seed % 4 == 0 else (True,):
        for batch in _batches(points, rng):
            newest_p = by_points.absorb("src", batch, counts, newest_p)
            newest_c = by_columns.absorb("src", _columns(batch), counts, newest_c)
            assert newest_p == newest_c
            assert _same(_state(by_columns), _state(by_points))
    assert by_points.max_step is not None


@pytest.mark.parametrize("shape", SHAPES, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("watch", [(), ("loss",), ("loss", "acc")], ids=["primary", "one", "two"])
@pytest.mark.parametrize("disagreement", [None, 0.1])
def test_health_takes_columns_as_it_takes_points(shape: Any, watch: tuple[str, ...],
                                                 disagreement: float | None) -> None:
    rng = random.Random(7)
    points = shape(rng)
    spec = HealthSpec(metrics=watch, spike_min_points=5, rising_span=40, disagreement_tolerance=disagreement)
    by_points, by_columns = HealthMonitor(spec), HealthMonitor(spec)
    for batch in _batches(points, rng):
        by_points.observe("src", batch, "loss")
        by_columns.observe("src", _columns(batch), "loss")
    assert by_points.watches and by_points.watches.keys() == by_columns.watches.keys()
    for key, watch_p in by_points.watches.items():
        watch_c = by_columns.watches[key]
        assert _same(list(watch_c.window), list(watch_p.window)) and watch_c.last_step == watch_p.last_step
        assert _same(watch_c.spike, watch_p.spike) and _same(watch_c.non_finite, watch_p.non_finite)
        assert watch_c.diverging == watch_p.diverging and _same(list(watch_c.rising), list(watch_p.rising))
    recent = [{k: list(v) for k, v in m._recent.items()} for m in (by_columns, by_points)]
    assert _same(*recent)


def test_filter_and_names_on_columns() -> None:
    points = [(m, s, T0 + s, float(s), run) for s in range(100) for m in ("loss", "eval/x\x00y", "lr")
              for run in ("a", "b\x00")]
    flt = MetricFilter.from_dict({"exclude": ["lr"]})
    by_points = storable(select(points, flt, {}))
    by_columns = storable(select(_columns(points), flt, {}))
    assert isinstance(by_columns, Columns)
    assert by_columns.points() == by_points
    assert {m for _, m in by_columns.keys} == {"loss", "eval/x\ufffdy"}  # only the series left, storable names
    assert {r for r, _ in by_columns.keys} == {"a", "b\ufffd"}


def test_admission_of_columns_fixes_what_it_fixes_for_points() -> None:
    """A clean batch passes as the same columns; a batch with an unusable time or an overlong name is admitted
    point by point, with the same outcome as the tuples."""
    clean = [("loss", s, T0 + s, 1.0, "r") for s in range(100)]
    cols = _columns(clean)
    assert admit(cols, T0).points is cols
    for bad in ([("loss", 50, math.nan, 1.0, "r")], [("loss", 50, -5.0, 1.0, "r")], [("x" * 2000, 50, T0, 1.0, "r")],
                [("loss", 50, 1e300, 1.0, "r")]):
        points = clean[:50] + bad + clean[50:]
        a, b = admit(points, T0 + 1000), admit(_columns(points), T0 + 1000)
        assert list(b.points) == list(a.points) and b.rejected == a.rejected and b.notes == a.notes


def test_points_that_columns_cannot_hold_stay_points() -> None:
    """A step beyond 64 bits or not an integer, or a value that is no number, keeps its batch point by point
    (where admission and the writer give each its reason); never truncated or rounded into a column."""
    ok = [("loss", s, T0 + s, 1.0, "r") for s in range(10)]
    assert Columns.from_points([*ok, ("loss", 2**63, T0, 1.0, "r")]) is None
    assert Columns.from_points([*ok, ("loss", 10.5, T0, 1.0, "r")]) is None  # type: ignore[list-item]
    assert Columns.from_points([*ok, ("loss", 11, T0, "high", "r")]) is None  # type: ignore[list-item]
    cols = _columns([*ok, ("loss", -(2**63), T0, 1, "r")])
    assert cols.points()[-1] == ("loss", -(2**63), T0, 1.0, "r")


def _rows_by(store_points: dict[Any, tuple[float, float]]) -> dict[Any, tuple[float, float | str]]:
    return {k: (ts, "NaN" if math.isnan(v) else v) for k, (ts, v) in store_points.items()}  # NaN equal to NaN


@pytest.mark.parametrize("shape", SHAPES, ids=lambda f: f.__name__.strip("_"))
async def test_the_writer_stores_columns_as_it_stores_points(store: Any, database_url: str, shape: Any) -> None:
    """Batch after batch (steps re-logged, duplicates in a batch, batches written twice as after a lost commit
    acknowledgement), the rows and the counts the writer returns are the same for columns and for tuples."""
    from test_store_write import stored_points

    rng = random.Random(3)
    points = shape(rng)
    batches = _batches(points, rng)
    batches += batches[: len(batches) // 2]  # written again: nothing new
    for i, batch in enumerate(batches):
        a = await store.write("by-points", "src", "tensorboard", batch, {"i": i})
        b = await store.write("by-columns", "src", "tensorboard", _columns(batch), {"i": i})
        assert (b.inserted, b.updated) == (a.inserted, a.updated), i
    stored = await stored_points(database_url, "by-columns")
    assert len(stored) == len({(p[4], p[0], p[1]) for p in points})
    assert _rows_by(stored) == _rows_by(await stored_points(database_url, "by-points"))


def test_batches_are_sized_by_memory() -> None:
    """A batch holds about --batch-mb of memory: the point count follows from what a point holds on its way, never
    below 1,000 points, and a given point cap still bounds it (tests, benches)."""
    from trainscope.collector.batches import POINT_BYTES, batch_points
    from trainscope.collector.collector import Collector
    from trainscope.collector.spec import parse_spec

    assert batch_points(32 << 20) == (32 << 20) // POINT_BYTES
    assert 100_000 < batch_points(32 << 20) < 120_000  # ~310 bytes a point
    assert batch_points(64 << 20) == 2 * batch_points(32 << 20)
    assert batch_points(1) == 1000
    assert batch_points(32 << 20, 7) == 7
    spec = parse_spec({"sources": [{"name": "a", "logs": {"path": "x.log"}}]})
    collector = Collector("uid", spec, None, max_batch_bytes=8 << 20)  # type: ignore[arg-type]
    assert collector._ctx.max_batch_points == (8 << 20) // POINT_BYTES


@pytest.mark.parametrize("seed", range(40))
def test_long_runs_of_a_series_judged_at_their_end_as_point_by_point(seed: int) -> None:
    """observe_many judges spikes of a long run of points only from its last band refreshes on: every field of
    the watch (window, band and its age, spike and calm, divergence) ends as feeding the points one by one, with
    spikes anywhere (the last points too), NaN/inf, re-logged steps and runs of every length."""
    from test_collector_batches import ReferenceWatch, loss_curve, watch_state

    from trainscope.collector.health import MetricWatch

    rng = random.Random(seed)
    spec = HealthSpec(spike_window=rng.choice((20, 50)), spike_clear_points=rng.choice((3, 10)),
                      rising_span=rng.choice((0, 40, 400)))
    fast, oracle = MetricWatch(spec), ReferenceWatch(spec)
    curve = loss_curve(rng, 6000)
    for _ in range(rng.randint(0, 5)):  # spikes in the last points of the run
        at = len(curve) - rng.randint(1, 15)
        curve[at] = (curve[at][0], curve[at][1] * 50)
    i = 0
    while i < len(curve):
        part = curve[i:i + rng.choice((5, 100, 300, 1000, 3000))]
        fast.observe_many(part)
        for step, value in part:
            oracle.observe(step, value)
        assert watch_state(fast) == watch_state(oracle)
        i += len(part)


async def test_rows_the_database_refuses_in_columns_are_isolated_as_in_tuples(store: Store, database_url: str) -> None:
    """Columns the database refuses in part (a NaN time its encoder rejects, a name beyond PostgreSQL's index row
    limit, both unchecked by admission here) are split like tuples: the rest and the cursor stored, those two
    quarantined, and what the collector then takes in as seen is exactly the stored rest."""
    import secrets

    from test_store_write import stored_points

    from trainscope.collector.batches import unrefused
    from trainscope.collector.store.quarantine import write_isolating

    long_name = secrets.token_hex(1400)
    good = [("loss", s, T0 + s, 1.0 / s, "") for s in range(1, 101)]
    batch = [*good[:30], ("loss", 500, math.nan, 0.5, ""), *good[30:70], (long_name, 7, T0, 7.0, ""), *good[70:]]
    cols = _columns(batch)
    outcome = await write_isolating(store, "cols", "tb", "tensorboard", cols, None, {"offset": 101}, None)
    assert (outcome.result.inserted, outcome.result.updated) == (100, 0)
    assert {(p[0][:8], p[1]) for p, _ in outcome.rejected} == {("loss", 500), (long_name[:8], 7)}
    assert await store.load_cursor("cols", "tb") == {"offset": 101}
    want = {("tb", "", "loss", s): (T0 + s, 1.0 / s) for s in range(1, 101)}
    assert await stored_points(database_url, "cols") == want
    assert unrefused(cols, outcome) == good
