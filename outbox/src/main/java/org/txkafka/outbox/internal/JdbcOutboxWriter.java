package org.txkafka.outbox.internal;

import jakarta.persistence.EntityManager;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.sql.Types;
import java.util.ArrayList;
import java.util.List;
import java.util.Objects;
import java.util.UUID;
import java.util.regex.Pattern;
import org.txkafka.SqlIdentifiers;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriteException;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.outbox.TraceContext;

/**
 * The default {@link OutboxWriter}: one INSERT (or one JDBC batch) on the caller's connection.
 *
 * <p>Invariants: it never commits, rolls back or toggles auto-commit; it refuses an auto-commit
 * connection, so a row can never become visible outside the caller's business transaction; a
 * broken or absent trace context never fails the caller's transaction (it is left out).
 */
public final class JdbcOutboxWriter implements OutboxWriter {
  /** W3C trace-context version 00 shape; other versions are accepted if they keep the prefix. */
  private static final Pattern TRACEPARENT =
      Pattern.compile("[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?");

  private static final int MAX_TRACESTATE_LENGTH = 512;

  private final String insertSql;
  private final TraceContext traceContext;

  /** A writer for the tables in {@code schema} that captures no trace context. */
  public JdbcOutboxWriter(String schema) {
    this(schema, TraceContext.NONE);
  }

  /** A writer for the tables in {@code schema} that stores {@code traceContext} with each row. */
  public JdbcOutboxWriter(String schema, TraceContext traceContext) {
    this.traceContext = Objects.requireNonNull(traceContext, "traceContext must not be null");
    String table = SqlIdentifiers.quoted("schema", schema) + ".txkafka_outbox";
    this.insertSql =
        "INSERT INTO "
            + table
            + " (message_id, share, topic, kafka_partition, record_key, payload, header_names,"
            + " header_values) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
  }

  @Override
  public UUID send(Connection connection, OutboxMessage message) {
    return sendAll(connection, List.of(message)).get(0);
  }

  @Override
  public List<UUID> sendAll(Connection connection, List<OutboxMessage> messages) {
    Objects.requireNonNull(connection, "connection must not be null");
    Objects.requireNonNull(messages, "messages must not be null");
    List<UUID> ids = new ArrayList<>(messages.size());
    if (messages.isEmpty()) {
      return ids;
    }
    try {
      if (connection.getAutoCommit()) {
        throw new IllegalStateException(
            "the outbox writer needs a connection in a transaction (auto-commit is on): the row"
                + " must commit or roll back with the business changes");
      }
      try (PreparedStatement insert = connection.prepareStatement(insertSql)) {
        for (OutboxMessage message : messages) {
          Objects.requireNonNull(message, "messages must not contain null");
          UUID id = MessageIds.newId();
          ids.add(id);
          bind(connection, insert, withTraceContext(message), id);
          if (messages.size() > 1) {
            insert.addBatch();
          }
        }
        if (messages.size() > 1) {
          insert.executeBatch();
        } else {
          insert.executeUpdate();
        }
      }
      return ids;
    } catch (SQLException e) {
      throw new OutboxWriteException(
          "could not insert " + messages.size() + " message(s) into the outbox: " + e.getMessage(),
          e);
    }
  }

  @Override
  public UUID send(EntityManager entityManager, OutboxMessage message) {
    Objects.requireNonNull(entityManager, "entityManager must not be null");
    if (!entityManager.isJoinedToTransaction()) {
      throw new IllegalStateException(
          "the outbox writer needs an EntityManager with an active transaction");
    }
    return JpaConnections.withConnection(entityManager, connection -> send(connection, message));
  }

  /**
   * Adds the caller's trace context as headers unless the message carries its own. A supplier that
   * throws or returns a malformed value is ignored: tracing must never cost a business commit.
   */
  private OutboxMessage withTraceContext(OutboxMessage message) {
    if (traceContext == TraceContext.NONE) {
      return message;
    }
    for (OutboxMessage.Header header : message.headers()) {
      if (TraceContext.TRACEPARENT.equals(header.name())) {
        return message;
      }
    }
    String traceparent;
    String tracestate;
    try {
      traceparent = traceContext.traceparent();
      tracestate = traceparent == null ? null : traceContext.tracestate();
    } catch (RuntimeException e) {
      return message;
    }
    if (traceparent == null || !TRACEPARENT.matcher(traceparent).matches()) {
      return message;
    }
    List<OutboxMessage.Header> headers = new ArrayList<>(message.headers());
    headers.add(
        new OutboxMessage.Header(
            TraceContext.TRACEPARENT, traceparent.getBytes(StandardCharsets.US_ASCII)));
    if (tracestate != null
        && !tracestate.isBlank()
        && tracestate.length() <= MAX_TRACESTATE_LENGTH) {
      headers.add(
          new OutboxMessage.Header(
              TraceContext.TRACESTATE, tracestate.getBytes(StandardCharsets.US_ASCII)));
    }
    return new OutboxMessage(
        message.topic(), message.key(), message.payload(), headers, message.partition());
  }

  private static void bind(
      Connection connection, PreparedStatement insert, OutboxMessage message, UUID id)
      throws SQLException {
    insert.setObject(1, id);
    insert.setShort(2, (short) Shares.shareOf(message.key(), id));
    insert.setString(3, message.topic());
    if (message.partition() == null) {
      insert.setNull(4, Types.INTEGER);
    } else {
      insert.setInt(4, message.partition());
    }
    insert.setBytes(5, message.key());
    insert.setBytes(6, message.payload());
    if (message.headers().isEmpty()) {
      insert.setNull(7, Types.ARRAY);
      insert.setNull(8, Types.ARRAY);
    } else {
      int size = message.headers().size();
      String[] names = new String[size];
      byte[][] values = new byte[size][];
      for (int i = 0; i < size; i++) {
        names[i] = message.headers().get(i).name();
        values[i] = message.headers().get(i).value();
      }
      insert.setArray(7, connection.createArrayOf("text", names));
      insert.setArray(8, connection.createArrayOf("bytea", values));
    }
  }
}
