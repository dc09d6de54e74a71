package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.sql.Connection;
import java.sql.SQLException;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.internal.DataSourceTransactionOwner;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The inbox's transactions on a DataSource give every connection back as it came: a pool's
 * connection that was not in auto-commit goes back not in auto-commit, also after work that
 * switched auto-commit on behind the inbox's back (on the driver's connection), so that the pool's
 * next user does not find its statements committing one by one.
 */
@Timeout(value = 1, unit = TimeUnit.MINUTES)
class DataSourceTransactionOwnerTest {
  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase();
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void connectionGoesBackInTheAutoCommitModeItCameIn() throws Exception {
    try (Connection physical = db.connect()) {
      for (boolean cameIn : new boolean[] {false, true}) {
        physical.setAutoCommit(cameIn);
        DataSourceTransactionOwner owner = new DataSourceTransactionOwner(pooledAs(physical));
        assertThrows(
            IllegalStateException.class,
            () ->
                owner.inTransaction(
                    scope -> {
                      scope.connection().setAutoCommit(true);
                      throw new IllegalStateException("the work fails after switching");
                    }));
        assertTrue(
            physical.getAutoCommit() == cameIn, "auto-commit back to " + cameIn + " after failure");
        // Work that returns normally: the commit fails (the driver refuses it in auto-commit).
        assertThrows(
            SQLException.class,
            () ->
                owner.inTransaction(
                    scope -> {
                      scope.connection().setAutoCommit(true);
                      return null;
                    }));
        assertTrue(
            physical.getAutoCommit() == cameIn,
            "auto-commit back to " + cameIn + " after a failed commit");
      }
      assertFalse(physical.isClosed());
    }
  }

  /**
   * Work that failed, and a rollback that failed too on a connection still usable: switching
   * auto-commit back on must not commit the work's open transaction (the driver commits when
   * auto-commit is switched on).
   */
  @Test
  void restoringAutoCommitAfterAFailedRollbackCommitsNothing() throws Exception {
    db.execute("CREATE TABLE owner_probe (id INT PRIMARY KEY)");
    try (Connection physical = db.connect()) {
      physical.setAutoCommit(true);
      boolean[] failNextRollback = {true};
      DataSourceTransactionOwner owner =
          new DataSourceTransactionOwner(pooledAs(physical, failNextRollback));
      assertThrows(
          IllegalStateException.class,
          () ->
              owner.inTransaction(
                  scope -> {
                    try (var statement = scope.connection().createStatement()) {
                      statement.execute("INSERT INTO owner_probe VALUES (1)");
                    }
                    throw new IllegalStateException("the work fails");
                  }));
      assertFalse(failNextRollback[0], "the first rollback was made to fail");
      assertTrue(physical.getAutoCommit(), "auto-commit back on");
      assertEquals(0L, db.queryLong("SELECT count(*) FROM owner_probe"), "nothing committed");
    }
  }

  /** A one-connection "pool": close() gives the connection back without closing it. */
  private static DataSource pooledAs(Connection physical) {
    return pooledAs(physical, new boolean[] {false});
  }

  /** As above; while {@code failNextRollback[0]} is set, one rollback() fails (and clears it). */
  private static DataSource pooledAs(Connection physical, boolean[] failNextRollback) {
    Connection borrowed =
        (Connection)
            Proxy.newProxyInstance(
                Connection.class.getClassLoader(),
                new Class<?>[] {Connection.class},
                (proxy, method, args) -> {
                  if (method.getName().equals("close")) {
                    return null;
                  }
                  if (method.getName().equals("isClosed")) {
                    return physical.isClosed();
                  }
                  if (method.getName().equals("rollback")
                      && args == null
                      && failNextRollback[0]) {
                    failNextRollback[0] = false;
                    throw new SQLException("rollback made to fail by the test");
                  }
                  try {
                    return method.invoke(physical, args);
                  } catch (InvocationTargetException e) {
                    throw e.getCause();
                  }
                });
    return (DataSource)
        Proxy.newProxyInstance(
            DataSource.class.getClassLoader(),
            new Class<?>[] {DataSource.class},
            (proxy, method, args) -> {
              if (method.getName().equals("getConnection")) {
                return borrowed;
              }
              throw new SQLException("not supported in this test: " + method.getName());
            });
  }
}
