package org.txkafka.inbox.internal;

import java.util.IdentityHashMap;
import java.util.Map;

/** Text of failures as stored in the database. */
final class Failures {
  private static final int MAX_LENGTH = 4000;

  private Failures() {}

  /** Class and message of the failure and its causes, at most 4000 characters. */
  static String describe(Throwable failure) {
    StringBuilder text = new StringBuilder();
    Map<Throwable, Boolean> seen = new IdentityHashMap<>();
    for (Throwable t = failure; t != null && seen.put(t, Boolean.TRUE) == null; t = t.getCause()) {
      if (text.length() > 0) {
        text.append("; caused by ");
      }
      text.append(t.getClass().getName());
      if (t.getMessage() != null) {
        text.append(": ").append(t.getMessage());
      }
    }
    return truncate(text.toString());
  }

  /**
   * {@code text} with each NUL character replaced by U+FFFD: PostgreSQL's text cannot hold NUL, and
   * a dead letter that cannot be stored would block its partition for good. Kafka header keys may
   * contain one.
   */
  static String textSafe(String text) {
    return text.replace('\u0000', '\uFFFD');
  }

  static String truncate(String text) {
    String clean = text.replace('\u0000', '?');
    return clean.length() <= MAX_LENGTH ? clean : clean.substring(0, MAX_LENGTH - 3) + "...";
  }
}
