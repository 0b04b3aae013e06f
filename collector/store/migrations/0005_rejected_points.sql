-- Points the collector could not store (a name longer than an index entry, a step beyond bigint) or that the
-- database refused when written alone: kept here with the reason, so that one bad record never blocks its source
-- and nothing is silently dropped. `step` is numeric and `ts` float8 so that the very values that were refused fit.
CREATE TABLE rejected_points (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workload_uid text NOT NULL,
    source       text NOT NULL,
    kind         text NOT NULL,
    run          text NOT NULL,
    metric       text NOT NULL,
    step         numeric NOT NULL,
    ts           double precision NOT NULL,   -- the source's wall time as it came (NaN/inf kept)
    value        double precision NOT NULL,
    reason       text NOT NULL,
    rejected_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_points_workload ON rejected_points (workload_uid, id);
