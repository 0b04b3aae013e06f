-- What a source knows about each run beyond its points: display name, state, config, URLs... (kept for the API
-- and status). Written in the same transaction as the points; `info` is merged key by key.
CREATE TABLE runs (
    workload_uid text NOT NULL,
    source       text NOT NULL,
    run          text NOT NULL,
    info         jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workload_uid, source, run)
);
