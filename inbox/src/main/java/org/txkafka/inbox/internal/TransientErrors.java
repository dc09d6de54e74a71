package org.txkafka.inbox.internal;

import java.sql.SQLException;
import java.sql.SQLRecoverableException;
import java.sql.SQLTransientException;
import java.util.IdentityHashMap;
import java.util.Map;
import org.postgresql.util.PSQLException;

/**
 * Recognises transient database errors by SQLState anywhere in a cause chain (also when a handler
 * or JPA wrapped them): connection exceptions (class 08), serialization failure (40001), deadlock
 * (40P01), administrator or crash shutdown and cannot-connect-now (57P01, 57P02, 57P03), too many
 * connections (53300), lock not available (55P03), and the JDBC transient/recoverable exception
 * types (a pool timing out while the database is down). Never by message text.
 */
public final class TransientErrors {
  private TransientErrors() {}

  /** True if {@code failure} or one of its causes is a transient database error. */
  public static boolean isTransient(Throwable failure) {
    Map<Throwable, Boolean> seen = new IdentityHashMap<>();
    for (Throwable t = failure; t != null && seen.put(t, Boolean.TRUE) == null; t = t.getCause()) {
      if (t instanceof SQLTransientException || t instanceof SQLRecoverableException) {
        return true;
      }
      if (t instanceof SQLException sql) {
        for (SQLException e = sql; e != null; e = e.getNextException()) {
          if (isTransientState(e.getSQLState())) {
            return true;
          }
          if (e.getNextException() == e) {
            break;
          }
        }
      }
    }
    return false;
  }

  /**
   * True if PostgreSQL ended the session because its transaction sat idle for too long ({@code
   * idle_in_transaction_session_timeout}: SQLState 25P03; {@code transaction_timeout} of
   * PostgreSQL 17: 25P04). The driver reports that end of the session as a connection failure
   * (08006, which alone reads as a transient outage), so the server's own code is read from its
   * error message. Not transient for the inbox: the handler left the database idle that long.
   */
  public static boolean isIdleTimeout(Throwable failure) {
    Map<Throwable, Boolean> seen = new IdentityHashMap<>();
    for (Throwable t = failure; t != null && seen.put(t, Boolean.TRUE) == null; t = t.getCause()) {
      if (t instanceof SQLException sql) {
        if (isIdleTimeoutState(sql.getSQLState())) {
          return true;
        }
        if (sql instanceof PSQLException server
            && server.getServerErrorMessage() != null
            && isIdleTimeoutState(server.getServerErrorMessage().getSQLState())) {
          return true;
        }
      }
    }
    return false;
  }

  private static boolean isIdleTimeoutState(String state) {
    return "25P03".equals(state) || "25P04".equals(state);
  }

  /** True if {@code failure} or one of its causes is an SQLException with {@code sqlState}. */
  public static boolean hasSqlState(Throwable failure, String sqlState) {
    Map<Throwable, Boolean> seen = new IdentityHashMap<>();
    for (Throwable t = failure; t != null && seen.put(t, Boolean.TRUE) == null; t = t.getCause()) {
      if (t instanceof SQLException sql && sqlState.equals(sql.getSQLState())) {
        return true;
      }
    }
    return false;
  }

  /** True for the SQLStates listed in the class comment. */
  public static boolean isTransientState(String state) {
    if (state == null) {
      return false;
    }
    return state.startsWith("08")
        || state.equals("40001")
        || state.equals("40P01")
        || state.equals("57P01")
        || state.equals("57P02")
        || state.equals("57P03")
        || state.equals("53300")
        || state.equals("55P03");
  }
}
