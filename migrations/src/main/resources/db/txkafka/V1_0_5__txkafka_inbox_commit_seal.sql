-- txkafka inbox: a batch transaction commits only when the inbox commits it. ${schema} is a Flyway
-- placeholder.
--
-- A batch transaction stores the partition's next offset and the inbox rows of all its records
-- first, then runs the handler. A handler that ends that transaction itself part-way (COMMIT sent
-- as SQL, commit() on an unwrapped connection, or setAutoCommit(true)) and goes on would commit
-- the offset and every inbox row with only the effects written so far: the records after that
-- point would count as applied without having been, and a crash or an error before the inbox's own
-- commit would lose them. A check after the handler cannot undo a commit that already happened, so
-- the check runs at the commit itself:
--
-- 1. The offset update of a batch transaction records its transaction id (commit_xid).
-- 2. After the handler, the inbox seals the transaction: it sets txkafka.inbox_sealed_xid, for
--    this transaction only, to the current transaction id, and compares it with the one of step 1
--    (a different one means the handler ended the transaction and the rest ran in another: that
--    one is rolled back).
-- 3. At commit, a deferred constraint trigger on the offset row refuses (SQLState TXK01) a
--    transaction whose commit_xid is not sealed: a commit before the seal, the handler's, rolls
--    back everything, the offset and the inbox rows with it.
--
-- The trigger fires only when commit_xid changes, so members of an older version, which do not set
-- it, run unchanged on the migrated schema. A handler that runs SET CONSTRAINTS ALL IMMEDIATE fires
-- it before the seal and is refused the same way (name its own constraints instead).
--
-- Adding the column changes only the catalog (no table rewrite), but it takes the table's
-- ACCESS EXCLUSIVE lock: it waits for open batch transactions and holds up new ones meanwhile.

ALTER TABLE ${schema}.txkafka_inbox_offset
    ADD COLUMN commit_xid BIGINT NULL;

COMMENT ON COLUMN ${schema}.txkafka_inbox_offset.commit_xid IS
    'Transaction id (txid_current) of the batch transaction that last stored next_offset; checked against the inbox''s seal at commit.';

CREATE FUNCTION ${schema}.txkafka_inbox_commit_seal() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF current_setting('txkafka.inbox_sealed_xid', true) IS DISTINCT FROM NEW.commit_xid::text THEN
        RAISE EXCEPTION 'txkafka inbox: the transaction that stores the offset of % partition % (group %) is being committed before the inbox sealed it: a handler committed the inbox''s transaction itself (COMMIT as SQL, commit() or setAutoCommit(true) on an unwrapped connection), or ran SET CONSTRAINTS ALL IMMEDIATE; the inbox owns the transaction: throw to roll back, and name your own constraints in SET CONSTRAINTS',
            NEW.topic, NEW.kafka_partition, NEW.consumer_group
            USING ERRCODE = 'TXK01';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER txkafka_inbox_commit_seal
    AFTER UPDATE ON ${schema}.txkafka_inbox_offset
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.commit_xid IS DISTINCT FROM OLD.commit_xid)
    EXECUTE FUNCTION ${schema}.txkafka_inbox_commit_seal();
