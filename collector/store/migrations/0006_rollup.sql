-- Per series, per block of 2^shift steps (shift 4, 8, 12: 16, 256 and 4,096 steps), what downsampling needs of the
-- block's points: how many, the lowest value with its lowest step, the highest value with its highest step. The
-- pairs are float8 arrays {value, step}, so min()/max() over them keep PostgreSQL's float order (NaN above
-- +Infinity), break ties by step, and compose: a block's pair is the min/max of its sub-blocks' pairs. Steps are
-- exact in float8 within +-2^53; the API uses the rollup only for step ranges inside those bounds.
-- The writer recomputes every block its transaction touched from the points themselves, so a replaced point (a
-- larger or a smaller value) leaves the rollup exact.
CREATE TABLE rollup (
    series_id bigint NOT NULL,
    shift     smallint NOT NULL,
    block     bigint NOT NULL,            -- step >> shift
    n         bigint NOT NULL,
    lo        double precision[] NOT NULL, -- {lowest value, its lowest step}
    hi        double precision[] NOT NULL, -- {highest value, its highest step}
    -- Covering: the API reads a few rows per bucket from thousands of small ranges, answered from the index
    -- alone (index-only scans) instead of one heap page per row.
    PRIMARY KEY (series_id, shift, block) INCLUDE (n, lo, hi)
);
-- The points stored before this migration, block by block (once; PostgreSQL reads the table one time per level).
INSERT INTO rollup (series_id, shift, block, n, lo, hi)
SELECT series_id, 4, step >> 4, count(*), min(ARRAY[value, step::float8]), max(ARRAY[value, step::float8])
FROM points GROUP BY series_id, step >> 4 ORDER BY 1, 3;
INSERT INTO rollup (series_id, shift, block, n, lo, hi)
SELECT series_id, 8, block >> 4, sum(n), min(lo), max(hi) FROM rollup WHERE shift = 4 GROUP BY series_id, block >> 4 ORDER BY 1, 3;
INSERT INTO rollup (series_id, shift, block, n, lo, hi)
SELECT series_id, 12, block >> 4, sum(n), min(lo), max(hi) FROM rollup WHERE shift = 8 GROUP BY series_id, block >> 4 ORDER BY 1, 3;
ANALYZE rollup;
