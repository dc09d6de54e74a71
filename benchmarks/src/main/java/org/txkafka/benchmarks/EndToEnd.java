package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLongArray;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.Collection;
import org.apache.kafka.common.TopicPartition;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.txkafka.inbox.Inbox;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;

/**
 * Row 5: end-to-end latency at a steady offered load. A writer commits one outbox message per
 * transaction at {@code e2eRate} per second; the relay publishes; an inbox applies each as a
 * business row whose insert trigger sends a NOTIFY, which PostgreSQL delivers when the inbox's
 * transaction commits. Latency = NOTIFY received minus the writer's commit returned (one clock,
 * this JVM). The first second is warm-up and not counted. Run once with the relay's LISTEN/NOTIFY
 * on and once polling only (its default poll interval), each with its own topic, table and group.
 *
 * <p>The split, in milliseconds of the wall clock (one JVM, one clock): commit to the record's
 * Kafka timestamp (the relay's send, CreateTime) is the relay's part; the rest, to the NOTIFY of
 * the inbox's commit, is Kafka's and the inbox's part. Added to {@code notes} per side.
 */
final class EndToEnd {
  private EndToEnd() {}

  static Outcome run(BenchContext ctx, boolean listenNotify, java.util.List<String> notes) throws Exception {
    String label = listenNotify ? "relay LISTEN/NOTIFY" : "relay polling only";
    String suffix = listenNotify ? "notify" : "polling";
    String topic = ctx.topic("bench-e2e-" + suffix);
    String table = ctx.businessTable("bench_e2e_" + suffix);
    String channel = "bench_e2e_" + suffix;
    ctx.execute(
        "CREATE OR REPLACE FUNCTION " + table + "_notify() RETURNS trigger LANGUAGE plpgsql AS $$"
            + " BEGIN PERFORM pg_notify('" + channel + "', NEW.event_id::text); RETURN NULL; END $$",
        "CREATE TRIGGER " + table + "_notify AFTER INSERT ON " + table
            + " FOR EACH ROW EXECUTE FUNCTION " + table + "_notify()",
        "TRUNCATE txkafka_outbox");
    int rate = ctx.config.e2eRate();
    int total = (int) Math.max(rate, (long) rate * ctx.config.e2eDuration().toSeconds());
    int warmup = Math.min(rate, total / 4);
    MessageSet set = ctx.config.messageSet(5).withCount(total);
    AtomicLongArray committedAt = new AtomicLongArray(total);
    AtomicLongArray committedAtMillis = new AtomicLongArray(total);
    AtomicLongArray sentAtMillis = new AtomicLongArray(total);
    Latencies relayPart = new Latencies();
    Latencies inboxPart = new Latencies();
    InboxHandler businessRow = InboxSide.businessRowHandler(table);
    InboxHandler handler =
        (record, context) -> {
          sentAtMillis.set((int) MessageSet.eventId(record.value()), record.timestamp().toEpochMilli());
          businessRow.handle(record, context);
        };
    Latencies latencies = new Latencies();
    AtomicBoolean listening = new AtomicBoolean(true);
    AtomicReference<Exception> listenerFailure = new AtomicReference<>();
    int[] received = new int[1];
    CountDownLatch assigned = new CountDownLatch(1);
    InboxListener assignment =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            assigned.countDown();
          }
        };

    try (Connection listener = ctx.db.connect();
        HikariDataSource relayPool = ctx.pool(2, "e2e-relay");
        HikariDataSource inboxPool = ctx.pool(ctx.config.dbConnections() + 1, "e2e-inbox");
        HikariDataSource writerPool = ctx.pool(1, "e2e-writer");
        OutboxRelay relay = RelaySide.relay(ctx, relayPool, "bench-e2e-" + suffix, listenNotify);
        Inbox inbox =
            InboxSide.inbox(
                ctx.broker.bootstrapServers(), "bench-e2e-" + suffix + "-" + UUID.randomUUID(),
                topic, inboxPool, ctx.config.dbConnections(), handler,
                assignment)) {
      try (Statement statement = listener.createStatement()) {
        statement.execute("LISTEN " + channel);
      }
      PGConnection pg = listener.unwrap(PGConnection.class);
      Thread listenerThread =
          new Thread(
              () -> {
                try {
                  while (listening.get()) {
                    PGNotification[] notifications = pg.getNotifications(100);
                    long now = System.nanoTime();
                    long nowMillis = System.currentTimeMillis();
                    if (notifications == null) {
                      continue;
                    }
                    for (PGNotification notification : notifications) {
                      int index = Integer.parseInt(notification.getParameter());
                      synchronized (latencies) {
                        received[0]++;
                        if (index >= warmup) {
                          latencies.add(now - committedAt.get(index));
                          long relayMillis = sentAtMillis.get(index) - committedAtMillis.get(index);
                          relayPart.add(relayMillis * 1_000_000);
                          inboxPart.add((nowMillis - sentAtMillis.get(index)) * 1_000_000);
                        }
                        latencies.notifyAll();
                      }
                    }
                  }
                } catch (SQLException | RuntimeException e) {
                  listenerFailure.set(e);
                }
              },
              "e2e-listener");
      listenerThread.start();
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
      try (Connection connection = writerPool.getConnection()) {
        connection.setAutoCommit(false);
        for (int i = 0; i < total; i++) {
          long due = start + i * interval;
          long wait = due - System.nanoTime();
          if (wait > 0) {
            Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
          }
          writer.send(connection, RelaySide.message(set, topic, i));
          connection.commit();
          committedAt.set(i, System.nanoTime());
          committedAtMillis.set(i, System.currentTimeMillis());
        }
      }
      boolean complete = awaitCount(received, latencies, total, Duration.ofSeconds(60));
      Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
      listening.set(false);
      listenerThread.join();
      if (listenerFailure.get() != null) {
        throw listenerFailure.get();
      }
      if (!complete) {
        throw new IllegalStateException("only " + received[0] + " of " + total + " applied within 60 s");
      }
      synchronized (latencies) {
        notes.add(String.format(
            java.util.Locale.ROOT,
            "%s, split in ms (p50/p99): commit -> relay's send %.0f/%.0f, relay's send -> inbox commit %.0f/%.0f",
            label,
            relayPart.percentileMillis(50),
            relayPart.percentileMillis(99),
            inboxPart.percentileMillis(50),
            inboxPart.percentileMillis(99)));
      }
      return new Outcome.Measured(label, total - warmup, elapsed, latencies, heap.stop());
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
