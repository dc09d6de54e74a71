package org.txkafka.outbox;

import javax.sql.DataSource;
import org.txkafka.outbox.internal.JdbcOutboxAdmin;
import org.txkafka.outbox.internal.JdbcOutboxWriter;

/**
 * The front door of the outbox: {@link #writer()} for the side that writes messages in its
 * business transactions, {@link #relay()} for the process that publishes committed rows to Kafka,
 * {@link #admin(DataSource)} for operators (parked rows).
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

  /**
   * A writer for the tables in {@code schema} that stores the caller's W3C trace context (from
   * {@code traceContext}, called once per message on the writing thread) as {@code traceparent} /
   * {@code tracestate} headers. Thread-safe.
   *
   * @throws IllegalArgumentException if the schema is not a lower-case unquoted identifier
   * @throws NullPointerException if {@code traceContext} is null
   */
  public static OutboxWriter writer(String schema, TraceContext traceContext) {
    return new JdbcOutboxWriter(schema, traceContext);
  }

  /**
   * Starts configuring a relay that publishes committed rows to Kafka.
   *
   * @see OutboxRelay.Builder
   */
  public static OutboxRelay.Builder relay() {
    return new OutboxRelay.Builder();
  }

  /** Admin operations (list, replay, discard parked rows) on the {@code public} schema's outbox. */
  public static OutboxAdmin admin(DataSource dataSource) {
    return admin(dataSource, DEFAULT_SCHEMA);
  }

  /**
   * Admin operations on the outbox in {@code schema}. Thread-safe.
   *
   * @throws IllegalArgumentException if the data source is null or the schema is invalid
   */
  public static OutboxAdmin admin(DataSource dataSource, String schema) {
    return new JdbcOutboxAdmin(dataSource, schema);
  }
}
