package org.txkafka.it.inbox;

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

  /** A one-connection "pool": close() gives the connection back without closing it. */
  private static DataSource pooledAs(Connection physical) {
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
