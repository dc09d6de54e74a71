package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import jakarta.persistence.EntityTransaction;
import java.sql.Connection;
import java.util.Objects;
import org.txkafka.outbox.internal.JpaConnections;

/**
 * Resource-local JPA transactions: a new {@link EntityManager} per transaction, closed afterwards.
 * The inbox's SQL runs on the entity manager's own JDBC connection (held by the provider for the
 * whole transaction), so entity changes, inbox rows and the offset commit together.
 */
public final class JpaTransactionOwner implements TransactionOwner {
  private final EntityManagerFactory factory;

  /** Transactions of entity managers of {@code factory}. */
  public JpaTransactionOwner(EntityManagerFactory factory) {
    this.factory = Objects.requireNonNull(factory, "factory");
  }

  @Override
  public <T> T inTransaction(TransactionWork<T> work) throws Exception {
    EntityManager entityManager = factory.createEntityManager();
    try {
      EntityTransaction transaction = entityManager.getTransaction();
      transaction.begin();
      Scope scope;
      T result;
      try {
        Connection connection = JpaConnections.withConnection(entityManager, c -> c);
        scope = new Scope(connection, entityManager);
        result = work.run(scope);
      } catch (Throwable failure) {
        rollbackQuietly(transaction, failure);
        throw failure;
      }
      if (scope.rollbackOnly) {
        transaction.rollback();
      } else {
        // Hibernate's commit of a transaction marked rollback-only rolls back and returns
        // normally (unless JPA transaction compliance is on): a caller would take it for a commit.
        try {
          requireNotMarkedRollbackOnly(transaction);
        } catch (IllegalStateException e) {
          rollbackQuietly(transaction, e);
          throw e;
        }
        transaction.commit();
      }
      return result;
    } finally {
      entityManager.close();
    }
  }

  private static void rollbackQuietly(EntityTransaction transaction, Throwable failure) {
    try {
      if (transaction.isActive()) {
        transaction.rollback();
      }
    } catch (RuntimeException e) {
      failure.addSuppressed(e);
    }
  }

  private static final class Scope implements TransactionScope {
    private final Connection connection;
    private final EntityManager entityManager;
    private boolean rollbackOnly;

    Scope(Connection connection, EntityManager entityManager) {
      this.connection = connection;
      this.entityManager = entityManager;
    }

    @Override
    public Connection connection() {
      return connection;
    }

    @Override
    public EntityManager entityManager() {
      return entityManager;
    }

    @Override
    public void setRollbackOnly() {
      rollbackOnly = true;
    }

    @Override
    public void endOfWork() {
      requireNotMarkedRollbackOnly(entityManager.getTransaction());
      entityManager.flush();
      entityManager.clear();
    }
  }

  private static void requireNotMarkedRollbackOnly(EntityTransaction transaction) {
    if (transaction.getRollbackOnly()) {
      throw new IllegalStateException(
          "the transaction was marked rollback-only (EntityTransaction.setRollbackOnly, a"
              + " persistence exception the handler caught, or a commit the handler tried itself"
              + " and PostgreSQL refused): its commit would roll back everything, so the work"
              + " fails; the inbox owns the transaction: throw to fail a record instead");
    }
  }
}
