-- The payments service's own tables, under its own Flyway history (the txkafka tables have theirs).
CREATE TABLE payment (
    id            UUID        PRIMARY KEY,
    -- Deliberately not unique: the demo relies on the inbox alone to apply each request once, and
    -- its final check counts every extra payment of an order as a duplicate.
    order_id      UUID        NOT NULL,
    amount_cents  BIGINT      NOT NULL,
    status        TEXT        NOT NULL CHECK (status IN ('CAPTURED')),
    created_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX payment_order_idx ON payment (order_id);
