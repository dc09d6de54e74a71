-- Per-key commit order without a second write of every row.
--
-- Before this migration every outbox row was sealed at commit by an UPDATE that set commit_seq
-- (a second, non-HOT write of each row inside the commit, about +0.3 ms on a one-row business
-- transaction). Now the relay publishes each share in id order, and the commit-time trigger keeps
-- this invariant for every key:
--
--   for one key, whenever two rows are pending, the one with the lower id became visible first.
--
-- At commit, under transaction-scoped advisory locks taken in a fixed order (a shared lock per
-- share and an exclusive lock per key; above 256 distinct keys an exclusive lock per share, at most
-- 64 locks), the trigger looks for a pending row of one of its keys with a higher id that another
-- transaction already committed: that transaction took its id later but committed first (under JPA
-- the outbox row is inserted at send() while the entity update that may block on a row lock waits
-- for the flush). Only then are this transaction's keyed rows given new ids, drawn under the locks,
-- so that they sort after every row of their keys that is already visible. The locks make the
-- check and the commit of two transactions of one key happen one after the other, so the second
-- always sees the first's rows. The check needs a fresh snapshot after the locks: under REPEATABLE
-- READ or SERIALIZABLE the transaction's snapshot is older, so there the rows are always given new
-- ids (still correct, as before this migration, at the old cost).
--
-- The common one-message transaction costs: the locks, one probe of the pending index over the rows
-- inserted into its share since its own insert, and no write.

DROP TRIGGER txkafka_outbox_seal ON ${schema}.txkafka_outbox;
DROP FUNCTION ${schema}.txkafka_outbox_seal();

-- Rows pending at the upgrade were ordered by commit_seq: give them ids in that order, so that the
-- relay's id order is their commit order. (Sealed rows first, in commit order; rows that were never
-- sealed, only possible with the trigger disabled, after them.)
DO $$
DECLARE
    pending RECORD;
BEGIN
    FOR pending IN SELECT id FROM ${schema}.txkafka_outbox
                    ORDER BY commit_seq NULLS LAST, id LOOP
        UPDATE ${schema}.txkafka_outbox SET id = DEFAULT WHERE id = pending.id;
    END LOOP;
END;
$$;

DROP INDEX ${schema}.txkafka_outbox_pending_idx;
DROP INDEX ${schema}.txkafka_outbox_unsealed_idx;
ALTER TABLE ${schema}.txkafka_outbox DROP COLUMN commit_seq;
DROP SEQUENCE ${schema}.txkafka_outbox_commit_seq;

-- The relay's query (pending rows of one share in id order) and the commit-time check (pending rows
-- of one share above an id).
CREATE INDEX txkafka_outbox_pending_idx
    ON ${schema}.txkafka_outbox (share, id) WHERE parked_at IS NULL;

COMMENT ON COLUMN ${schema}.txkafka_outbox.tx_id IS
    'The writing transaction: the commit-time order trigger finds its rows by it (within the id range it drew).';

-- Keeps per-key order at commit (see the top of this file). A deferred constraint trigger runs at
-- commit, after every statement of the transaction. Its first firing handles every row the
-- transaction inserted so far: they lie between the firing row's id (the first row inserted, ids
-- only grow within a session) and currval of the id sequence (the last id this session drew), and
-- carry this transaction's tx_id. It records the highest id it handled in a transaction-local
-- setting named after the table (each schema's outbox has its own ids), so later firings for the
-- same rows return at once; rows inserted after an early firing
-- (SET CONSTRAINTS ... IMMEDIATE) have higher ids and are handled by their own firing.
-- The one-bigint form of advisory locks never collides with the relay's two-int share leases.
CREATE FUNCTION ${schema}.txkafka_outbox_order() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    last_id     BIGINT := currval('${schema}.txkafka_outbox_id_seq');
    tx          TEXT;
    handled     TEXT;
    keys        BIGINT;
    overtaken   BOOLEAN;
    renumber    RECORD;
BEGIN
    IF last_id = NEW.id THEN
        -- The common case: the row is the last one this session inserted, so no firing of this
        -- transaction comes after this one and no bookkeeping is needed. (In a transaction of
        -- several rows this is the last firing; if the first firing handled every row without
        -- renumbering them, this repeats its check for this one row, under locks already held.)
        IF NEW.record_key IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock_shared(
                        hashtextextended(TG_TABLE_SCHEMA || '/share/' || NEW.share, 0)),
                    pg_advisory_xact_lock(
                        hashtextextended(TG_TABLE_SCHEMA || '/key/' || encode(NEW.record_key, 'hex'), 0));
            -- A new statement: its snapshot (read committed) sees every transaction of this key
            -- that committed before the locks were granted.
            IF current_setting('transaction_isolation') <> 'read committed'
               OR EXISTS (SELECT 1 FROM ${schema}.txkafka_outbox o
                           WHERE o.share = NEW.share AND o.id > NEW.id AND o.parked_at IS NULL
                             AND o.record_key = NEW.record_key) THEN
                UPDATE ${schema}.txkafka_outbox SET id = DEFAULT WHERE id = NEW.id;
            END IF;
        END IF;
        RETURN NULL;
    END IF;

    tx := pg_current_xact_id()::text;
    handled := current_setting('txkafka.outbox_ordered_' || TG_RELID, true);
    IF handled IS NOT NULL AND handled LIKE tx || ':%'
       AND NEW.id <= substr(handled, length(tx) + 2)::BIGINT THEN
        RETURN NULL; -- handled by an earlier firing of this transaction
    END IF;

    -- Several rows: lock in two phases with a fixed order, so that two committing transactions
    -- never deadlock: shares in share order, then keys in hash order.
    SELECT count(DISTINCT o.record_key) INTO keys
      FROM ${schema}.txkafka_outbox o
     WHERE o.id BETWEEN NEW.id AND last_id AND o.tx_id = pg_current_xact_id();
    IF keys > 256 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
           FROM (SELECT DISTINCT o.share FROM ${schema}.txkafka_outbox o
                  WHERE o.id BETWEEN NEW.id AND last_id AND o.tx_id = pg_current_xact_id()
                    AND o.record_key IS NOT NULL
                  ORDER BY 1) s;
    ELSIF keys > 0 THEN
        PERFORM pg_advisory_xact_lock_shared(
                    hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
           FROM (SELECT DISTINCT o.share FROM ${schema}.txkafka_outbox o
                  WHERE o.id BETWEEN NEW.id AND last_id AND o.tx_id = pg_current_xact_id()
                    AND o.record_key IS NOT NULL
                  ORDER BY 1) s;
        PERFORM pg_advisory_xact_lock(k.lock_key)
           FROM (SELECT DISTINCT
                        hashtextextended(TG_TABLE_SCHEMA || '/key/' || encode(o.record_key, 'hex'), 0)
                        AS lock_key
                   FROM ${schema}.txkafka_outbox o
                  WHERE o.id BETWEEN NEW.id AND last_id AND o.tx_id = pg_current_xact_id()
                    AND o.record_key IS NOT NULL
                  ORDER BY 1) k;
    END IF;
    IF keys > 0 THEN
        overtaken := current_setting('transaction_isolation') <> 'read committed'
            OR EXISTS (SELECT 1
                         FROM ${schema}.txkafka_outbox mine
                         JOIN ${schema}.txkafka_outbox o
                           ON o.share = mine.share AND o.id > mine.id
                          AND o.parked_at IS NULL AND o.record_key = mine.record_key
                        WHERE mine.id BETWEEN NEW.id AND last_id
                          AND mine.tx_id = pg_current_xact_id()
                          AND mine.record_key IS NOT NULL
                          AND o.tx_id <> pg_current_xact_id());
        IF overtaken THEN
            -- New ids in the old order, one row at a time (an UPDATE of many rows draws ids in
            -- no defined order).
            FOR renumber IN SELECT o.id FROM ${schema}.txkafka_outbox o
                             WHERE o.id BETWEEN NEW.id AND last_id
                               AND o.tx_id = pg_current_xact_id()
                               AND o.record_key IS NOT NULL
                             ORDER BY o.id LOOP
                UPDATE ${schema}.txkafka_outbox SET id = DEFAULT WHERE id = renumber.id;
            END LOOP;
            last_id := currval('${schema}.txkafka_outbox_id_seq');
        END IF;
    END IF;
    PERFORM set_config('txkafka.outbox_ordered_' || TG_RELID, tx || ':' || last_id, true);
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER txkafka_outbox_order
    AFTER INSERT ON ${schema}.txkafka_outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ${schema}.txkafka_outbox_order();
