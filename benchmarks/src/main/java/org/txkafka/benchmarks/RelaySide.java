package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;

/** Our side of rows 3 and 4: the outbox relay (with its default settings) publishing the messages. */
final class RelaySide {
  private static final Duration PUBLISH_TIMEOUT = Duration.ofMinutes(30);

  private RelaySide() {}

  static OutboxMessage message(MessageSet set, String topic, long index) {
    return OutboxMessage.to(topic).key(set.keyBytes(index)).payload(set.payload(index)).build();
  }

  static OutboxRelay relay(BenchContext ctx, HikariDataSource pool, String name, boolean listenNotify) {
    return relay(ctx, pool, name, listenNotify, new OutboxRelay.Listener() {});
  }

  static OutboxRelay relay(
      BenchContext ctx,
      HikariDataSource pool,
      String name,
      boolean listenNotify,
      OutboxRelay.Listener listener) {
    return Outbox.relay()
        .dataSource(pool)
        .producerProperties(ctx.producerConfig())
        .listenNotify(listenNotify)
        .name(name)
        .listener(listener)
        .build();
  }

  /** Writes messages {@code [from, to)} in one transaction. */
  static void write(Connection connection, OutboxWriter writer, MessageSet set, String topic, int from, int to)
      throws SQLException {
    List<OutboxMessage> batch = new ArrayList<>(to - from);
    for (long i = from; i < to; i++) {
      batch.add(message(set, topic, i));
    }
    writer.sendAll(connection, batch);
    connection.commit();
  }

  /**
   * Row 3: the relay is running and holds its shares; the whole message set is written in one
   * transaction (not timed); the time runs from that commit until all are on Kafka.
   */
  static Outcome drain(BenchContext ctx, MessageSet set, String topic) throws SQLException {
    ctx.execute("TRUNCATE txkafka_outbox");
    OutboxWriter writer = Outbox.writer();
    try (HikariDataSource pool = ctx.pool(3, "relay-drain");
        OutboxRelay relay = relay(ctx, pool, "bench-relay-drain", true)) {
      relay.start();
      awaitShares(relay);
      long start;
      HeapMonitor heap;
      try (Connection connection = pool.getConnection()) {
        connection.setAutoCommit(false);
        for (int from = 0; from < set.count(); from += ctx.config.dbBatch()) {
          List<OutboxMessage> batch = new ArrayList<>();
          for (long i = from; i < Math.min(set.count(), from + ctx.config.dbBatch()); i++) {
            batch.add(message(set, topic, i));
          }
          writer.sendAll(connection, batch);
        }
        heap = HeapMonitor.start();
        connection.commit();
        start = System.nanoTime();
      }
      if (!ctx.awaitPublished(topic, set.count(), PUBLISH_TIMEOUT)) {
        throw new IllegalStateException("relay did not publish " + set.count() + " messages");
      }
      Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
      return new Outcome.Measured("outbox relay", set.count(), elapsed, null, heap.stop());
    }
  }

  /** Waits (bounded) until a lone relay holds every share, as the relay of a running service does. */
  static void awaitShares(OutboxRelay relay) {
    long waitUntil = System.nanoTime() + Duration.ofSeconds(15).toNanos();
    while (relay.ownedShares().size() < Outbox.SHARE_COUNT && System.nanoTime() < waitUntil) {
      BenchContext.sleep(Duration.ofMillis(20));
    }
  }

  /**
   * Row 4: the relay runs; one writer thread commits the messages {@code writerBatch} per
   * transaction; the time runs from the first write until all are on Kafka.
   */
  static Outcome live(BenchContext ctx, MessageSet set, String topic) throws SQLException {
    ctx.execute("TRUNCATE txkafka_outbox");
    OutboxWriter writer = Outbox.writer();
    try (HikariDataSource pool = ctx.pool(3, "relay-live");
        OutboxRelay relay = relay(ctx, pool, "bench-relay-live", true)) {
      relay.start();
      awaitShares(relay);
      HeapMonitor heap = HeapMonitor.start();
      long start = System.nanoTime();
      try (Connection connection = pool.getConnection()) {
        connection.setAutoCommit(false);
        for (int from = 0; from < set.count(); from += ctx.config.writerBatch()) {
          write(connection, writer, set, topic, from, Math.min(set.count(), from + ctx.config.writerBatch()));
        }
      }
      if (!ctx.awaitPublished(topic, set.count(), PUBLISH_TIMEOUT)) {
        throw new IllegalStateException("relay did not publish " + set.count() + " messages");
      }
      Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
      return new Outcome.Measured("outbox relay", set.count(), elapsed, null, heap.stop());
    }
  }
}
