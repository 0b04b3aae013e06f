-- Health condition transitions (Stalled, NonFiniteMetric, MetricSpike, MetricDiverging, SourcesDisagree), kept as
-- history for the API after the condition itself has cleared.
CREATE TABLE health_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workload_uid text NOT NULL,
    type         text NOT NULL,
    status       text NOT NULL,             -- True, False or Unknown
    reason       text NOT NULL,
    message      text NOT NULL,
    metric       text,
    step         bigint,
    value        double precision,
    at           timestamptz NOT NULL       -- when the collector saw the transition
);
CREATE INDEX health_events_workload ON health_events (workload_uid, id);
