package org.txkafka.inbox.internal;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.sql.SQLException;
import java.sql.SQLTransientConnectionException;
import org.junit.jupiter.api.Test;

/** Which failures are retried forever without counting against a record. */
class TransientErrorsTest {

  @Test
  void connectionLossSerializationFailureDeadlockAndShutdownAreTransient() {
    for (String state :
        new String[] {"08006", "08001", "40001", "40P01", "57P01", "57P02", "57P03"}) {
      assertTrue(TransientErrors.isTransient(new SQLException("x", state)), state);
    }
    assertTrue(TransientErrors.isTransient(new SQLTransientConnectionException("pool timeout")));
  }

  @Test
  void transientStateIsFoundInsideAHandlersWrappedCauseChain() {
    Exception wrapped =
        new IllegalStateException("handler", new RuntimeException(new SQLException("x", "40P01")));
    assertTrue(TransientErrors.isTransient(wrapped));
  }

  @Test
  void constraintViolationsAndHandlerBugsAreNotTransient() {
    assertFalse(TransientErrors.isTransient(new SQLException("duplicate", "23505")));
    assertFalse(TransientErrors.isTransient(new SQLException("no state")));
    assertFalse(TransientErrors.isTransient(new IllegalArgumentException("bad payload")));
    assertFalse(TransientErrors.isTransient(null));
  }

  @Test
  void causeCyclesTerminate() {
    RuntimeException first = new RuntimeException("a");
    RuntimeException second = new RuntimeException("b", first);
    first.initCause(second);
    assertFalse(TransientErrors.isTransient(first));
  }
}
