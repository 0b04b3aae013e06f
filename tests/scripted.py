"""A scripted source for the collector's own tests: an in-memory training run that the test grows and breaks.

It exercises the Collector (batching, cursors, backoff, health) without any real source's parsing; every real
source kind is tested against its real program in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from trainscope.collector.points import Batch, Point, RunState
from trainscope.collector.sources.base import SourceContext, SourceError

RUNS: dict[str, ScriptedRun] = {}


@dataclass
class ScriptedRun:
    """Points a fake training job has 'logged', in order; `broken` makes polls fail."""

    points: list[Point] = field(default_factory=list)
    broken: str | None = None
    state: RunState | None = RunState.RUNNING
    polls: int = 0

    def log(self, step: int, ts: float, **metrics: float) -> None:
        self.points.extend(Point(m, step, ts, v, "run-1") for m, v in metrics.items())


class ScriptedSource:
    kind: ClassVar[str] = "scripted"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object", "additionalProperties": False, "required": ["run"],
        "properties": {"run": {"type": "string"}},
    }

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        self.run = RUNS[config["run"]]
        self.limit = ctx.max_batch_points

    async def poll(self, cursor: int | None) -> Batch:
        self.run.polls += 1
        if self.run.broken:
            raise SourceError(self.run.broken, reason="Broken")
        start = cursor or 0
        chunk = self.run.points[start:start + self.limit]
        end = start + len(chunk)
        return Batch(chunk, cursor=end, state=self.run.state, more=end < len(self.run.points))

    async def aclose(self) -> None:
        return None


class SecondsSource(ScriptedSource):
    """Like a hosted job's status API: its steps are seconds of run time, not training steps."""

    kind: ClassVar[str] = "seconds"
    training_steps: ClassVar[bool] = False


REGISTRY = {ScriptedSource.kind: ScriptedSource, SecondsSource.kind: SecondsSource}
SCHEMAS = {kind: cls.schema for kind, cls in REGISTRY.items()}
