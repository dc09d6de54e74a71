package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.time.Duration;
import java.util.UUID;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ConcurrentSkipListMap;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.Collection;
import org.apache.kafka.common.TopicPartition;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.inbox.Inbox;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;

/**
 * Row 5: end-to-end latency at a steady offered load. Writers ({@code e2eWriters} connections side
 * by side, as a service's request threads) commit one outbox message per transaction, together at
 * {@code e2eRate} per second; the relay publishes; an inbox applies each as a
 * business row. Latency = the inbox's {@link InboxListener#onCommitted} for the record's offset
 * (called after its transaction committed) minus the writer's commit returned (one clock, this
 * JVM). The first second is warm-up and not counted. Run once with the relay's LISTEN/NOTIFY on and
 * once polling only (its default poll interval), each with its own topic, table and group.
 *
 * <p>The probe adds no work to the database: an earlier version had the business row's trigger
 * send a NOTIFY, and NOTIFY takes a cluster-wide lock at commit (held through the commit's flush),
 * so the probe's own commits queued behind the writer's and made the latency it measured.
 *
 * <p>The split, in milliseconds of the wall clock (one JVM, one clock): commit to the record's
 * Kafka timestamp (the relay's send, CreateTime) is the relay's part; from there to the inbox
 * handler's call is the flush, the broker and the consumer's fetch; the rest, to the commit, is the
 * inbox's transaction(s). Added to {@code notes} per side.
 */
final class EndToEnd {
  private EndToEnd() {}

  static Outcome run(BenchContext ctx, boolean listenNotify, java.util.List<String> notes) throws Exception {
    String label = listenNotify ? "relay LISTEN/NOTIFY" : "relay polling only";
    String suffix = listenNotify ? "notify" : "polling";
    String topic = ctx.topic("bench-e2e-" + suffix);
    String table = ctx.businessTable("bench_e2e_" + suffix);
    ctx.execute("TRUNCATE txkafka_outbox");
    int rate = ctx.config.e2eRate();
    int total = (int) Math.max(rate, (long) rate * ctx.config.e2eDuration().toSeconds());
    int warmup = Math.min(rate, total / 4);
    MessageSet set = ctx.config.messageSet(5).withCount(total);
    AtomicLongArray committedAt = new AtomicLongArray(total);
    AtomicLongArray committedAtMillis = new AtomicLongArray(total);
    AtomicLongArray sentAtMillis = new AtomicLongArray(total);
    AtomicLongArray handledAtMillis = new AtomicLongArray(total);
    Latencies relayPart = new Latencies();
    Latencies kafkaPart = new Latencies();
    Latencies inboxPart = new Latencies();
    Latencies latencies = new Latencies();
    int[] received = new int[1];
    // Records handled and not yet reported committed: partition -> offset -> event index.
    Map<TopicPartition, ConcurrentSkipListMap<Long, Integer>> handled = new ConcurrentHashMap<>();
    InboxHandler businessRow = InboxSide.businessRowHandler(table);
    InboxHandler handler =
        (record, context) -> {
          int index = (int) MessageSet.eventId(record.value());
          sentAtMillis.set(index, record.timestamp().toEpochMilli());
          handledAtMillis.set(index, System.currentTimeMillis());
          businessRow.handle(record, context);
          handled
              .computeIfAbsent(
                  new TopicPartition(record.topic(), record.partition()),
                  p -> new ConcurrentSkipListMap<>())
              .put(record.offset(), index);
        };
    CountDownLatch assigned = new CountDownLatch(1);
    InboxListener probe =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            assigned.countDown();
          }

          @Override
          public void onCommitted(TopicPartition partition, long nextOffset) {
            long now = System.nanoTime();
            long nowMillis = System.currentTimeMillis();
            ConcurrentSkipListMap<Long, Integer> pending = handled.get(partition);
            if (pending == null) {
              return;
            }
            Map<Long, Integer> done = pending.headMap(nextOffset);
            synchronized (latencies) {
              for (Integer index : done.values()) {
                received[0]++;
                if (index >= warmup) {
                  latencies.add(now - committedAt.get(index));
                  long relayMillis = sentAtMillis.get(index) - committedAtMillis.get(index);
                  relayPart.add(relayMillis * 1_000_000);
                  kafkaPart.add((handledAtMillis.get(index) - sentAtMillis.get(index)) * 1_000_000);
                  inboxPart.add((nowMillis - handledAtMillis.get(index)) * 1_000_000);
                }
              }
              done.clear();
              latencies.notifyAll();
            }
          }
        };

    RoundTimer rounds = new RoundTimer();
    try (HikariDataSource relayPool = ctx.pool(2, "e2e-relay");
        HikariDataSource inboxPool = ctx.pool(ctx.config.dbConnections() + 1, "e2e-inbox");
        HikariDataSource writerPool = ctx.pool(ctx.config.e2eWriters(), "e2e-writer");
        OutboxRelay relay = RelaySide.relay(ctx, relayPool, "bench-e2e-" + suffix, listenNotify, rounds);
        Inbox inbox =
            InboxSide.inbox(
                ctx.broker.bootstrapServers(), "bench-e2e-" + suffix + "-" + UUID.randomUUID(),
                topic, inboxPool, ctx.config.dbConnections(), handler,
                probe)) {
      relay.start();
      RelaySide.awaitShares(relay);
      inbox.start();
      // The group join is not part of the latency: wait for the assignment before the load.
      if (!assigned.await(60, TimeUnit.SECONDS)) {
        throw new IllegalStateException("the inbox got no partitions within 60 s");
      }

      OutboxWriter writer = Outbox.writer();
      HeapMonitor heap = HeapMonitor.start();
      long start = System.nanoTime();
      long interval = 1_000_000_000L / rate;
      int writers = ctx.config.e2eWriters();
      long[] behind = new long[writers];
      // Message i is due at start + i * interval; writer w commits the messages i with
      // i % writers == w, each in a transaction of its own, on a connection of its own.
      java.util.List<java.util.concurrent.Future<?>> running = new java.util.ArrayList<>();
      java.util.concurrent.ExecutorService writerThreads =
          java.util.concurrent.Executors.newFixedThreadPool(writers);
      try {
        for (int w = 0; w < writers; w++) {
          int self = w;
          running.add(
              writerThreads.submit(
                  () -> {
                    try (Connection connection = writerPool.getConnection()) {
                      connection.setAutoCommit(false);
                      for (int i = self; i < total; i += writers) {
                        long due = start + i * interval;
                        long wait = due - System.nanoTime();
                        if (wait > 0) {
                          Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
                        } else {
                          behind[self] = Math.max(behind[self], -wait);
                        }
                        writer.send(connection, RelaySide.message(set, topic, i));
                        connection.commit();
                        committedAt.set(i, System.nanoTime());
                        committedAtMillis.set(i, System.currentTimeMillis());
                      }
                    }
                    return null;
                  }));
        }
        for (java.util.concurrent.Future<?> future : running) {
          future.get();
        }
      } finally {
        writerThreads.shutdownNow();
      }
      long maxBehind = java.util.Arrays.stream(behind).max().orElse(0);
      Duration writing = Duration.ofNanos(System.nanoTime() - start);
      boolean complete = awaitCount(received, latencies, total, Duration.ofSeconds(60));
      Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
      if (!complete) {
        throw new IllegalStateException("only " + received[0] + " of " + total + " applied within 60 s");
      }
      synchronized (latencies) {
        notes.add(String.format(
            java.util.Locale.ROOT,
            "%s, split in ms (p50/p99): commit -> relay's send %.0f/%.0f, relay's send -> inbox handler %.0f/%.0f,"
                + " handler -> inbox commit %.0f/%.0f;"
                + " %d writers took %.1f s for %d s of load (at most %.0f ms behind the schedule)",
            label,
            relayPart.percentileMillis(50),
            relayPart.percentileMillis(99),
            kafkaPart.percentileMillis(50),
            kafkaPart.percentileMillis(99),
            inboxPart.percentileMillis(50),
            inboxPart.percentileMillis(99),
            writers,
            writing.toMillis() / 1000.0,
            ctx.config.e2eDuration().toSeconds(),
            maxBehind / 1e6));
        notes.add(label + ", relay rounds: " + rounds.summary());
      }
      return new Outcome.Measured(label, total - warmup, elapsed, latencies, heap.stop());
    }
  }

  /**
   * The relay's rounds, from its listener: rows per round, the time from the read's end to the
   * acknowledged rows' removal (send, flush, acks, delete), and the time from one round's end to the
   * next round's read's end (waiting for a notification, the read).
   */
  private static final class RoundTimer implements OutboxRelay.Listener {
    private final Latencies busy = new Latencies();
    private final Latencies between = new Latencies();
    private long rows;
    // Open rounds, oldest first: while rounds come back full, the next starts before the one
    // before it finished, and batchFinished reports the oldest.
    private final java.util.ArrayDeque<Long> started = new java.util.ArrayDeque<>();
    private long finishedAt;

    @Override
    public synchronized void batchStarting(java.util.Set<Integer> shares, int rows) {
      long startedAt = System.nanoTime();
      if (finishedAt != 0 && started.isEmpty()) {
        between.add(startedAt - finishedAt);
      }
      started.addLast(startedAt);
      this.rows += rows;
    }

    @Override
    public synchronized void batchFinished(
        java.util.Set<Integer> shares, int published, int parked, int failed) {
      finishedAt = System.nanoTime();
      Long startedAt = started.pollFirst();
      if (startedAt != null) {
        busy.add(finishedAt - startedAt);
      }
    }

    synchronized String summary() {
      return String.format(
          java.util.Locale.ROOT,
          "%d, %.1f rows each; send..delete ms p50/p99/max %.1f/%.1f/%.1f; end -> next read done ms"
              + " p50/p99/max %.1f/%.1f/%.1f",
          busy.count(),
          busy.count() == 0 ? 0.0 : (double) rows / busy.count(),
          busy.percentileMillis(50),
          busy.percentileMillis(99),
          busy.percentileMillis(100),
          between.percentileMillis(50),
          between.percentileMillis(99),
          between.percentileMillis(100));
    }
  }

  private static boolean awaitCount(int[] received, Object lock, int expected, Duration timeout)
      throws InterruptedException {
    long deadline = System.nanoTime() + timeout.toNanos();
    synchronized (lock) {
      while (received[0] < expected) {
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          return false;
        }
        lock.wait(Math.max(1, left / 1_000_000));
      }
      return true;
    }
  }
}
