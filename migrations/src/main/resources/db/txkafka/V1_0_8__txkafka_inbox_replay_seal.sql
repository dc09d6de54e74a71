-- txkafka inbox: a dead letter's replay commits only when the inbox commits it. ${schema} is a
-- Flyway placeholder (default public), already quoted.
--
-- Replaying a dead letter runs the handler in one transaction with the mark that the dead letter
-- was replayed. Before, the handler ran first and the mark came after it, with nothing to stop a
-- handler from ending that transaction itself (COMMIT sent as SQL, commit() on an unwrapped
-- connection): a handler that committed part of its effects and then failed left them committed
-- with the dead letter still pending, so the next replay applied them again; one that rolled back
-- (ROLLBACK as SQL) and went on had the mark commit without the effects it rolled back.
--
-- The same seal as a batch's (migration 1.0.5), on the dead letter: the inbox now marks the dead
-- letter replayed first, recording its transaction id in replay_xid, runs the handler, then seals
-- the transaction (txkafka.inbox_sealed_xid, transaction-local) and checks that it is still the
-- one of the mark. At commit, this deferred trigger refuses (SQLState TXK01) a transaction whose
-- replay_xid is not sealed, so a handler's own commit rolls back, mark and effects together, and
-- the dead letter stays pending.
--
-- Adding the column changes only the catalog (no table rewrite). An inbox of an older version marks
-- without replay_xid, which does not fire the trigger, and runs unchanged.

ALTER TABLE ${schema}.txkafka_inbox_dead_letter
    ADD COLUMN replay_xid BIGINT NULL;

COMMENT ON COLUMN ${schema}.txkafka_inbox_dead_letter.replay_xid IS
    'Transaction id (txid_current) of the replay that marked this dead letter replayed; checked against the inbox''s seal at commit.';

CREATE FUNCTION ${schema}.txkafka_inbox_replay_seal() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    IF current_setting('txkafka.inbox_sealed_xid', true) IS DISTINCT FROM NEW.replay_xid::text THEN
        RAISE EXCEPTION 'txkafka inbox: the replay of dead letter % (group %, message id %) is being committed before the inbox sealed it: a handler committed the inbox''s transaction itself (COMMIT as SQL, commit() or setAutoCommit(true) on an unwrapped connection), or ran SET CONSTRAINTS ALL IMMEDIATE; the inbox owns the transaction: throw to roll back, and name your own constraints in SET CONSTRAINTS',
            NEW.id, NEW.consumer_group, NEW.message_id
            USING ERRCODE = 'TXK01';
    END IF;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER txkafka_inbox_replay_seal
    AFTER UPDATE ON ${schema}.txkafka_inbox_dead_letter
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (NEW.replay_xid IS DISTINCT FROM OLD.replay_xid)
    EXECUTE FUNCTION ${schema}.txkafka_inbox_replay_seal();
