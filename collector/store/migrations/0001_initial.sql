-- Workloads, their series, the points of each series, and each source's resume cursor.
-- Points carry no foreign key to series: a per-row RI check would cost more than the whole COPY; the store
-- deletes a workload's points itself (forget_workload).

CREATE TABLE workloads (
    uid        text PRIMARY KEY,                 -- the Kubernetes UID of the Workload object
    namespace  text NOT NULL,
    name       text NOT NULL,
    spec       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz                       -- set when the Workload is gone; its data may be kept
);
CREATE INDEX workloads_namespace_name ON workloads (namespace, name);

-- One row per (workload, source, run, metric); `kind` records which source kind produced it.
CREATE TABLE series (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workload_uid text NOT NULL,
    source       text NOT NULL,
    kind         text NOT NULL,
    run          text NOT NULL DEFAULT '',
    metric       text NOT NULL,
    CONSTRAINT series_key UNIQUE (workload_uid, source, run, metric)
);

-- The primary key is the idempotency key (a step seen again is an upsert) and serves step ranges and keyset
-- pagination on (series_id, step). Time ranges use BRIN on ts: cheap to keep, and a re-logged step that only
-- changes ts and value stays a HOT update (a btree on ts made overlapping writes ~30% slower).
CREATE TABLE points (
    series_id bigint NOT NULL,
    step      bigint NOT NULL,
    ts        timestamptz NOT NULL,              -- the SOURCE's timestamp, never ingest time
    value     double precision NOT NULL,         -- NaN and +-Infinity are kept as such
    PRIMARY KEY (series_id, step)
);
CREATE INDEX points_ts ON points USING brin (ts);

CREATE TABLE cursors (
    workload_uid text NOT NULL,
    source       text NOT NULL,
    cursor       jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workload_uid, source)
);
