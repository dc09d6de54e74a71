-- txkafka inbox tables. ${schema} is a Flyway placeholder (default public), already quoted.

-- One row per message a consumer group has taken in. The primary key removes duplicates: a message
-- id that is already here for the group is never handed to the handler again.
CREATE TABLE ${schema}.txkafka_inbox (
    consumer_group  TEXT        NOT NULL,
    message_id      TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    -- PROCESSED: handler applied. DEAD_LETTERED: handler gave up, see txkafka_inbox_dead_letter.
    -- REPLAYED: a dead letter that was replayed successfully.
    status          TEXT        NOT NULL DEFAULT 'PROCESSED'
                    CHECK (status IN ('PROCESSED', 'DEAD_LETTERED', 'REPLAYED')),
    attempts        INT         NOT NULL DEFAULT 1,
    last_error      TEXT        NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);

-- The retention job deletes old rows in small batches by received time.
CREATE INDEX txkafka_inbox_received_idx ON ${schema}.txkafka_inbox (received_at);

-- Dead letters keep the whole record so that they can be listed and replayed.
CREATE TABLE ${schema}.txkafka_inbox_dead_letter (
    id              BIGINT      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  TEXT        NOT NULL,
    message_id      TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    kafka_offset    BIGINT      NOT NULL,
    record_key      BYTEA       NULL,
    payload         BYTEA       NULL,
    header_names    TEXT[]      NULL,
    header_values   BYTEA[]     NULL,
    attempts        INT         NOT NULL,
    last_error      TEXT        NOT NULL,
    dead_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at     TIMESTAMPTZ NULL,
    CONSTRAINT txkafka_inbox_dead_letter_unique UNIQUE (consumer_group, message_id)
);
CREATE INDEX txkafka_inbox_dead_letter_pending_idx
    ON ${schema}.txkafka_inbox_dead_letter (consumer_group, id) WHERE replayed_at IS NULL;

-- The consumer's position, owned by PostgreSQL. owner_epoch is bumped on every assignment; a batch
-- commits only while its epoch is still the current one (fencing of zombies), and next_offset
-- never moves backwards.
CREATE TABLE ${schema}.txkafka_inbox_offset (
    consumer_group  TEXT        NOT NULL,
    topic           TEXT        NOT NULL,
    kafka_partition INT         NOT NULL,
    -- NULL until the first batch commits: then the Kafka-committed offset or the reset policy applies.
    next_offset     BIGINT      NULL CHECK (next_offset >= 0),
    owner_epoch     BIGINT      NOT NULL DEFAULT 0,
    owner_id        TEXT        NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, kafka_partition)
);
