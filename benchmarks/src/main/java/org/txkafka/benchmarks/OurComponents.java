package org.txkafka.benchmarks;

/**
 * Our sides of the rows: the inbox (issue 3) and the outbox relay (issue 4). A component that is not
 * in the build answers {@link Outcome.NotRun} with the reason, so its rows print that they were not
 * run instead of a figure.
 */
final class OurComponents {
  private OurComponents() {}

  /** Row 1 and 2: the inbox applies every record of {@code topic} into {@code table}. */
  static Outcome inbox(BenchContext ctx, String topic, String table, long expected) throws Exception {
    return InboxSide.apply(ctx, topic, table, expected);
  }

  /** Row 3: the relay publishes a prefilled outbox of {@code set} to {@code topic}. */
  static Outcome relayDrain(BenchContext ctx, MessageSet set, String topic) throws Exception {
    return RelaySide.drain(ctx, set, topic);
  }

  /** Row 4: a writer commits {@code set} in batches while the relay publishes to {@code topic}. */
  static Outcome relayLive(BenchContext ctx, MessageSet set, String topic) throws Exception {
    return RelaySide.live(ctx, set, topic);
  }

  /** Row 5: commit to far-inbox-commit latency at a steady load; notify on, or polling only. */
  static Outcome endToEnd(BenchContext ctx, boolean notify, java.util.List<String> notes) throws Exception {
    return EndToEnd.run(ctx, notify, notes);
  }

  /** Row 7: peak heap of an inbox child JVM draining a backlog of {@code backlog} records. */
  static Outcome inboxDrainHeap(BenchContext ctx, int backlog) {
    return InboxHeap.run(ctx, backlog);
  }
}
