package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManager;
import java.sql.Connection;
import java.sql.SQLException;
import java.util.Objects;
import javax.sql.DataSource;

/** Resource-local JDBC transactions on connections of a {@link DataSource}. */
public final class DataSourceTransactionOwner implements TransactionOwner {
  private final DataSource dataSource;

  /** Transactions on connections of {@code dataSource}. */
  public DataSourceTransactionOwner(DataSource dataSource) {
    this.dataSource = Objects.requireNonNull(dataSource, "dataSource");
  }

  @Override
  public <T> T inTransaction(TransactionWork<T> work) throws Exception {
    try (Connection connection = dataSource.getConnection()) {
      boolean autoCommit = connection.getAutoCommit();
      if (autoCommit) {
        connection.setAutoCommit(false);
      }
      try {
        Scope scope = new Scope(connection);
        T result;
        try {
          result = work.run(scope);
        } catch (Throwable failure) {
          rollbackQuietly(connection, failure);
          throw failure;
        }
        if (scope.rollbackOnly) {
          connection.rollback();
        } else {
          connection.commit();
        }
        return result;
      } finally {
        // Back to the pool as it came, also when a handler switched auto-commit behind the
        // guarded connection (on the driver's connection, unwrapped).
        try {
          if (!connection.isClosed() && connection.getAutoCommit() != autoCommit) {
            if (autoCommit) {
              // Switching auto-commit on commits an open transaction: there must be none left (a
              // rollback that failed above). After a commit or rollback this sends nothing.
              connection.rollback();
            }
            connection.setAutoCommit(autoCommit);
          }
        } catch (SQLException ignored) {
          // A broken connection: the pool discards it when it is closed.
        }
      }
    }
  }

  private static void rollbackQuietly(Connection connection, Throwable failure) {
    try {
      connection.rollback();
    } catch (SQLException e) {
      failure.addSuppressed(e);
    }
  }

  private static final class Scope implements TransactionScope {
    private final Connection connection;
    private boolean rollbackOnly;

    Scope(Connection connection) {
      this.connection = connection;
    }

    @Override
    public Connection connection() {
      return connection;
    }

    @Override
    public EntityManager entityManager() {
      return null;
    }

    @Override
    public void setRollbackOnly() {
      rollbackOnly = true;
    }

    @Override
    public void endOfWork() {}
  }
}
