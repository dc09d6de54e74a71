-- txkafka outbox tables. ${schema} is a Flyway placeholder (default public), already quoted.
--
-- The relay never reads the outbox through an id cursor: it reads the rows that are pending *now*
-- and deletes (or archives) them once Kafka acknowledged them. A row of a transaction that took a
-- lower id but committed later is simply pending at a later poll, so it can never be skipped (the
-- sequence-gap bug of cursor relays).
--
-- Per-key order is commit order, not id order: under JPA a transaction inserts its outbox row at
-- send() and may then wait on a business row lock while another transaction takes a higher id for
-- the same key and commits first. So every row is sealed at commit with commit_seq (see
-- txkafka_outbox_seal below), and the relay publishes each share in commit_seq order.

CREATE TABLE ${schema}.txkafka_outbox (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Stable across resends: published as the txkafka-message-id header, the far inbox dedups on it.
    message_id     UUID        NOT NULL,
    -- Share of the outbox this row belongs to: floorMod(hash(topic, key), share count). Each share
    -- has exactly one active relay at a time, so per-key order is kept across relay instances.
    share          SMALLINT    NOT NULL CHECK (share >= 0),
    topic          TEXT        NOT NULL,
    kafka_partition INT        NULL,
    record_key     BYTEA       NULL,
    payload        BYTEA       NULL,
    header_names   TEXT[]      NULL,
    header_values  BYTEA[]     NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Failed publish attempts; a row that can never be sent is parked with its error.
    attempts       INT         NOT NULL DEFAULT 0,
    last_error     TEXT        NULL,
    parked_at      TIMESTAMPTZ NULL,
    -- The writing transaction, so that the seal trigger finds its rows.
    tx_id          XID8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Assigned at commit; for one key, commit_seq order is the order in which rows became visible.
    commit_seq     BIGINT      NULL,
    CONSTRAINT txkafka_outbox_headers_match
        CHECK (coalesce(cardinality(header_names), 0) = coalesce(cardinality(header_values), 0))
);

-- The relay's query: pending rows of one share in commit order.
CREATE INDEX txkafka_outbox_pending_idx
    ON ${schema}.txkafka_outbox (share, commit_seq, id) WHERE parked_at IS NULL;
-- The seal trigger's query: the rows of the committing transaction (only unsealed rows are kept).
CREATE INDEX txkafka_outbox_unsealed_idx
    ON ${schema}.txkafka_outbox (tx_id) WHERE commit_seq IS NULL;

CREATE SEQUENCE ${schema}.txkafka_outbox_commit_seq;

-- A queue table: rows come and go all the time. Vacuum and analyze it after a small share of
-- changes, so that dead rows do not pile up and the planner knows when a backlog is there (the
-- relay's read then walks the pending index instead of sorting a share).
ALTER TABLE ${schema}.txkafka_outbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_analyze_threshold = 1000
);
-- Operators and the replay API: parked rows.
CREATE INDEX txkafka_outbox_parked_idx ON ${schema}.txkafka_outbox (parked_at) WHERE parked_at IS NOT NULL;

-- Published rows, kept only when the relay is configured to archive instead of delete.
CREATE TABLE ${schema}.txkafka_outbox_archive (
    id             BIGINT      PRIMARY KEY,
    message_id     UUID        NOT NULL,
    share          SMALLINT    NOT NULL,
    topic          TEXT        NOT NULL,
    kafka_partition INT        NULL,
    record_key     BYTEA       NULL,
    payload        BYTEA       NULL,
    header_names   TEXT[]      NULL,
    header_values  BYTEA[]     NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    attempts       INT         NOT NULL,
    published_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_partition INT    NULL,
    published_offset BIGINT    NULL
);
CREATE INDEX txkafka_outbox_archive_published_idx ON ${schema}.txkafka_outbox_archive (published_at);

-- Seals the rows of the committing transaction. A deferred constraint trigger runs at commit, after
-- every statement of the transaction; the first firing seals all of the transaction's rows, later
-- firings find nothing left. Sealing takes transaction-scoped advisory locks, held until the commit
-- completes, then numbers the rows from the sequence. For one key, a higher commit_seq is therefore
-- only ever assigned after the lower one is visible: commit_seq order is visibility order.
--
-- Locks, in two phases with a fixed order (so two sealing transactions can never deadlock):
--   1. per share of the transaction's rows, in share order: SHARED for a transaction with at most
--      256 distinct keys, EXCLUSIVE for a bulk transaction with more;
--   2. only when not bulk: per distinct key, EXCLUSIVE, in hash order.
-- Small transactions thus only wait for each other on a common key, and a bulk transaction never
-- holds more than 64 locks (the lock table is finite). Keyless rows have no order to keep.
-- The one-bigint form of advisory locks never collides with the relay's two-int share leases.
CREATE FUNCTION ${schema}.txkafka_outbox_seal() RETURNS trigger
    LANGUAGE plpgsql AS
$$
DECLARE
    distinct_keys BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ${schema}.txkafka_outbox
                   WHERE id = NEW.id AND commit_seq IS NULL) THEN
        RETURN NULL; -- sealed by an earlier firing (or deleted) in this transaction
    END IF;
    SELECT count(DISTINCT o.record_key) INTO distinct_keys
      FROM ${schema}.txkafka_outbox o
     WHERE o.tx_id = pg_current_xact_id() AND o.commit_seq IS NULL;
    IF distinct_keys > 256 THEN
        PERFORM pg_advisory_xact_lock(hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
           FROM (SELECT DISTINCT o.share FROM ${schema}.txkafka_outbox o
                  WHERE o.tx_id = pg_current_xact_id() AND o.commit_seq IS NULL
                  ORDER BY 1) s;
    ELSIF distinct_keys > 0 THEN
        PERFORM pg_advisory_xact_lock_shared(
                    hashtextextended(TG_TABLE_SCHEMA || '/share/' || s.share, 0))
           FROM (SELECT DISTINCT o.share FROM ${schema}.txkafka_outbox o
                  WHERE o.tx_id = pg_current_xact_id() AND o.commit_seq IS NULL
                    AND o.record_key IS NOT NULL
                  ORDER BY 1) s;
        PERFORM pg_advisory_xact_lock(k.lock_key)
           FROM (SELECT DISTINCT
                        hashtextextended(TG_TABLE_SCHEMA || '/key/' || encode(o.record_key, 'hex'), 0)
                        AS lock_key
                   FROM ${schema}.txkafka_outbox o
                  WHERE o.tx_id = pg_current_xact_id() AND o.commit_seq IS NULL
                    AND o.record_key IS NOT NULL
                  ORDER BY 1) k;
    END IF;
    UPDATE ${schema}.txkafka_outbox o
       SET commit_seq = sealed.seq
      FROM (SELECT ordered.id, nextval('${schema}.txkafka_outbox_commit_seq') AS seq
              FROM (SELECT u.id FROM ${schema}.txkafka_outbox u
                     WHERE u.tx_id = pg_current_xact_id() AND u.commit_seq IS NULL
                     ORDER BY u.id) ordered) sealed
     WHERE o.id = sealed.id;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER txkafka_outbox_seal
    AFTER INSERT ON ${schema}.txkafka_outbox
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ${schema}.txkafka_outbox_seal();

-- Wakes relays at commit (NOTIFY is delivered only when the inserting transaction commits, and
-- identical notifications of one transaction are folded into one). Relays poll as a fallback.
CREATE FUNCTION ${schema}.txkafka_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS
$$
BEGIN
    PERFORM pg_notify('txkafka_outbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END;
$$;

CREATE TRIGGER txkafka_outbox_notify
    AFTER INSERT ON ${schema}.txkafka_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION ${schema}.txkafka_outbox_notify();
