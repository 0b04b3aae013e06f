"""Response shapes, for the OpenAPI schema. Bodies are written by hand (streamed); these document them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class MetricInfo(BaseModel):
    name: str
    data_source: list[str] = Field(description="data sources that have this metric")
    count: int = Field(description="stored points of this metric, all its data sources and runs together")


class AvailableMetrics(BaseModel):
    workload_uid: str
    metrics: list[MetricInfo]
    total_count: int = Field(description="number of metrics")


class DataPoint(BaseModel):
    metric_name: str
    value: float | None = Field(description="the value; null for NaN and +-Infinity (JSON has neither)")
    timestamp: int = Field(description="the source's timestamp, milliseconds since the epoch")
    iteration: int = Field(description="the training step")
    data_source: str = Field(description="tensorflow (TensorBoard), wandb, log, swanlab or qianfan")
    run: str | None = Field(None, description="only with include=run")
    source: str | None = Field(None, description="the Workload's source name; only with include=source")


class DownsampleInfo(BaseModel):
    method: str = Field(description="minmax: per step bucket the lowest and highest value, plus first and last")
    buckets: str = Field("even", description="even: equal buckets over each series' range; aligned: power-of-two "
                         "widths at multiples of the width")
    max_points_per_series: int
    source_points: int = Field(description="matching points before downsampling")


class MetricsData(BaseModel):
    workload_uid: str
    data_source: str | None = Field(None, description="the data_source filter, when one was given")
    data: list[DataPoint]
    total_count: int = Field(description="number of points in `data`")
    next_cursor: str | None = Field(None, description="with limit: pass as `cursor` for the next page; null at the end")
    downsampled: bool | None = Field(None, description="with downsample: whether any series was reduced")
    downsample: DownsampleInfo | None = None


class DataSourceInfo(BaseModel):
    name: str
    count: int


class DataSources(BaseModel):
    workload_uid: str
    data_sources: list[DataSourceInfo]
    total_count: int


class PrimaryMetric(BaseModel):
    name: str
    value: float | None
    iteration: int
    timestamp: int
    data_source: str


class Condition(BaseModel):
    type: str
    status: str
    reason: str
    message: str


class Workload(BaseModel):
    uid: str
    namespace: str
    name: str
    deleted: bool
    phase: str | None = Field(description="live phase when this process runs the collector (trainscope local); "
                                          "Deleted for a deleted workload; otherwise null (see the Workload's status)")
    step: int | None = Field(description="highest stored step of any series")
    total_steps: int | None = Field(description="spec.totalSteps")
    progress: float | None = Field(description="step / total_steps, 0..1")
    primary_metric: PrimaryMetric | None = Field(description="spec.primaryMetric or a detected loss, newest point")
    data_sources: list[str]
    conditions: list[Condition] = Field(description="training-health conditions (Stalled, NonFiniteMetric, ...) "
                                        "with at least one stored transition: each one's newest status")
    created_at: int
    updated_at: int
    deleted_at: int | None


class WorkloadList(BaseModel):
    workloads: list[Workload]
    total_count: int


class RunInfo(BaseModel):
    source: str
    run: str
    info: dict[str, Any]
    updated_at: int


class Runs(BaseModel):
    workload_uid: str
    runs: list[RunInfo]
    total_count: int


class HealthEvent(BaseModel):
    type: str
    status: str
    reason: str
    message: str
    metric: str | None
    iteration: int | None
    value: float | None
    timestamp: int


class HealthEvents(BaseModel):
    workload_uid: str
    events: list[HealthEvent]
    total_count: int


class Status(BaseModel):
    status: str


class SourceFreshness(BaseModel):
    data_source: str
    source: str = Field(description="the Workload's source name")
    newest_timestamp: int = Field(description="the source time of its newest stored point, ms")


class OverviewItem(BaseModel):
    uid: str
    metric: str | None = Field(description="the primary metric (spec.primaryMetric or the detected loss)")
    data_source: str | None
    source: str | None
    run: str | None
    points: list[list[float | None]] = Field(description="[iteration, value or null] of the sparkline, by "
                                             "iteration, values to 6 significant digits; the newest point is last")
    steps_per_second: float | None = Field(description="recent pace: median seconds per step over the primary "
                                           "series' newest 20 points, inverted")
    sources: list[SourceFreshness]


class Overview(BaseModel):
    points: int
    workloads: list[OverviewItem]
    total_count: int


# One Server-Sent Event as OpenAPI (and schemathesis, which checks each event of a text/event-stream answer) read
# it: the `event` name and its `data` (JSON text), optionally `id` and `retry`.
SSE_EVENT_SCHEMA: dict = {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}
