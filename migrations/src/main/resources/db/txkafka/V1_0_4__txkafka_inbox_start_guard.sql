-- txkafka inbox: a record that kills the process every time it is handled is dead-lettered after
-- maxAttempts starts instead of making the group crash-loop. ${schema} is a Flyway placeholder.
--
-- Handler failures that throw are counted in memory and dead-lettered after maxAttempts (1.0.2).
-- A handler that ends the process (halt, native crash, out-of-memory kill by the container) leaves
-- no trace of its own: its transaction rolls back, the partition is claimed again at the same
-- offset, and the next owner dies on the same record, for ever. So the owner leaves marks, each
-- committed in a small transaction of its own before the work it announces (asynchronous commit:
-- they must outlive the consumer process, not a crash of PostgreSQL itself). A mark names the
-- stored offset the work continues from (NULL: nothing stored yet), not a record's own offset: a
-- topic's offsets have gaps (transaction markers, compaction), so the stored offset is the one
-- value a later claim can compare it with.
--
-- 1. Before a batch: the stored offset it continues from and its number of records
--    (batch_offset, batch_records). A claim that finds the stored offset still there knows that
--    batch was started and never committed; the new owner then applies its records one per
--    transaction, alone in its process, so that a death is charged to the one record running.
-- 2. Before each record applied that way: a start mark (started_offset, started_count; the token
--    makes a retried mark count once). A claim that finds the stored offset at started_offset
--    guards that record again; a record whose mark shows maxAttempts earlier starts is
--    dead-lettered without running the handler.
--
-- Adding these columns changes only the catalog (no table rewrite), but it takes the table's
-- ACCESS EXCLUSIVE lock: it waits for open batch transactions and holds up new ones meanwhile.

ALTER TABLE ${schema}.txkafka_inbox_offset
    ADD COLUMN batch_offset   BIGINT NULL,
    ADD COLUMN batch_records  INT    NULL CHECK (batch_records > 0),
    ADD COLUMN started_offset BIGINT NULL,
    ADD COLUMN started_count  INT    NOT NULL DEFAULT 0,
    ADD COLUMN started_token  TEXT   NULL;

COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.batch_offset IS
    'Stored offset (NULL: none yet) that the batch the owner last started continues from, marked before it ran.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.batch_records IS
    'Number of records of that batch.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.started_offset IS
    'Stored offset (NULL: none yet) that the record last started one at a time, after a lost batch, continues from.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.started_count IS
    'How many times the record after started_offset was started that way.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.started_token IS
    'Token of the last start: a start mark retried after a lost acknowledgement counts once.';
