package org.txkafka.outbox;

import org.txkafka.outbox.internal.JdbcOutboxWriter;

/**
 * The front door of the outbox: {@link #writer()} for the side that writes messages in its
 * business transactions, {@link #relay()} for the process that publishes committed rows to Kafka.
 */
public final class Outbox {

  /** Header that carries the stable message id of every published record (UTF-8 UUID text). */
  public static final String MESSAGE_ID_HEADER = "txkafka-message-id";

  /**
   * The outbox is split into this many shares by key; each share has exactly one active relay at a
   * time. Fixed, so that writers and relays of any version agree.
   */
  public static final int SHARE_COUNT = 64;

  /** The schema of the outbox tables when none is given. */
  public static final String DEFAULT_SCHEMA = "public";

  private Outbox() {}

  /** A writer for the tables in the {@value #DEFAULT_SCHEMA} schema. Thread-safe. */
  public static OutboxWriter writer() {
    return writer(DEFAULT_SCHEMA);
  }

  /**
   * A writer for the tables in {@code schema}. Thread-safe.
   *
   * @throws IllegalArgumentException if the schema is not a lower-case unquoted identifier
   */
  public static OutboxWriter writer(String schema) {
    return new JdbcOutboxWriter(schema);
  }
}
