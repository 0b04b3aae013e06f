"""The cursor contract of every source kind (collector/sources/base.py: a poll never changes the cursor it is
given, nor a cursor or run facts it returned), on which the collector's poll ahead relies. conftest.py checks it
around every poll in the suite (tests/cursorcontract.py); here the checker is shown to catch each kind of change,
to watch every registered kind, and a catch-up in small batches of each file-reading kind and of W&B is checked
the way the collector drives it: the next poll starts from the very cursor object the last one returned."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar

import pytest

from trainscope.collector.points import Batch
from trainscope.collector.sources import REGISTRY, SourceContext

from cursorcontract import Contract, install
from fakes.wandb_server import FakeRun, FakeWandb, serve
from tbfixtures import write_scalars

DATA = Path(__file__).parent / "data"


class Mutating:
    """A source that breaks the contract in the way `how` says."""

    kind: ClassVar[str] = "mutating"

    def __init__(self, how: str):
        self.how = how
        self.last: Batch | None = None

    async def poll(self, cursor: Any) -> Batch:
        n = (cursor or {}).get("n", 0)
        if self.how == "given" and cursor is not None:
            cursor["n"] = n + 1  # moves the caller's cursor on
        if self.how == "returned" and self.last is not None:
            self.last.cursor["n"] = -1
        if self.how == "runs" and self.last is not None:
            self.last.runs["r"]["state"] = "changed"
        self.last = Batch(points=[], cursor={"n": n + 1}, more=True, runs={"r": {"state": "running"}})
        return self.last


@pytest.mark.parametrize("how", ["given", "returned", "runs"])
async def test_the_checker_catches_a_change_in_place(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    contract = install(monkeypatch, [("mutating", Mutating)])
    src, cursor = Mutating(how), None
    for _ in range(3):
        cursor = (await src.poll(cursor)).cursor
    assert contract.broken and all(b.startswith("mutating: ") for b in contract.broken)


async def test_a_source_that_keeps_the_contract_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    contract = install(monkeypatch, [("mutating", Mutating)])
    src, cursor = Mutating("nothing"), None
    for _ in range(3):
        cursor = (await src.poll(cursor)).cursor
    assert contract.broken == [] and contract.polls == {"mutating": 3}


def test_every_registered_kind_is_watched(source_contract: Contract) -> None:
    for kind, cls in REGISTRY.items():
        assert cls.poll.__wrapped__ is not None, kind  # functools.wraps of Contract.wrap


async def catch_up(source: Any) -> int:
    """Poll as the collector does during a catch-up (each poll from the previous batch's own cursor object);
    returns the number of polls."""
    cursor, polls = None, 0
    while True:
        batch = await source.poll(cursor)
        polls += 1
        cursor = batch.cursor
        if not batch.more:
            await source.aclose()
            return polls


def tensorboard(tmp: Path) -> dict[str, Any]:
    for run in ("a", "b"):
        write_scalars(tmp / "tb" / run, {"loss": [(s, 1.0 / (s + 1)) for s in range(40)],
                                         "lr": [(s, 0.1) for s in range(40)]})
    return {"logDir": str(tmp / "tb")}


def logs(tmp: Path) -> dict[str, Any]:
    for name in ("hf5_pipe", "hf4_pipe"):  # real Trainer output, two files: two streams in the cursor
        (tmp / "logs").mkdir(exist_ok=True)
        shutil.copy(DATA / "logruns" / name / "console.log", tmp / "logs" / f"{name}.log")
    return {"path": str(tmp / "logs" / "*.log"), "format": "hf"}


def swanlab(tmp: Path) -> dict[str, Any]:
    shutil.copytree(DATA / "swanlab_old" / "0.7.20", tmp / "swan")  # written by the real swanlab 0.7.20
    return {"logDir": str(tmp / "swan")}


@pytest.mark.parametrize("kind", ["tensorboard", "logs", "swanlab", "wandb"])
async def test_a_catch_up_in_small_batches_keeps_the_contract(source_contract: Contract, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    ctx = SourceContext(max_batch_points=7, base_dir=tmp_path)
    if kind == "wandb":
        monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
        fake = FakeWandb(api_keys=("k" * 40,))
        run = FakeRun("r1", "one")
        for s in range(30):
            run.log(s, run.created_at + s, loss=1.0 / (s + 1), lr=0.1)
        fake.add_run("ent", "proj", run)
        with serve(fake):
            polls = await catch_up(REGISTRY[kind]({"baseUrl": fake.url, "entity": "ent", "project": "proj",
                                                   "filters": {}, "pageSize": 4}, ctx))
    else:
        config = {"tensorboard": tensorboard, "logs": logs, "swanlab": swanlab}[kind](tmp_path)
        polls = await catch_up(REGISTRY[kind](config, ctx))
    assert polls >= 3 and source_contract.polls[kind] == polls
    assert source_contract.broken == []
