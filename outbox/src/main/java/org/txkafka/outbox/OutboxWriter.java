package org.txkafka.outbox;

import jakarta.persistence.EntityManager;
import java.sql.Connection;
import java.util.List;
import java.util.UUID;

/**
 * Writes outgoing messages into the outbox table inside the caller's transaction. Nothing is
 * published unless that transaction commits; the relay ({@link OutboxRelay}) publishes committed
 * rows. The writer never commits, rolls back or changes the auto-commit mode of the connection it is
 * given. Obtain one with {@link Outbox#writer()}; instances are immutable and thread-safe.
 */
public interface OutboxWriter {

  /**
   * Inserts {@code message} into the outbox on {@code connection}, in its current transaction.
   *
   * @return the message id the relay publishes in the {@link Outbox#MESSAGE_ID_HEADER} header
   * @throws IllegalStateException if the connection is in auto-commit mode (the row would be
   *     visible on its own, outside any business transaction)
   * @throws java.io.UncheckedIOException never; SQL errors are thrown as {@link
   *     OutboxWriteException} with the {@link java.sql.SQLException} as the cause
   */
  UUID send(Connection connection, OutboxMessage message);

  /**
   * Inserts all {@code messages} in one batch on {@code connection}, in its current transaction,
   * in list order (which is their per-key publish order).
   *
   * @return the message ids, in the same order
   * @throws IllegalStateException if the connection is in auto-commit mode
   */
  List<UUID> sendAll(Connection connection, List<OutboxMessage> messages);

  /**
   * Inserts {@code message} on the JDBC connection of {@code entityManager}'s running transaction
   * (Hibernate's {@code Session.doReturningWork}, or {@code unwrap(Connection.class)} for other
   * providers).
   *
   * @return the message id
   * @throws IllegalStateException if the entity manager has no active transaction
   */
  UUID send(EntityManager entityManager, OutboxMessage message);
}
