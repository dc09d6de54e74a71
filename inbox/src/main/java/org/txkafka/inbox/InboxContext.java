package org.txkafka.inbox;

import jakarta.persistence.EntityManager;
import java.sql.Connection;
import java.util.UUID;
import org.txkafka.outbox.OutboxMessage;

/**
 * The transaction a handler runs in. Valid only during {@link InboxHandler#handle}; not
 * thread-safe. The handler never commits, rolls back or closes anything it gets from here.
 */
public interface InboxContext {

  /**
   * The JDBC connection of the running transaction (auto-commit off). With an {@code
   * EntityManagerFactory} it is the entity manager's own connection, so JDBC and JPA writes share
   * the transaction; flush the entity manager first if SQL must see pending entity changes.
   */
  Connection connection();

  /**
   * The entity manager of the running transaction.
   *
   * @throws IllegalStateException if the inbox was built with a {@code DataSource} instead of an
   *     {@code EntityManagerFactory}
   */
  EntityManager entityManager();

  /**
   * Writes {@code message} into the outbox in this transaction: it is published only if the
   * transaction commits (consume, change state and produce, effectively once).
   *
   * @return the id the relay publishes in the message id header
   * @throws org.txkafka.outbox.OutboxWriteException if the insert fails
   */
  UUID send(OutboxMessage message);

  /** The consumer group this inbox consumes for. */
  String consumerGroup();
}
