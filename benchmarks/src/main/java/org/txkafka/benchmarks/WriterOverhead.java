package org.txkafka.benchmarks;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.time.Duration;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;

/**
 * Row 6: the cost of the outbox to the business transaction. The same transaction (insert one
 * order row, commit) on one connection, with and without one {@link OutboxWriter#send} of the same
 * message. The two sides run interleaved in blocks, after a warm-up, so that both see the same
 * noise of the shared machine. Latency is one transaction, begin to commit. No relay runs, so the
 * writer sends no NOTIFY (it notifies only while a relay waits). Two more sides, for diagnosis only
 * (no target): the outbox send while a session holds a relay's wake-up slot (what the wake-up
 * notification costs the writer when a relay waits), and the same INSERT with every trigger of the
 * outbox disabled (no commit-time order trigger): the floor of any outbox that writes a row in the
 * business transaction, one more statement and its index entries.
 */
final class WriterOverhead {
  private static final int BLOCK = 200;

  private WriterOverhead() {}

  /**
   * Returns {with outbox, without outbox, with outbox while a relay waits (NOTIFY), the insert
   * alone without any trigger}.
   */
  static Outcome[] run(BenchContext ctx, MessageSet set, String topic) throws SQLException {
    int transactions = ctx.config.writerTransactions();
    ctx.execute(
        "DROP TABLE IF EXISTS bench_order",
        "CREATE TABLE bench_order (id BIGINT PRIMARY KEY, customer TEXT NOT NULL,"
            + " amount BIGINT NOT NULL, status TEXT NOT NULL)");
    OutboxWriter writer = Outbox.writer();
    Latencies with = new Latencies();
    Latencies without = new Latencies();
    Latencies withNotify = new Latencies();
    Latencies insertOnly = new Latencies();
    long withNanos = 0;
    long withoutNanos = 0;
    long withNotifyNanos = 0;
    long insertOnlyNanos = 0;
    long nextId = 0;
    HeapMonitor heap = HeapMonitor.start();
    try (var pool = ctx.pool(2, "writer");
        Connection connection = pool.getConnection();
        Connection waitingRelay = pool.getConnection();
        PreparedStatement insert =
            connection.prepareStatement(
                "INSERT INTO bench_order (id, customer, amount, status) VALUES (?, ?, ?, 'NEW')")) {
      connection.setAutoCommit(false);
      // Warm-up: both paths, not measured.
      for (int i = 0; i < Math.min(500, transactions); i++) {
        businessTransaction(connection, insert, writer, set, topic, nextId++, i % 2 == 0);
      }
      int done = 0;
      while (done < transactions) {
        int block = Math.min(BLOCK, transactions - done);
        for (int side = 0; side < 4; side++) {
          boolean withOutbox = side != 1;
          if (side == 2) {
            wakeSlot(waitingRelay, true);
          } else if (side == 3) {
            setTriggers(connection, "USER", false);
          }
          for (int i = 0; i < block; i++) {
            long nanos =
                businessTransaction(connection, insert, writer, set, topic, nextId++, withOutbox);
            if (side == 0) {
              with.add(nanos);
              withNanos += nanos;
            } else if (side == 1) {
              without.add(nanos);
              withoutNanos += nanos;
            } else if (side == 2) {
              withNotify.add(nanos);
              withNotifyNanos += nanos;
            } else {
              insertOnly.add(nanos);
              insertOnlyNanos += nanos;
            }
          }
          if (side == 2) {
            wakeSlot(waitingRelay, false);
          } else if (side == 3) {
            setTriggers(connection, "USER", true);
          }
        }
        done += block;
      }
    }
    HeapMonitor.HeapPeak peak = heap.stop();
    ctx.execute("TRUNCATE txkafka_outbox", "DROP TABLE bench_order");
    return new Outcome[] {
      new Outcome.Measured(
          "tx + outbox send", with.count(), Duration.ofNanos(withNanos), with, peak),
      new Outcome.Measured(
          "tx without outbox", without.count(), Duration.ofNanos(withoutNanos), without, peak),
      new Outcome.Measured(
          "(outbox, relay waits)",
          withNotify.count(),
          Duration.ofNanos(withNotifyNanos),
          withNotify,
          peak),
      new Outcome.Measured(
          "(insert, no trigger)",
          insertOnly.count(),
          Duration.ofNanos(insertOnlyNanos),
          insertOnly,
          peak)
    };
  }

  /** Holds (or gives back) wake-up slot 0 of schema public, as a relay waiting for work does. */
  private static void wakeSlot(Connection session, boolean hold) throws SQLException {
    try (var statement = session.createStatement()) {
      statement.execute(
          "SELECT pg_advisory_"
              + (hold ? "lock" : "unlock")
              + "(hashtextextended('public/wake/0', 0))");
    }
  }

  /** {@code which}: a trigger's name, or USER for every trigger of the outbox table. */
  private static void setTriggers(Connection connection, String which, boolean enabled)
      throws SQLException {
    try (var statement = connection.createStatement()) {
      statement.execute(
          "ALTER TABLE txkafka_outbox " + (enabled ? "ENABLE" : "DISABLE") + " TRIGGER " + which);
    }
    connection.commit();
  }

  private static long businessTransaction(
      Connection connection,
      PreparedStatement insert,
      OutboxWriter writer,
      MessageSet set,
      String topic,
      long id,
      boolean withOutbox)
      throws SQLException {
    long begin = System.nanoTime();
    insert.setLong(1, id);
    insert.setString(2, set.key(id));
    insert.setLong(3, set.amount(id));
    insert.executeUpdate();
    if (withOutbox) {
      writer.send(
          connection,
          OutboxMessage.to(topic).key(set.keyBytes(id)).payload(set.payload(id)).build());
    }
    connection.commit();
    return System.nanoTime() - begin;
  }
}
