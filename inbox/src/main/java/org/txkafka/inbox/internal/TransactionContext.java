package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManager;
import java.sql.Connection;
import java.util.UUID;
import org.txkafka.inbox.InboxContext;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;

/**
 * The {@link InboxContext} over a {@link TransactionScope}. The connection and entity manager it
 * hands out refuse to commit, roll back or close ({@link TransactionGuards}).
 */
final class TransactionContext implements InboxContext {
  private final TransactionScope scope;
  private final OutboxWriter writer;
  private final String group;

  private Connection guardedConnection;
  private EntityManager guardedEntityManager;

  TransactionContext(TransactionScope scope, OutboxWriter writer, String group) {
    this.scope = scope;
    this.writer = writer;
    this.group = group;
  }

  @Override
  public Connection connection() {
    if (guardedConnection == null) {
      guardedConnection = TransactionGuards.connection(scope.connection());
    }
    return guardedConnection;
  }

  @Override
  public EntityManager entityManager() {
    EntityManager entityManager = scope.entityManager();
    if (entityManager == null) {
      throw new IllegalStateException(
          "this inbox was built with a DataSource: use connection(), or build it with an"
              + " EntityManagerFactory to get an EntityManager");
    }
    if (guardedEntityManager == null) {
      guardedEntityManager = TransactionGuards.entityManager(entityManager);
    }
    return guardedEntityManager;
  }

  @Override
  public UUID send(OutboxMessage message) {
    return writer.send(scope.connection(), message);
  }

  @Override
  public String consumerGroup() {
    return group;
  }
}
