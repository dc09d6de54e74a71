package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Locale;
import java.util.UUID;
import org.txkafka.inbox.Inbox;

/**
 * Row 7, the child JVM: an inbox with its default settings drains a backlog into the business
 * table, while a full collection every 200 ms measures the live heap. Prints one line {@code RESULT
 * count=N elapsedNanos=T peakUsed=B peakLive=B liveSamples=B,B,...} and exits 0, or exits 1 on failure (and at once on
 * OutOfMemoryError, which the parent reports).
 *
 * <p>Arguments: {@code jdbcUrl user password bootstrap topic table expected concurrency}.
 */
public final class InboxDrainProcess {
  private InboxDrainProcess() {}

  /** Entry point of the child JVM. */
  public static void main(String[] args) throws Exception {
    String jdbcUrl = args[0];
    String user = args[1];
    String password = args[2];
    String bootstrap = args[3];
    String topic = args[4];
    String table = args[5];
    long expected = Long.parseLong(args[6]);
    int concurrency = Integer.parseInt(args[7]);
    HikariConfig hikari = new HikariConfig();
    hikari.setJdbcUrl(jdbcUrl);
    hikari.setUsername(user.isEmpty() ? null : user);
    hikari.setPassword(password.isEmpty() ? null : password);
    hikari.setMaximumPoolSize(concurrency + 2);
    String group = "bench-drain-" + UUID.randomUUID();
    Thread collector =
        new Thread(
            () -> {
              while (!Thread.currentThread().isInterrupted()) {
                try {
                  Thread.sleep(200);
                } catch (InterruptedException e) {
                  return;
                }
                System.gc();
              }
            },
            "live-set-probe");
    collector.setDaemon(true);
    try (HikariDataSource pool = new HikariDataSource(hikari)) {
      HeapMonitor heap = HeapMonitor.start();
      collector.start();
      long start = System.nanoTime();
      try (Inbox inbox =
          InboxSide.inbox(bootstrap, group, topic, pool, concurrency, InboxSide.businessRowsHandler(table))) {
        inbox.start();
        if (!InboxSide.awaitApplied(pool, group, topic, expected, Duration.ofMinutes(30))) {
          throw new IllegalStateException("inbox did not apply " + expected + " records");
        }
        long elapsed = System.nanoTime() - start;
        collector.interrupt();
        HeapMonitor.HeapPeak peak = heap.stop();
        System.out.printf(
            Locale.ROOT,
            "RESULT count=%d elapsedNanos=%d peakUsed=%d peakLive=%d liveSamples=%s%n",
            expected,
            elapsed,
            peak.peakUsedBytes(),
            peak.peakLiveBytes(),
            peak.liveSamples().stream()
                .map(String::valueOf)
                .collect(java.util.stream.Collectors.joining(",")));
        System.out.flush();
      }
    }
    System.exit(0);
  }
}
