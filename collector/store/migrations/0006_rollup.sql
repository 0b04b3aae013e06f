-- The downsampling rollup (collector/store/rollup.py builds it, the API reads it for downsample=N).
-- Per series, per block of 2^shift steps (shift 4, 6, 8, 10, 12: 16 to 4,096 steps), what downsampling needs of the
-- block's points: how many, the lowest value with its lowest step, the highest value with its highest step. Each
-- extreme is a float8 array {value, step, ts in microseconds since 1970}, so min()/max() over them keep
-- PostgreSQL's float order (NaN above +Infinity), break ties by step (unique in a series: ts never decides), and
-- compose: a block's extreme is the min/max of its sub-blocks'. Steps and times are exact in float8 within +-2^53
-- (steps; microseconds: the years 1685-2255); the API uses the rollup only for step ranges inside those bounds and
-- reads a point's time from `points` when it lies outside them.
CREATE TABLE rollup (
    series_id bigint NOT NULL,
    shift     smallint NOT NULL,
    block     bigint NOT NULL,             -- step >> shift
    n         bigint NOT NULL,
    lo        double precision[] NOT NULL, -- {lowest value, its lowest step, its ts}
    hi        double precision[] NOT NULL, -- {highest value, its highest step, its ts}
    -- Covering: the API reads a few rows per bucket from many small ranges, answered from the index alone.
    PRIMARY KEY (series_id, shift, block) INCLUDE (n, lo, hi)
);
-- The series' watermark: every block whose steps all lie below it is exact in `rollup` (a multiple of 4,096, so a
-- block of any size lies wholly below or wholly above it). The builder raises it after aggregating the points
-- below; a write that stores a step below it lowers it in the write's own transaction. The minimum bigint: nothing
-- rolled up yet (the points stored before this migration are rolled up by the store in the background).
ALTER TABLE series ADD COLUMN rollup_upto bigint NOT NULL DEFAULT -9223372036854775808;
