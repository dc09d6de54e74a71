-- txkafka inbox: a record that kills the process every time it is handled is dead-lettered after
-- maxAttempts starts instead of making the group crash-loop. ${schema} is a Flyway placeholder.
--
-- Handler failures that throw are counted in memory and dead-lettered after maxAttempts (1.0.2).
-- A handler that ends the process (halt, native crash, out-of-memory kill by the container) leaves
-- no trace of its own: its transaction rolls back, the partition is claimed again at the same
-- offset, and the next owner dies on the same record, for ever. So the owner leaves marks, each
-- committed in a small transaction of its own before the work it announces (asynchronous commit:
-- they must outlive the consumer process, not a crash of PostgreSQL itself):
--
-- 1. Before a batch: its first offset and its number of records (batch_offset, batch_records).
--    A claim that finds the stored offset still at batch_offset knows that batch was started and
--    never committed; the new owner then applies those records one per transaction.
-- 2. Before each record applied that way: a start mark (started_offset, started_count). A claim
--    that finds the stored offset at started_offset guards that record again; a record whose mark
--    shows maxAttempts earlier starts is dead-lettered without running the handler.

ALTER TABLE ${schema}.txkafka_inbox_offset
    ADD COLUMN batch_offset   BIGINT NULL,
    ADD COLUMN batch_records  INT    NULL CHECK (batch_records > 0),
    ADD COLUMN started_offset BIGINT NULL,
    ADD COLUMN started_count  INT    NOT NULL DEFAULT 0;

COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.batch_offset IS
    'First offset of the batch the owner last started (marked before the batch ran).';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.batch_records IS
    'Number of records of that batch.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.started_offset IS
    'Offset of the record last started one at a time, after a batch was lost.';
COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.started_count IS
    'How many times the record at started_offset was started that way.';
