"""W&B source against the fake W&B GraphQL server (real HTTP on 127.0.0.1): incremental reads, cost per poll,
run discovery, flattening, state, errors. tests/test_wandb_contract.py proves the fake against the real SDK."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_crd import EXAMPLES, cluster_check, structural_problems

from trainscope.collector.points import Columns, Point, RunState
from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.sources.wandb import WandbSource
from trainscope.collector.spec import SpecError, parse_spec
from trainscope.operator.crd import build_crd, registry_schemas, to_structural

from fakes.wandb_server import FakeRun, FakeWandb, grow, rate_limited, row_points, run_points, serve, training_run

KEY = "k" * 40


def norm(points: Any) -> list[tuple]:
    """Points (Point or tuples) as sortable tuples; NaN becomes "nan" so equal data compares equal."""
    out = []
    for metric, step, ts, value, run in points:
        out.append((run, metric, step, ts, "nan" if math.isnan(value) else value))
    return sorted(out, key=repr)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWandb]:
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    server = FakeWandb(api_keys=(KEY,))
    server.add_project("ent", "proj")
    with serve(server):
        yield server


def source(fake: FakeWandb, max_points: int = 50_000, resolve_secret: Any = None, **config: Any) -> WandbSource:
    config = {"baseUrl": fake.url, "entity": "ent", "project": "proj", **config}
    if "runId" not in config and "filters" not in config:
        config["filters"] = {}
    return WandbSource(config, SourceContext(max_batch_points=max_points, resolve_secret=resolve_secret))


async def drain(src: WandbSource, cursor: Any = None, limit: int = 10_000) -> tuple[list, Any, list]:
    points, batches = [], []
    for _ in range(limit):
        batch = await src.poll(cursor)
        assert len(batch.points) <= src.ctx.max_batch_points or len({p[1] for p in batch.points}) == 1
        cursor = json.loads(json.dumps(batch.cursor))  # what the store keeps
        points += map(Point._make, batch.points)  # a catch-up's batch is columns: its points are plain tuples
        batches.append(batch)
        if not batch.more:
            return points, cursor, batches
    raise AssertionError("source never finished")


async def test_catch_up_equals_the_servers_rows_point_for_point(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 2600, display_name="llama-sft", config={"max_steps": 9000}))
    src = source(fake, runId="r1", totalStepsConfigKey="max_steps")
    points, cursor, batches = await drain(src)
    await src.aclose()
    assert norm(points) == norm(run_points(run))
    assert len(set((p.metric, p.step) for p in points)) == len(points)
    by = {(p.metric, p.step): p.value for p in points}
    assert math.isnan(by[("train/loss", 5)]) and by[("train/loss", 6)] == math.inf
    assert by[("train/loss", 7)] == -math.inf
    assert by[("eval/loss/top1", 100)] == 1 / 102 and by[("eval/acc", 2500)] == 0.025
    last = batches[-1]
    assert last.skipped == {"non_numeric": 9 + 6, "media": 7}  # 9 notes + 6 booleans, 7 images
    assert last.state == RunState.RUNNING and last.total_steps == 9000
    meta = last.runs["r1"]
    assert meta["display_name"] == "llama-sft" and meta["state"] == "running" and meta["last_step"] == 2599
    assert meta["url"] == f"{fake.url}/ent/proj/runs/r1" and meta["config"] == {"max_steps": 9000}
    assert cursor == {"runs": {"r1": {"next": 2600, "lines": len(run.rows)}}}
    # complete rows in windows of pageSize steps: 3 history pages for 2,600 steps
    assert fake.count("HistoryPage") == 3 and fake.count("SampledHistoryPage") == 0


async def test_growth_reads_only_new_steps_and_an_idle_run_costs_two_requests(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 1500))
    src = source(fake, runId="r1")
    _, cursor, _ = await drain(src)
    before = fake.count()
    batch = await src.poll(cursor)
    assert batch.points == [] and not batch.more
    assert fake.ops()[before:] == ["Run", "RunHistoryKeys"]  # running: the listing plus its lastStep
    grow(run, 300)
    before = fake.count()
    new, cursor, _ = await drain(src, cursor)
    assert norm(new) == norm(p for p in run_points(run) if p[1] >= 1500)
    pages = [r.variables for r in fake.requests[before:] if r.op == "HistoryPage"]
    assert [(v["minStep"], v["maxStep"]) for v in pages] == [(1500, 1800)]
    # finished and read to the end: only the listing
    run.state = "finished"
    await drain(src, cursor)
    before = fake.count()
    batch = await src.poll(cursor)
    assert fake.ops()[before:] == ["Run"] and batch.state == RunState.FINISHED
    await src.aclose()


async def test_resume_from_the_cursor_after_a_restart_mid_catch_up(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 3000))
    first = source(fake, max_points=700, runId="r1", pageSize=400)
    got, cursor = [], None
    for _ in range(4):
        batch = await first.poll(cursor)
        got += map(Point._make, batch.points)
        cursor = json.loads(json.dumps(batch.cursor))
        assert batch.more
    await first.aclose()
    assert cursor["runs"]["r1"]["lines"] is None and 0 < cursor["runs"]["r1"]["next"] < 3000
    again = source(fake, max_points=700, runId="r1", pageSize=400)  # a new process: nothing in memory
    rest, _, _ = await drain(again, cursor)
    await again.aclose()
    assert norm(got + rest) == norm(run_points(run))  # nothing lost, nothing twice
    assert min(p.step for p in rest) == cursor["runs"]["r1"]["next"]


async def test_batches_are_bounded_and_cut_between_rows(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 1200))
    fake.add_run("ent", "proj", training_run("r2", 300, created_at=1_700_000_100.0))
    src = source(fake, max_points=250, pageSize=128)
    points, _, batches = await drain(src)
    await src.aclose()
    assert len(batches) > 10 and all(b.more for b in batches[:-1])
    assert all(len(b.points) <= 250 for b in batches)
    assert norm(points) == norm(run_points(run) + run_points(fake.runs_of("ent", "proj")[1]))
    rows_per_batch = [{(p[4], p[1]) for p in b.points} for b in batches]
    for i, rows in enumerate(rows_per_batch):  # a row is never split between batches
        assert all(not rows & other for j, other in enumerate(rows_per_batch) if j != i)
    # a continued catch-up does not list the runs again
    assert fake.count("Runs") < len(batches) // 2


async def test_runs_that_start_matching_later_are_picked_up_and_pages_are_followed(fake: FakeWandb):
    for i in range(51):  # more than one page of 50
        fake.add_run("ent", "proj", training_run(f"old{i:02d}", 2, config={"experiment_name": "foo"},
                                                 created_at=1_600_000_000.0 + i, state="finished"))
    fake.add_run("ent", "proj", training_run("other", 5, config={"experiment_name": "bar"}))
    src = source(fake, filters={"config.experiment_name": "foo"})
    points, cursor, batches = await drain(src)
    assert {p.run for p in points} == {f"old{i:02d}" for i in range(51)}
    assert fake.count("Runs") == 2 and len(batches[-1].runs) == 51
    late = fake.add_run("ent", "proj", training_run("late", 10, config={"experiment_name": "foo"}))
    fake.runs_of("ent", "proj")[51].config["experiment_name"] = "foo"  # "other" now matches too
    new, cursor, batches = await drain(src, cursor)
    assert {p.run for p in new} == {"late", "other"}
    assert norm(p for p in new if p.run == "late") == norm(run_points(late))
    # config (metadata, totalSteps) comes with the listing after a new run appears; finished runs cost nothing
    before = fake.count()
    batch = await src.poll(cursor)
    assert batch.runs["late"]["config"] == {"experiment_name": "foo"}
    assert fake.ops()[before:] == ["Runs", "Runs", "RunHistoryKeys", "RunHistoryKeys"]
    await src.aclose()


async def test_or_and_regex_filters_and_order(fake: FakeWandb):
    fake.add_run("ent", "proj", training_run("a", 3, display_name="llama-7b", created_at=1_700_000_003.0))
    fake.add_run("ent", "proj", training_run("b", 3, display_name="mistral", state="crashed",
                                             created_at=1_700_000_002.0))
    fake.add_run("ent", "proj", training_run("c", 3, display_name="llama-70b", created_at=1_700_000_001.0))
    fake.add_run("ent", "proj", training_run("d", 3, display_name="gpt", created_at=1_700_000_000.0))
    src = source(fake, filters={"$or": [{"display_name": {"$regex": "^llama"}}, {"state": {"$in": ["crashed"]}}]},
                 order="-created_at")
    batch = await src.poll(None)
    await src.aclose()
    assert list(batch.runs) == ["a", "b", "c"]
    assert [p[4] for p in batch.points if p[0] == "lr" and p[1] == 0] == ["a", "b", "c"]


async def test_keys_include_exclude_on_flattened_names(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 400))
    src = source(fake, runId="r1", keys={"include": ["eval/*", "train/*", "note"], "exclude": ["eval/loss/*"]})
    points, _, batches = await drain(src)
    await src.aclose()
    assert {p.metric for p in points} == {"train/loss", "eval/acc"}
    assert norm(points) == norm(p for p in run_points(run) if p[0] in ("train/loss", "eval/acc"))
    assert batches[-1].skipped == {"non_numeric": 2}  # the included text key only: not images, not booleans


@pytest.mark.parametrize(("states", "expected"), [
    (["running"], RunState.RUNNING), (["pending"], RunState.RUNNING), (["preempting"], RunState.RUNNING),
    (["finished"], RunState.FINISHED), (["failed"], RunState.FAILED), (["crashed"], RunState.FAILED),
    (["killed"], RunState.FAILED), (["preempted"], RunState.UNKNOWN), (["exploded"], RunState.UNKNOWN),
    (["crashed", "running"], RunState.RUNNING),  # a resumed job: a new run after a crash
    (["crashed", "finished"], RunState.FINISHED),  # the newest run decides once none is live
    (["finished", "killed"], RunState.FAILED),
])
async def test_run_state_mapping(fake: FakeWandb, states: list[str], expected: RunState):
    for i, state in enumerate(states):
        fake.add_run("ent", "proj", training_run(f"r{i}", 2, state=state, created_at=1_700_000_000.0 + i))
    src = source(fake)
    batch = await src.poll(None)
    await src.aclose()
    assert batch.state == expected
    assert [m["state"] for m in batch.runs.values()] == states
    if "preempted" in states:
        assert any("preempted: waiting for it to resume" in n for n in batch.notes)
    if "exploded" in states:
        assert any("'exploded'" in n for n in batch.notes)


async def test_heartbeat_age_and_stale_note(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 5))
    src = source(fake, runId="r1", staleAfter="10m")
    src.clock = lambda: run.heartbeat_at + 30
    batch = await src.poll(None)
    assert batch.info["heartbeat_age_seconds"] == 30 and batch.notes == []
    src.clock = lambda: run.heartbeat_at + 3600 + 120
    batch = await src.poll(batch.cursor)
    assert batch.info["heartbeat_age_seconds"] == 3720
    assert batch.notes == ["run r1 is running but its last heartbeat was 1h02m ago"]
    await src.aclose()


@pytest.mark.parametrize(("config", "key", "total"), [
    ({"max_steps": 5000}, "max_steps", 5000),
    ({"trainer": {"max_steps": 1200}}, "trainer.max_steps", 1200),
    ({"max_steps": "300"}, "max_steps", 300),
    ({"max_steps": -1}, "max_steps", None),
    ({"epochs": 3}, "max_steps", None),
])
async def test_total_steps_from_the_run_config(fake: FakeWandb, config: dict, key: str, total: int | None):
    fake.add_run("ent", "proj", training_run("r1", 3, config=config))
    src = source(fake, runId="r1", totalStepsConfigKey=key)
    batch = await src.poll(None)
    await src.aclose()
    assert batch.total_steps == total


async def test_a_rewound_run_is_read_again(fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 100))
    src = source(fake, runId="r1")
    _, cursor, _ = await drain(src)
    run.rows = [r for r in run.rows if r["_step"] <= 60]  # W&B's rewind truncates history...
    for s in range(61, 70):  # ...and the run goes on from there
        run.log(s, run.created_at + 1000 + s, **{"train/loss": 0.5})
    again, cursor, batches = await drain(src, cursor)
    await src.aclose()
    assert "now ends at step 69, before the 99 already read (rewound?)" in batches[0].notes[0]
    assert norm(again) == norm(run_points(run))  # the store's upsert keeps the newer observation
    assert cursor["runs"]["r1"]["next"] == 70


async def test_sparse_steps_use_growing_windows(fake: FakeWandb):
    run = fake.add_run("ent", "proj", FakeRun("r1"))
    for s in (0, 1, 50_000, 50_001):
        run.log(s, loss=float(s))
    src = source(fake, runId="r1", pageSize=1000)
    points, _, _ = await drain(src)
    await src.aclose()
    assert sorted(p.step for p in points) == [0, 1, 50_000, 50_001]
    assert fake.count("HistoryPage") < 15  # not 51 windows of 1,000 steps


# ---- errors ----------------------------------------------------------------------------------------------------


def no_key_in(key: str, *things: Any) -> bool:
    return all(key not in json.dumps(t, default=str) for t in things)


async def test_a_rejected_key_is_unauthorized_with_a_slow_backoff_and_no_key_in_the_message(fake: FakeWandb):
    fake.add_run("ent", "proj", training_run("r1", 3))
    bad = "b" * 40
    asked: list[dict] = []

    async def resolve(ref: dict[str, str]) -> str:
        asked.append(ref)
        return bad + "\n"

    src = source(fake, runId="r1", resolve_secret=resolve, apiKeySecretRef={"name": "wandb", "key": "apiKey"})
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == "Unauthorized" and err.value.retry_after >= 300
    assert "Secret 'wandb' key 'apiKey'" in str(err.value) and "HTTP 401" in str(err.value)
    assert bad not in str(err.value) and bad not in repr(err.value.args)
    assert asked == [{"name": "wandb", "key": "apiKey"}]
    # the Secret is read again after a rejection (it may have been rotated)
    fake.api_keys.add(bad)
    batch = await src.poll(None)
    await src.aclose()
    assert len(asked) == 2 and batch.points and no_key_in(bad, batch.runs, batch.info, batch.notes, batch.cursor)
    assert no_key_in(bad, [tuple(p) for p in batch.points])


async def test_the_environment_key_is_used_without_a_resolver_and_a_missing_key_is_clear(
        fake: FakeWandb, monkeypatch: pytest.MonkeyPatch):
    fake.add_run("ent", "proj", training_run("r1", 3))
    src = source(fake, runId="r1", apiKeySecretRef={"name": "wandb", "key": "apiKey"})  # no resolver: env
    assert (await src.poll(None)).points
    await src.aclose()
    assert fake.requests[-1].authorized
    monkeypatch.delenv("WANDB_API_KEY")
    src = source(fake, runId="r1")
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == "Unauthorized" and "WANDB_API_KEY" in str(err.value)


@pytest.mark.parametrize(("fault", "reason", "words", "retry"), [
    ({"status": 429, "headers": {"Retry-After": "7"}}, "RateLimited", "HTTP 429 to Run, retry after 7s", (7, 8.4)),
    ({k: v for k, v in rate_limited(12).items() if k != "op"}, "RateLimited", "HTTP 429 to Run, retry after 12s",
     (12, 14.4)),
    ({"status": 503}, "ServerError", "HTTP 503 to Run", None),
    ({"status": 500, "headers": {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}}, "ServerError", "HTTP 500",
     (0, 0)),
    ({"status": 403}, "Unauthorized", "HTTP 403", (300, 360)),
    ({"status": 400, "body": b"bad request"}, "HttpError", "HTTP 400", None),
    ({"errors": [{"message": "permission denied for project"}]}, "GraphQLError", "permission denied", None),
    ({"status": 200, "body": b"<html>login</html>", "headers": {"Content-Type": "text/html"}}, "BadResponse",
     "not a GraphQL JSON object", None),
    ({"status": 200, "body": b"[1, 2]"}, "BadResponse", "not a GraphQL JSON object", None),
    ({"status": 200, "body": b'{"data": {"project": {"run": {"nope": 1}}}}'}, "BadResponse", "no id", None),
    ({"status": 200, "body": b'{"data": {"project": 7}}'}, "BadResponse", "not an object", None),
])
async def test_http_and_graphql_failures(fake: FakeWandb, fault: dict, reason: str, words: str,
                                         retry: tuple | None):
    fake.add_run("ent", "proj", training_run("r1", 3))
    fake.inject(op="Run", **fault)
    src = source(fake, runId="r1")
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == reason and words in str(err.value), str(err.value)
    if retry is None:
        assert err.value.retry_after is None
    else:
        assert retry[0] <= err.value.retry_after <= retry[1]
    assert KEY not in str(err.value)
    assert (await src.poll(None)).points  # one fault, then the server answers again
    await src.aclose()


@pytest.mark.parametrize(("op", "body", "words"), [
    ("HistoryPage", b'{"data": {"project": {"run": {"history": ["{\\"_step\\": 0, oops"]}}}}', "is not JSON"),
    ("HistoryPage", b'{"data": {"project": {"run": {"history": ["[1]"]}}}}', "is not an object"),
    # two rows on one line of the page: not two rows (the page is parsed as one array when every row is one)
    ("HistoryPage", b'{"data": {"project": {"run": {"history": ["{\\"_step\\": 0}", '
                    b'"{\\"_step\\": 1}, {\\"_step\\": 2}"]}}}}', "is not JSON"),
    ("HistoryPage", b'{"data": {"project": {"run": {"history": ["{\\"_step\\": 0}", ""]}}}}', "is not JSON"),
    ("HistoryPage", b'{"data": {"project": {"run": {"history": 5}}}}', "is not a list"),
    ("RunHistoryKeys", b'{"data": {"project": {"run": {"historyKeys": {"lastStep": "9"}}}}}', "not an integer"),
    ("Runs", b'{"data": {"project": {"runs": {"edges": 3}}}}', "not a run connection"),
])
async def test_garbage_answers_are_clear_errors(fake: FakeWandb, op: str, body: bytes, words: str):
    fake.add_run("ent", "proj", training_run("r1", 3))
    fake.inject(op=op, status=200, body=body)
    src = source(fake)
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    await src.aclose()
    assert err.value.reason == "BadResponse" and words in str(err.value), str(err.value)


async def test_unknown_project_and_run_are_named(fake: FakeWandb):
    src = source(fake, project="nope")
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == "NotFound" and "project ent/nope not found" in str(err.value)
    src = source(fake, runId="missing")
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == "NotFound" and "run ent/proj/missing not found" in str(err.value)
    await src.aclose()


async def test_a_slow_server_times_out_and_a_dead_one_is_unreachable(fake: FakeWandb):
    fake.add_run("ent", "proj", training_run("r1", 3))
    hold = threading.Event()
    fake.inject(op="Run", hold=hold, status=200, body=b"{}")
    src = source(fake, runId="r1", timeout="200ms")
    try:
        with pytest.raises(SourceError) as err:
            await src.poll(None)
    finally:
        hold.set()
        await src.aclose()
    assert err.value.reason == "Timeout" and "within 0.2s" in str(err.value)
    dead = WandbSource({"baseUrl": "http://127.0.0.1:9", "entity": "e", "project": "p", "runId": "r"},
                       SourceContext())
    with pytest.raises(SourceError) as err:
        await dead.poll(None)
    assert err.value.reason == "Unreachable" and "127.0.0.1:9" in str(err.value)
    assert KEY not in str(err.value)


async def test_a_wrong_base_url_hints_at_it(fake: FakeWandb):
    src = WandbSource({"baseUrl": fake.url + "/not-wandb", "entity": "ent", "project": "proj", "filters": {}},
                      SourceContext())
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    await src.aclose()
    assert err.value.reason == "HttpError" and "is baseUrl a W&B server?" in str(err.value)


# ---- schema ----------------------------------------------------------------------------------------------------

SCHEMAS = {"wandb": WandbSource.schema}


def spec_of(block: dict) -> dict:
    return {"sources": [{"name": "wb", "wandb": block}]}


def test_schema_accepts_the_documented_forms_and_is_structural():
    full = {"baseUrl": "https://wandb.corp.example", "entity": "team", "project": "llm",
            "filters": {"$or": [{"config.experiment_name": "foo"}, {"display_name": {"$regex": "^llama"}}]},
            "order": "-created_at", "keys": {"include": ["train/*"], "exclude": ["*/grad_*"]}, "pageSize": 500,
            "timeout": "20s", "apiKeySecretRef": {"name": "wandb-key", "key": "apiKey"},
            "totalStepsConfigKey": "trainer.max_steps", "staleAfter": "15m"}
    assert parse_spec(spec_of(full), SCHEMAS).sources[0].config == full
    assert parse_spec(spec_of({"entity": "e", "project": "p", "runId": "a1b2c3d4"}), SCHEMAS)
    structural = to_structural(WandbSource.schema)
    assert structural["properties"]["filters"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                                   "description": WandbSource.schema["properties"]["filters"][
                                                       "description"]}


@pytest.mark.parametrize(("block", "field", "words"), [
    ({"entity": "e", "project": "p"}, "spec.sources[0].wandb", "exactly one of runId or filters"),
    ({"entity": "e", "project": "p", "runId": "a", "filters": {}}, "spec.sources[0].wandb", "exactly one"),
    ({"project": "p", "runId": "a"}, "spec.sources[0].wandb.entity", "required"),
    ({"entity": "e", "project": "p", "runId": "a/b"}, "spec.sources[0].wandb.runId", "does not match"),
    ({"entity": "e", "project": "p", "runId": "a", "pageSize": 0}, "spec.sources[0].wandb.pageSize", "minimum"),
    ({"entity": "e", "project": "p", "runId": "a", "apiKey": "x"}, "spec.sources[0].wandb.apiKey", "unknown"),
    ({"entity": "e", "project": "p", "runId": "a", "filters": "state=running"}, "spec.sources[0].wandb",
     "exactly one"),
])
def test_schema_rejects_bad_blocks_naming_the_field(block: dict, field: str, words: str):
    with pytest.raises(SpecError) as err:
        parse_spec(spec_of(block), SCHEMAS)
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_row_points_oracle_matches_a_hand_written_row():
    row = {"_step": 3, "_timestamp": 10.5, "_runtime": 1.0, "a": 1, "b": {"c": 2.5, "d": {"_type": "image-file"}},
           "t": "x", "f": False}
    assert row_points(row, "r") == [("a", 3, 10.5, 1.0, "r"), ("b/c", 3, 10.5, 2.5, "r")]


def test_schema_is_structural_in_the_crd_and_the_example_is_valid_in_a_cluster():
    crd = build_crd({**registry_schemas(), **SCHEMAS})
    assert structural_problems(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) == []
    doc = yaml.safe_load((EXAMPLES / "wandb.yaml").read_text(encoding="utf-8"))
    errors, dropped, _ = cluster_check(doc, crd)
    assert errors == [] and dropped == []
    assert parse_spec(doc["spec"], SCHEMAS).sources[0].config["filters"] == {"config.experiment_name": "llama-8b-sft"}
    both = {**doc, "spec": {"sources": [{"wandb": {"entity": "e", "project": "p", "runId": "r", "filters": {}}}]}}
    errors, _, _ = cluster_check(both, crd)  # the CEL rule, evaluated as the API server would
    assert ("spec.sources[0].wandb", "set exactly one of runId or filters") in errors, errors


async def test_a_float_step_is_read_as_its_integer(fake: FakeWandb):
    """A history row whose `_step` arrives as 5.0 (a client that logged a float step; JSON has one number type)
    is the row of step 5, not a row without a step; a fractional step is still counted as having none."""
    run = fake.add_run("ent", "proj", training_run("r1", 30))
    want = norm(run_points(run))
    with fake.lock:
        for row in run.rows:
            if 10 <= row["_step"] < 20:
                row["_step"] = float(row["_step"])
            elif row["_step"] == 25:
                row["_step"] = 25.5
    src = source(fake, runId="r1")
    points, _, batches = await drain(src)
    await src.aclose()
    assert all(type(p.step) is int for p in points)
    assert norm(points) == [p for p in want if p[2] != 25]
    assert sum(b.skipped.get("no_step", 0) for b in batches) == 1


def layout_run() -> FakeRun:
    """Stretches of 20 rows with the same keys, each with one row that cannot be columns: a boolean, a string, a
    NaN time, an int beyond what the fast path converts; and a plain stretch, and one with a nested dict."""
    run = FakeRun("r1")
    for s in range(120):
        values: dict[str, Any] = {"a": 1.0 / (s + 1), "b": s, "b2": -s}
        if 20 <= s < 40:
            values["h"] = {"x": s * 0.5, "y": {"z": s}}
        if s == 45:
            values["b"] = True
        if s == 65:
            values["a"] = "diverged"
        if s == 105:
            values["b"] = 2**1023 + 5
        run.log(s, math.nan if s == 85 else run.created_at + s / 4, **values)
    return run


@pytest.mark.parametrize(("page", "max_points"), [(1000, 50_000), (7, 25)])
async def test_rows_of_one_layout_give_the_points_the_rows_give_one_by_one(fake: FakeWandb, page: int,
                                                                          max_points: int):
    """A stretch of rows with the same keys is read as columns (PointSink.add_run); every row that columns would
    get wrong (not a plain number, no time) sends its stretch row by row, so the points, their order within a
    row and the skip counts are those of the rows one by one, also when pages and batches end mid-stretch."""
    run = fake.add_run("ent", "proj", layout_run())
    src = source(fake, max_points=max_points, runId="r1", pageSize=page, keys={"exclude": ["b2"]})
    points, _, batches = await drain(src)
    await src.aclose()
    want = [p for row in run.rows if row["_step"] != 85 for p in row_points(row, "r1") if p[0] != "b2"]
    assert norm(points) == norm(want)
    # in the order the rows give them: row by row, each row's keys last first (nested ones depth first)
    assert [p[:2] for p in points] == [p[:2] for row in run.rows if row["_step"] != 85
                                       for p in reversed(row_points(row, "r1")) if p[0] != "b2"]
    skipped = {k: sum(b.skipped.get(k, 0) for b in batches) for k in ("no_timestamp", "non_numeric")}
    assert skipped == {"no_timestamp": 1, "non_numeric": 2}
    if page == 1000:  # the whole run in one batch: the stretches became columns
        assert isinstance(batches[0].points, Columns)


async def test_pages_in_flight_are_out_at_once_and_no_window_is_asked_twice(fake: FakeWandb):
    """While catching up, `pagesInFlight` history windows are out at once (the server's answers overlap: W&B is a
    remote service) and never more; a batch that ends mid-page keeps the page's other rows, so no window is asked
    for twice."""
    run = fake.add_run("ent", "proj", training_run("r1", 2400))
    fake.latency = 0.2
    for in_flight, page in ((4, 100), (1, 500)):
        fake.most_at_once.clear()
        before = len(fake.requests)
        src = source(fake, max_points=300, runId="r1", pageSize=page, pagesInFlight=in_flight)
        points, _, batches = await drain(src)
        await src.aclose()
        assert norm(points) == norm(run_points(run)) and len(batches) > 10
        asked = [r.variables["minStep"] for r in fake.requests[before:] if r.op == "HistoryPage"]
        assert sorted(asked) == list(range(0, 2400, page))  # each window once, none left out
        assert fake.most_at_once["HistoryPage"] == in_flight


async def test_a_429_halves_the_requests_out_at_once_until_pages_are_read_again(fake: FakeWandb):
    """W&B's HTTP 429 while catching up: the poll fails (the collector waits RateLimit-Reset), and from then on
    half as many history windows are out at once, said in the source's notes; one more comes back per 20 pages
    read, and a finished catch-up starts the next one at pagesInFlight again. No point is lost or read twice."""
    run = fake.add_run("ent", "proj", training_run("r1", 6000))
    fake.latency = 0.05
    fake.inject(**rate_limited(1, op="HistoryPage"))  # the catch-up's first page
    src = source(fake, max_points=300, runId="r1", pageSize=100, pagesInFlight=4)
    with pytest.raises(SourceError) as err:
        await src.poll(None)
    assert err.value.reason == "RateLimited"
    fake.most_at_once.clear()
    points, batches, cursor = [], [], None
    for _ in range(6):  # about 9 pages: still 2 at once
        batch = await src.poll(cursor)
        points += map(Point._make, batch.points)
        batches.append(batch)
        cursor = json.loads(json.dumps(batch.cursor))
    assert fake.most_at_once["HistoryPage"] == 2
    assert any("HTTP 429 while catching up: 2 history requests at once" in n for n in batches[0].notes)
    rest, cursor, more = await drain(src, cursor)
    await src.aclose()
    assert norm(points + rest) == norm(run_points(run))
    assert fake.most_at_once["HistoryPage"] == 4  # grown back over the 60 pages
    assert not any("HTTP 429" in n for n in more[-1].notes)


@pytest.mark.parametrize("text", [
    '{"_step": 1, "loss": 0.5, "lr": 1e-4}',
    '{"_step": 2, "loss": NaN, "gn": Infinity, "x": -Infinity}',  # W&B's bare non-finite numbers: json's turn
    '{"_step": 3, "big": 1e400, "s": "\\ud800"}',  # beyond float8, a lone surrogate: orjson refuses both
    '[{"_step": 4, "a": {"b": [1, 2.5, null, true, "t"]}}]',
])
def test_history_json_is_read_as_the_standard_library_reads_it(text: str) -> None:
    """orjson reads history pages, the standard library what orjson refuses: the values are the same either way
    (compared as JSON text, so NaN equals NaN)."""
    from trainscope.collector.sources.wandb_rows import loads

    assert json.dumps(loads(text)) == json.dumps(json.loads(text))
    assert json.dumps(loads(text.encode())) == json.dumps(json.loads(text))


def test_a_page_out_of_step_order_or_outside_its_window_is_sorted_and_cut() -> None:
    from trainscope.collector.sources.wandb_rows import window_rows

    rows = [{"_step": s} for s in (5, 3, 4, 9, 2.0, 7.5, None)]
    skipped: dict[str, int] = {}
    assert [r["_step"] for r in window_rows(rows, 2, 9, skipped)] == [2, 3, 4, 5]
    assert skipped == {"no_step": 2}
    in_order = [{"_step": s} for s in (2, 3, 8)]
    assert window_rows(in_order, 2, 9, skipped) is in_order and window_rows(in_order, 3, 9, skipped) == in_order[1:]
