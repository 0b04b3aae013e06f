-- Which transaction last wrote each point, for the API's live stream (GET .../metrics/stream) and its resumption
-- with Last-Event-ID: "points written by transactions not visible in snapshot S" is exact whatever the commit order
-- of concurrent writers, where a sequence number would let a slow transaction commit a smaller number after a
-- reader moved past it. txid_current() is the 64-bit (epoch-extended) id of the TOP-level transaction, also inside
-- the writer's COPY savepoint; the writer's upsert sets it again when it replaces a point.
-- BRIN, not btree: cheap to keep, and an update that changes only BRIN-indexed columns stays HOT (PostgreSQL 16).
-- Points stored before this migration keep NULL: they predate every stream.
ALTER TABLE points ADD COLUMN ingest_xid bigint;
ALTER TABLE points ALTER COLUMN ingest_xid SET DEFAULT txid_current();
CREATE INDEX points_ingest_xid ON points USING brin (ingest_xid);
