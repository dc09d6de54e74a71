-- txkafka outbox: the commit-time order trigger orders every row of a transaction, also rows
-- whose trigger events fire after a row with a higher id. ${schema} is a Flyway placeholder
-- (default public), already quoted.
--
-- The trigger fires once per row at commit, in the order the rows were inserted. Its first firing
-- orders the transaction's rows from its own id up to the last id the session drew, and later
-- firings with a lower id than that last one returned at once. That assumed the first firing had
-- the transaction's lowest id. It has not when a row's id is drawn before rows inserted ahead of
-- it (a function in an INSERT's VALUES that itself sends outbox rows: the outer row's id is drawn
-- first, its event queued last) or when a row is given an explicit id below the others: such a
-- row was never checked, and kept an id below a row of its key that another transaction had
-- committed first, so the relay published it first although it became visible later.
--
-- Now a firing records the range it ordered (from its own id to the last id), under a new setting
-- name, and a later firing returns at once only for an id inside that range; a lower id orders
-- again from that id up (the rows already ordered are checked again: correct, and only in this
-- unusual case). A transaction in flight across this migration whose earlier firing stored the
-- old setting simply orders again. Explicit ids stay unsupported: one that falls inside a range an
-- earlier firing of its transaction already ordered (after SET CONSTRAINTS ALL IMMEDIATE, an id
-- drawn and not used, or one freed by a renumbering) is not ordered again.
--
-- Also: the share column must be below Outbox.SHARE_COUNT (64). A row of another writer with a
-- higher share belonged to no relay and was never published; it is now refused at insert (NOT
-- VALID: existing rows are not scanned, the relay has only ever read shares 0..63).
ALTER TABLE ${schema}.txkafka_outbox
    ADD CONSTRAINT txkafka_outbox_share_range CHECK (share < 64) NOT VALID;

-- And: a row's key and share are fixed once it is inserted. The commit-time trigger orders a row
-- by the key it was inserted with; an UPDATE that gave it another key (or share) before the commit
-- left it unordered among that key's rows. Only an UPDATE naming those columns pays for this
-- trigger (the relay and the admin never do).
CREATE OR REPLACE FUNCTION ${schema}.txkafka_outbox_refuse_rekey() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    RAISE EXCEPTION 'txkafka_outbox row % cannot change its record_key or share after it was inserted: per-key order is kept for the key a row was sent with; send a new message instead',
        OLD.id USING ERRCODE = 'feature_not_supported';
END;
$$;
CREATE TRIGGER txkafka_outbox_refuse_rekey
    BEFORE UPDATE OF record_key, share ON ${schema}.txkafka_outbox
    FOR EACH ROW
    WHEN (OLD.record_key IS DISTINCT FROM NEW.record_key OR OLD.share IS DISTINCT FROM NEW.share)
    EXECUTE FUNCTION ${schema}.txkafka_outbox_refuse_rekey();


CREATE OR REPLACE FUNCTION ${schema}.txkafka_outbox_order() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    last_id     BIGINT := currval('${schema}.txkafka_outbox_id_seq');
    tx          TEXT := pg_current_xact_id()::text;
    -- 'tx:first:last': the ids an earlier firing of this transaction ordered (migration 1.0.10).
    handled     TEXT := current_setting('txkafka.outbox_order_range_' || TG_RELID, true);
    my_shares   INT[];
    my_keys     BYTEA[];
BEGIN
    IF NEW.id > last_id THEN
        RAISE EXCEPTION 'txkafka_outbox row % has an explicit id above the last one this session drew (%): outbox rows must take their id from the table''s identity sequence, or per-key order cannot be kept',
            NEW.id, last_id USING ERRCODE = 'feature_not_supported';
    END IF;
    IF handled IS NOT NULL AND split_part(handled, ':', 1) = tx
       AND NEW.id BETWEEN split_part(handled, ':', 2)::BIGINT AND split_part(handled, ':', 3)::BIGINT THEN
        RETURN NULL; -- ordered by an earlier firing of this transaction
    END IF;

    -- Durable before visible: the relay may publish this transaction's rows as soon as they are
    -- visible, so its commit record must be on disk by then (see the top of this file).
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;

    IF lower(coalesce(current_setting('txkafka.wake_relays', true), '')) IN ('off', 'false', 'no', '0') THEN
        NULL; -- this session turned the wake-up off (two-phase commit: see the top of this file)
    ELSIF NOT (pg_try_advisory_xact_lock_shared(hashtextextended(TG_TABLE_SCHEMA || '/wake/0', 0))
            AND pg_try_advisory_xact_lock_shared(hashtextextended(TG_TABLE_SCHEMA || '/wake/1', 0))
            AND pg_try_advisory_xact_lock_shared(hashtextextended(TG_TABLE_SCHEMA || '/wake/2', 0))
            AND pg_try_advisory_xact_lock_shared(hashtextextended(TG_TABLE_SCHEMA || '/wake/3', 0))) THEN
        PERFORM pg_notify('txkafka_outbox', TG_TABLE_SCHEMA);
    END IF;

    IF current_setting('transaction_isolation') = 'serializable' THEN
        -- Ordered at insert (txkafka_outbox_order_at_insert): nothing to check or renumber.
        RETURN NULL;
    END IF;

    IF last_id = NEW.id THEN
        -- The common case: this transaction inserted one row (or this is its last row and no
        -- earlier firing handled it).
        IF NEW.record_key IS NOT NULL THEN
            PERFORM pg_advisory_xact_lock_shared(
                        hashtextextended(TG_TABLE_SCHEMA || '/share/' || NEW.share, 0)),
                    pg_advisory_xact_lock(
                        hashtextextended(TG_TABLE_SCHEMA || '/key/' || encode(NEW.record_key, 'hex'), 0));
            -- A new statement: its snapshot (read committed) sees every transaction of this key
            -- that committed before the locks were granted. (Parked rows have left the order: a
            -- replay gives them new ids, behind the rows pending then.)
            IF current_setting('transaction_isolation') <> 'read committed'
               OR EXISTS (SELECT 1 FROM ${schema}.txkafka_outbox o
                           WHERE o.share = NEW.share AND o.id > NEW.id AND o.parked_at IS NULL
                             AND o.record_key = NEW.record_key) THEN
                UPDATE ${schema}.txkafka_outbox SET id = DEFAULT WHERE id = NEW.id;
            END IF;
        END IF;
        RETURN NULL;
    END IF;

    -- Several rows. One pass over the transaction's id range: its distinct (share, key) pairs.
    SELECT array_agg(g.share), array_agg(g.record_key)
      INTO my_shares, my_keys
      FROM (SELECT DISTINCT o.share, o.record_key
              FROM ${schema}.txkafka_outbox o
             WHERE o.id BETWEEN NEW.id AND last_id AND o.tx_id = pg_current_xact_id()
               AND o.record_key IS NOT NULL) g;
    IF my_keys IS NOT NULL THEN
        -- Locks in two phases with a fixed order, so that two committing transactions never
        -- deadlock: shares in share order, then keys in hash order.
        IF cardinality(my_keys) > 256 THEN
            PERFORM pg_advisory_xact_lock(hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
               FROM (SELECT DISTINCT u.share FROM unnest(my_shares) AS u(share) ORDER BY 1) s;
        ELSE
            PERFORM pg_advisory_xact_lock_shared(
                        hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
               FROM (SELECT DISTINCT u.share FROM unnest(my_shares) AS u(share) ORDER BY 1) s;
            PERFORM pg_advisory_xact_lock(k.lock_key)
               FROM (SELECT DISTINCT
                            hashtextextended(TG_TABLE_SCHEMA || '/key/' || encode(u.record_key, 'hex'), 0)
                            AS lock_key
                       FROM unnest(my_keys) AS u(record_key)
                      ORDER BY 1) k;
        END IF;
        -- Overtaken: another transaction's pending row of one of these keys above this
        -- transaction's first row of that key. Every such row has an id of at least NEW.id, so one
        -- pass over the rows inserted since this transaction's first one, grouped by key (linear,
        -- whatever the number of keys), finds them all.
        IF current_setting('transaction_isolation') <> 'read committed'
           OR EXISTS (SELECT 1
                        FROM (SELECT o.id, o.tx_id = pg_current_xact_id() AS mine,
                                     min(o.id) FILTER (WHERE o.tx_id = pg_current_xact_id())
                                         OVER (PARTITION BY o.share, o.record_key) AS my_first
                                FROM ${schema}.txkafka_outbox o
                               WHERE o.id >= NEW.id AND o.record_key IS NOT NULL
                                 AND o.parked_at IS NULL) w
                       WHERE NOT w.mine AND w.id > w.my_first) THEN
            -- New ids in the old order: nextval is evaluated as the ordered rows stream.
            UPDATE ${schema}.txkafka_outbox o
               SET id = renumbered.new_id
              FROM (SELECT ordered.id, nextval('${schema}.txkafka_outbox_id_seq') AS new_id
                      FROM (SELECT u.id FROM ${schema}.txkafka_outbox u
                             WHERE u.id BETWEEN NEW.id AND last_id
                               AND u.tx_id = pg_current_xact_id()
                               AND u.record_key IS NOT NULL
                             ORDER BY u.id) ordered) renumbered
             WHERE o.id = renumbered.id;
            last_id := currval('${schema}.txkafka_outbox_id_seq');
        END IF;
    END IF;
    PERFORM set_config('txkafka.outbox_order_range_' || TG_RELID, tx || ':' || NEW.id || ':' || last_id, true);
    RETURN NULL;
END;
$$;
