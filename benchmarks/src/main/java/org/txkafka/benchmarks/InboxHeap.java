package org.txkafka.benchmarks;

import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.txkafka.testkit.ChildJvm;

/**
 * Row 7, the parent side: publishes a backlog of records, then has an inbox in a child JVM with a
 * fixed {@code -Xmx} ({@link InboxDrainProcess}) drain it, and reads its peak heap.
 */
final class InboxHeap {
  private static final Pattern RESULT =
      Pattern.compile(
          "RESULT count=(\\d+) elapsedNanos=(\\d+) peakUsed=(\\d+) peakLive=(-?\\d+)"
              + " liveSamples=([0-9,]*)");

  private InboxHeap() {}

  static Outcome run(BenchContext ctx, int backlog) {
    MessageSet set = ctx.config.messageSet(7).withCount(backlog);
    String topic = ctx.topic("bench-backlog-" + backlog);
    ctx.produce(topic, set);
    String table = ctx.businessTable("bench_event_backlog_" + backlog);
    try (ChildJvm child =
        ChildJvm.builder(InboxDrainProcess.class)
            .name("inbox-drain-" + backlog)
            .maxHeap(ctx.config.heapMax())
            .systemProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn")
            .args(
                ctx.db.jdbcUrl(),
                ctx.db.user() == null ? "" : ctx.db.user(),
                ctx.db.password() == null ? "" : ctx.db.password(),
                ctx.broker.bootstrapServers(),
                topic,
                table,
                Long.toString(backlog),
                Integer.toString(ctx.config.dbConnections()))
            .start()) {
      String line = child.awaitLine("RESULT ", Duration.ofMinutes(40));
      Matcher matcher = RESULT.matcher(line);
      if (!matcher.find()) {
        throw new IllegalStateException("unreadable result line: " + line);
      }
      child.waitFor(Duration.ofMinutes(1));
      long rows = ctx.count(table);
      if (rows != backlog) {
        throw new IllegalStateException("inbox applied " + rows + " rows, expected " + backlog);
      }
      ctx.execute("DROP TABLE " + table);
      return new Outcome.Measured(
          "inbox backlog " + backlog,
          Long.parseLong(matcher.group(1)),
          Duration.ofNanos(Long.parseLong(matcher.group(2))),
          null,
          new HeapMonitor.HeapPeak(
              Long.parseLong(matcher.group(3)),
              Long.parseLong(matcher.group(4)),
              matcher.group(5).isEmpty()
                  ? java.util.List.of()
                  : java.util.Arrays.stream(matcher.group(5).split(","))
                      .map(Long::valueOf)
                      .toList()));
    }
  }
}
