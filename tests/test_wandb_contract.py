"""The fake W&B server proved against the real `wandb` SDK (0.31, its wandb-core helper doing the HTTP).

The SDK lists runs with filters, order and pagination, and scans history (complete rows and key-filtered rows)
from the fake; what it reads must equal the fake's data, and the trainscope source must read the same runs and
exactly the points of the rows the SDK read. Real sockets on 127.0.0.1 throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.points import Point
from trainscope.collector.sources import SourceContext
from trainscope.collector.sources.wandb import WandbSource

from fakes.wandb_server import FakeWandb, grow, matches, row_points, serve, training_run

KEY = "x" * 40  # the SDK insists on 40+ characters of [A-Za-z0-9_]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeWandb, Any]]:
    home = tmp_path_factory.mktemp("wandb")
    fake = FakeWandb(api_keys=(KEY,))
    fake.add_run("ent", "proj", training_run("live", 2300, display_name="llama-7b-sft",
                                             config={"experiment_name": "foo", "lr": 3e-4, "max_steps": 5000}))
    fake.add_run("ent", "proj", training_run("crash", 120, display_name="llama-7b-sft-try1", state="crashed",
                                             config={"experiment_name": "foo"}, created_at=1_699_999_000.0))
    fake.add_run("ent", "proj", training_run("base", 40, display_name="gpt2-base", state="finished",
                                             config={"experiment_name": "bar", "lr": 1e-3},
                                             created_at=1_699_998_000.0, tags=["baseline"]))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
            mp.setenv(var, str(Path(home) / var.lower()))
        mp.setenv("WANDB_SILENT", "true")
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.delenv("WANDB_BASE_URL", raising=False)
        import wandb

        with serve(fake):
            api = wandb.Api(overrides={"base_url": fake.url}, api_key=KEY, timeout=30)
            yield fake, api
            wandb.teardown()  # the SDK's service and its threads go too (they would run on into later tests)


def _numbers_as_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _numbers_as_floats(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def canon(rows: list[dict[str, Any]]) -> list[str]:
    """Rows as canonical JSON text: numbers compared as values (wandb-core re-encodes 0.0 as 0), NaN/Infinity
    written the same way on both sides."""
    return [json.dumps(_numbers_as_floats(r), sort_keys=True) for r in rows]


def sdk_rows(api: Any, path: str, **kwargs: Any) -> list[dict[str, Any]]:
    api.flush()  # the SDK caches runs; read what the server has now
    return list(api.run(path).scan_history(use_cache=False, **kwargs))


async def source_read(fake: FakeWandb, cursor: Any = None, **config: Any) -> tuple[Any, list]:
    src = WandbSource({"baseUrl": fake.url, "entity": "ent", "project": "proj", "apiKeySecretRef":
                       {"name": "wandb", "key": "apiKey"}, **config},
                      SourceContext(max_batch_points=5000, resolve_secret=_resolve))
    batches = []
    try:
        while True:
            batch = await src.poll(cursor)
            cursor = json.loads(json.dumps(batch.cursor))
            batches.append(batch)
            if not batch.more:
                return cursor, batches
    finally:
        await src.aclose()


async def _resolve(ref: dict[str, str]) -> str:
    assert ref == {"name": "wandb", "key": "apiKey"}
    return KEY


FILTERS = [
    {},
    {"config.experiment_name": "foo"},
    {"$or": [{"display_name": {"$regex": "^gpt"}}, {"state": "crashed"}]},
    {"state": {"$in": ["running", "finished"]}, "config.lr": {"$lt": 5e-4}},
    {"$and": [{"tags": "baseline"}, {"config.max_steps": {"$exists": False}}]},
    {"$nor": [{"state": "crashed"}], "displayName": {"$ne": "gpt2-base"}},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[json.dumps(f) for f in FILTERS])
async def test_sdk_and_source_list_the_same_runs_as_the_filter_selects(served: tuple[FakeWandb, Any], flt: dict):
    fake, api = served
    expected = [r.name for r in sorted(fake.runs_of("ent", "proj"), key=lambda r: r.created_at) if matches(r, flt)]
    api.flush()
    assert [r.id for r in api.runs("ent/proj", filters=flt, per_page=2)] == expected  # 2 per page: pagination
    _, batches = await source_read(fake, filters=flt, keys={"include": ["lr"]})
    assert list(batches[0].runs) == expected
    descending = [r.id for r in api.runs("ent/proj", filters=flt, order="-created_at")]
    _, batches = await source_read(fake, filters=flt, order="-created_at", keys={"include": ["lr"]})
    assert descending == expected[::-1] == list(batches[0].runs)


async def test_sdk_reads_exactly_the_fakes_rows_and_the_source_stores_exactly_their_points(
        served: tuple[FakeWandb, Any]):
    fake, api = served
    live = fake.runs_of("ent", "proj")[0]
    rows = sdk_rows(api, "ent/proj/live")
    assert canon(rows) == canon(live.rows)  # complete rows: sparse keys, nested dicts, NaN, ±Infinity, media
    assert api.run("ent/proj/live").state == "running"
    assert api.run("ent/proj/live").config["max_steps"] == 5000
    cursor, batches = await source_read(fake, runId="live")
    points = [Point._make(p) for b in batches for p in b.points]
    expected = [p for row in rows for p in row_points(row, "live")]
    assert canon([dict(zip("msTvr", p, strict=True)) for p in sorted(points, key=lambda p: (p.step, p.metric))]) \
        == canon([dict(zip("msTvr", p, strict=True)) for p in sorted(expected, key=lambda p: (p[1], p[0]))])
    # after growth both read the new rows, the source only from its stored step + 1
    grow(live, 700)
    new_rows = sdk_rows(api, "ent/proj/live", min_step=2300)
    assert canon(new_rows) == canon([r for r in live.rows if r["_step"] >= 2300])
    _, more = await source_read(fake, cursor, runId="live")
    new_points = sorted((p for b in more for p in b.points), key=lambda p: (p[1], p[0]))
    assert canon([dict(zip("msTvr", p, strict=True)) for p in new_points]) == canon(
        [dict(zip("msTvr", p, strict=True)) for p in sorted((p for row in new_rows for p in row_points(row, "live")),
                                                             key=lambda p: (p[1], p[0]))])


async def test_sdk_key_filtered_scan_matches_the_fake(served: tuple[FakeWandb, Any]):
    """SampledHistoryPage: only the requested keys, and rows lacking any of them are left out (AND)."""
    fake, api = served
    base = fake.runs_of("ent", "proj")[2]
    rows = sdk_rows(api, "ent/proj/base", keys=["lr", "eval"])
    assert canon(rows) == canon([{"_step": r["_step"], "lr": r["lr"], "eval": r["eval"]}
                                 for r in base.rows if "eval" in r])
    assert len(rows) == 1  # step 0 only: eval is logged every 50 steps


async def test_sdk_reads_an_exported_run_from_the_fakes_parquet_files_and_live_tail(served: tuple[FakeWandb, Any]):
    """RunParquetHistory: the SDK downloads the export's parquet files (whole, and by HTTP ranges when keys are
    given) and reads the rows after the export live; together they equal the fake's rows."""
    fake, api = served
    run = fake.add_run("ent", "proj", training_run("exported", 2500, state="finished", rows_per_file=1000))
    run.export(2000)  # steps 0-1999 in two files; the rest is not exported yet (the SDK pages by 1,000 steps)
    before = fake.count("HistoryPage")
    rows = sdk_rows(api, "ent/proj/exported")
    # a parquet row holds every column of its file: a key the row lacks reads back as None
    assert canon([{k: v for k, v in r.items() if v is not None} for r in rows]) == canon(run.rows)
    assert fake.count("RunParquetHistory") >= 1 and fake.count("HistoryPage") > before  # files + live tail
    keyed = sdk_rows(api, "ent/proj/exported", keys=["lr"])
    assert canon(keyed) == canon([{"_step": r["_step"], "lr": r["lr"]} for r in run.rows])


async def test_the_source_reads_exported_steps_from_parquet_and_only_the_tail_live(served: tuple[FakeWandb, Any]):
    """A long finished run, mostly exported: the source reads the exported steps from the parquet files (no
    HistoryPage below the export's end), the rest through HistoryPage, through a restart mid-way, and stores
    exactly the points of the rows the SDK reads."""
    fake, api = served
    run = fake.add_run("ent", "proj", training_run("longexp", 60_000, state="finished", rows_per_file=20_000))
    run.export(50_000)
    first = len(fake.requests)
    src_cfg = {"runId": "longexp"}
    cursor, part = await source_read_n(fake, None, 3, **src_cfg)  # three batches, then a restart
    cursor, rest = await source_read(fake, cursor, **src_cfg)
    points = [Point._make(p) for b in part + rest for p in b.points]
    rows = sdk_rows(api, "ent/proj/longexp")
    expected = [p for row in rows for p in row_points({k: v for k, v in row.items() if v is not None}, "longexp")]
    assert len(points) == len(expected) == len({(p[0], p[1]) for p in points})  # none twice
    assert canon([dict(zip("msTvr", p, strict=True)) for p in sorted(points, key=lambda p: (p[1], p[0]))]) == \
        canon([dict(zip("msTvr", p, strict=True)) for p in sorted(expected, key=lambda p: (p[1], p[0]))])
    ours = [r for r in fake.requests[first:] if r.op in ("HistoryPage", "RunParquetHistory")]
    by_source = [r for r in ours if r.op == "RunParquetHistory" or r.variables.get("run") == "longexp"]
    assert sum(r.op == "RunParquetHistory" for r in by_source) >= 2  # once per source instance
    assert min(r.variables["minStep"] for r in by_source if r.op == "HistoryPage" and "pageSize" in r.variables) \
        >= 50_000


async def source_read_n(fake: FakeWandb, cursor: Any, n: int, **config: Any) -> tuple[Any, list]:
    """`n` polls of one source, then it is closed (the restart)."""
    src = WandbSource({"baseUrl": fake.url, "entity": "ent", "project": "proj", "apiKeySecretRef":
                       {"name": "wandb", "key": "apiKey"}, **config},
                      SourceContext(max_batch_points=5000, resolve_secret=_resolve))
    batches = []
    try:
        for _ in range(n):
            batch = await src.poll(cursor)
            cursor = json.loads(json.dumps(batch.cursor))
            batches.append(batch)
        assert batch.more
        return cursor, batches
    finally:
        await src.aclose()


def test_the_fake_logs_no_traceback_for_a_client_resetting_its_connection(capsys: pytest.CaptureFixture[str]) -> None:
    """httpx resets idle keep-alive connections when it closes its pool; the fake, like a real server, says
    nothing then (a traceback on stderr in every bench run hid real errors), but still reports other errors."""
    import socket
    import struct
    import time
    import urllib.error
    import urllib.request

    with serve(FakeWandb()) as fake:
        host, port = fake.url.removeprefix("http://").split(":")
        for _ in range(3):
            s = socket.create_connection((host, int(port)))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            s.sendall(b"GET /")  # a request begun, then reset before its line ends
            s.close()
        time.sleep(0.3)
        with pytest.raises(urllib.error.HTTPError) as answer:  # still serving: a path it does not know
            urllib.request.urlopen(fake.url + "/nothing-here", timeout=5)
        assert answer.value.code == 404
    assert "Traceback" not in capsys.readouterr().err


def test_the_fakes_kept_documents_answer_as_graphql_core_does_and_refuse_invalid_queries_every_time() -> None:
    """The fake keeps parsed, validated queries and passes `[String!]` lists through: its answers must stay byte
    for byte what graphql-core's own `graphql_sync` gives, and a query the schema refuses is refused again when
    asked a second time (the validation errors are kept with the document)."""
    import base64

    from graphql import graphql_sync

    from trainscope.collector.sources.wandb import HISTORY_QUERY

    from fakes.wandb_server import SCHEMA, _finite, _Root

    fake = FakeWandb(api_keys=(KEY,))
    run = fake.add_run("ent", "proj", training_run("r", 300))
    auth = "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
    variables = {"entity": "ent", "project": "proj", "run": "r", "minStep": 10, "maxStep": 260, "pageSize": 1000}
    for _ in range(2):
        status, _, body = fake.handle(auth, json.dumps({"query": HISTORY_QUERY, "variables": variables}).encode())
        plain = graphql_sync(SCHEMA, HISTORY_QUERY, root_value=_Root(fake), variable_values=variables,
                             context_value=fake)
        assert status == 200 and not plain.errors
        assert body == json.dumps({"data": _finite(plain.data)}).encode()
        assert len(json.loads(body)["data"]["project"]["run"]["history"]) == len(run.rows_between(10, 260)) > 200
    bad = "query HistoryPage { project(name: \"proj\") { run(name: \"r\") { historyRows } } }"
    for _ in range(2):
        status, _, body = fake.handle(auth, json.dumps({"query": bad}).encode())
        answer = json.loads(body)
        assert status == 200 and answer["data"] is None
        assert "Cannot query field 'historyRows' on type 'Run'" in answer["errors"][0]["message"]
    status, _, body = fake.handle(auth, json.dumps({"query": "query HistoryPage {"}).encode())
    assert status == 200 and "Syntax Error" in json.loads(body)["errors"][0]["message"]
