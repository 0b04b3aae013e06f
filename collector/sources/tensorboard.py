"""TensorBoard source (placeholder; being written)."""

from __future__ import annotations

from typing import Any, ClassVar

from trainscope.collector.points import Batch, Cursor
from trainscope.collector.sources.base import SourceContext


class TensorBoardSource:
    kind: ClassVar[str] = "tensorboard"
    schema: ClassVar[dict[str, Any]] = {"type": "object"}

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        self.config = config
        self.ctx = ctx

    async def poll(self, cursor: Cursor | None) -> Batch:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None
