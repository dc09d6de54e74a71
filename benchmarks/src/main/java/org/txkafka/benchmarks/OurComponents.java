package org.txkafka.benchmarks;

/**
 * Our sides of the rows: the inbox (issue 3) and the outbox relay (issue 4). A component that is not
 * in the build yet answers {@link Outcome.NotRun} with the reason, so its rows print that they were
 * not run instead of a figure.
 */
final class OurComponents {
  static final String INBOX_MISSING = "the inbox (issue 3) is not in this build yet";
  static final String RELAY_MISSING = "the outbox relay (issue 4) is not in this build yet";

  private OurComponents() {}

  /** Row 1 and 2: the inbox applies every record of {@code topic} into {@code table}. */
  static Outcome inbox(BenchContext ctx, String topic, String table, long expected) {
    return new Outcome.NotRun("inbox", INBOX_MISSING);
  }

  /** Row 3: the relay publishes a prefilled outbox of {@code set} to {@code topic}. */
  static Outcome relayDrain(BenchContext ctx, MessageSet set, String topic) {
    return new Outcome.NotRun("outbox relay", RELAY_MISSING);
  }

  /** Row 4: a writer commits {@code set} in batches while the relay publishes to {@code topic}. */
  static Outcome relayLive(BenchContext ctx, MessageSet set, String topic) {
    return new Outcome.NotRun("outbox relay", RELAY_MISSING);
  }

  /** Row 5: commit to far-inbox-commit latency at a steady load; notify on, or polling only. */
  static Outcome endToEnd(BenchContext ctx, boolean notify) {
    String label = notify ? "relay LISTEN/NOTIFY" : "relay polling only";
    return new Outcome.NotRun(label, RELAY_MISSING + "; " + INBOX_MISSING);
  }

  /** Row 7: peak heap of an inbox child JVM draining a backlog of {@code backlog} records. */
  static Outcome inboxDrainHeap(BenchContext ctx, int backlog) {
    return new Outcome.NotRun("inbox backlog " + backlog, INBOX_MISSING);
  }
}
