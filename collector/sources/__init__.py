"""The registry of source kinds: one line per kind, name -> class."""

from __future__ import annotations

from trainscope.collector.sources.base import Source, SourceContext, SourceError, SourceFactory
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.sources.mlflow import MlflowSource
from trainscope.collector.sources.qianfan import QianfanSource
from trainscope.collector.sources.swanlab import SwanLabSource
from trainscope.collector.sources.tensorboard import TensorBoardSource
from trainscope.collector.sources.wandb import WandbSource

REGISTRY: dict[str, SourceFactory] = {
    TensorBoardSource.kind: TensorBoardSource,
    SwanLabSource.kind: SwanLabSource,
    QianfanSource.kind: QianfanSource,
    WandbSource.kind: WandbSource,
    LogsSource.kind: LogsSource,
    MlflowSource.kind: MlflowSource,
}

__all__ = ["REGISTRY", "Source", "SourceContext", "SourceError", "SourceFactory"]
