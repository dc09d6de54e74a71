-- The orders service's own tables, under its own Flyway history (the txkafka tables have theirs).
CREATE TABLE purchase_order (
    id            UUID        PRIMARY KEY,
    customer      TEXT        NOT NULL,
    amount_cents  BIGINT      NOT NULL CHECK (amount_cents > 0),
    status        TEXT        NOT NULL CHECK (status IN ('PLACED', 'PAID')),
    created_at    TIMESTAMPTZ NOT NULL,
    paid_at       TIMESTAMPTZ NULL,
    payment_id    UUID        NULL,
    -- How many payment confirmations were applied: exactly 1 for a paid order. The demo's final
    -- check counts anything above 1 as a duplicate, so it is a counter, not a flag.
    confirmations INT         NOT NULL DEFAULT 0,
    version       BIGINT      NOT NULL DEFAULT 0
);
CREATE INDEX purchase_order_status_idx ON purchase_order (status);
