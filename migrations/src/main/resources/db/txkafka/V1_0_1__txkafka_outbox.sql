-- txkafka outbox tables. ${schema} is a Flyway placeholder (default public), already quoted.
--
-- The relay never reads the outbox through an id cursor: it reads the rows that are pending *now*
-- in id order and deletes (or archives) them once Kafka acknowledged them. A row of a transaction
-- that took a lower id but committed later is simply pending at a later poll, so it can never be
-- skipped (the sequence-gap bug of cursor relays).

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
    CONSTRAINT txkafka_outbox_headers_match
        CHECK (coalesce(cardinality(header_names), 0) = coalesce(cardinality(header_values), 0))
);

-- The relay's query: pending rows of its shares in id order.
CREATE INDEX txkafka_outbox_pending_idx ON ${schema}.txkafka_outbox (share, id) WHERE parked_at IS NULL;
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
