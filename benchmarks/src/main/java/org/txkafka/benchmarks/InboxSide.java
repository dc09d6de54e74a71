package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariDataSource;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.Duration;
import java.util.Map;
import java.util.UUID;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;

/**
 * Our side of rows 1, 2, 5 and 7: the inbox (default settings, concurrency = the connections a
 * side gets) applying each record as the same business row the baselines insert.
 */
final class InboxSide {
  private static final Duration APPLY_TIMEOUT = Duration.ofMinutes(30);

  private InboxSide() {}

  /** The handler every inbox side runs: one business row per record, on the inbox's connection. */
  static InboxHandler businessRowHandler(String table) {
    String sql = BenchContext.insertBusinessRow(table);
    return (record, context) -> {
      try (PreparedStatement insert = context.connection().prepareStatement(sql)) {
        insert.setLong(1, MessageSet.eventId(record.value()));
        insert.setString(2, new String(record.key(), StandardCharsets.UTF_8));
        insert.setLong(3, MessageSet.amount(record.value()));
        insert.executeUpdate();
      }
    };
  }

  static Inbox inbox(String bootstrap, String group, String topic, DataSource dataSource, int concurrency, InboxHandler handler) {
    return inbox(bootstrap, group, topic, dataSource, concurrency, handler, new InboxListener() {});
  }

  static Inbox inbox(
      String bootstrap,
      String group,
      String topic,
      DataSource dataSource,
      int concurrency,
      InboxHandler handler,
      InboxListener listener) {
    return Inbox.builder()
        .kafkaProperties(
            Map.of(
                ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest"))
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .concurrency(concurrency)
        .handler(handler)
        .listener(listener)
        .build();
  }

  /** Sum of the offsets the inbox stored for {@code group} on {@code topic}: records committed. */
  static long storedOffsets(DataSource dataSource, String group, String topic) throws SQLException {
    try (Connection connection = dataSource.getConnection();
        PreparedStatement query =
            connection.prepareStatement(
                "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset"
                    + " WHERE consumer_group = ? AND topic = ?")) {
      query.setString(1, group);
      query.setString(2, topic);
      try (ResultSet rs = query.executeQuery()) {
        rs.next();
        return rs.getLong(1);
      }
    }
  }

  /** Waits until the inbox committed {@code expected} records; false on timeout. */
  static boolean awaitApplied(DataSource dataSource, String group, String topic, long expected, Duration timeout)
      throws SQLException {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (System.nanoTime() < deadline) {
      if (storedOffsets(dataSource, group, topic) >= expected) {
        return true;
      }
      BenchContext.sleep(Duration.ofMillis(10));
    }
    return false;
  }

  /** Rows 1 and 2: the inbox applies every record of {@code topic} into {@code table}. */
  static Outcome apply(BenchContext ctx, String topic, String table, long expected) throws SQLException {
    String group = "bench-inbox-" + UUID.randomUUID();
    int connections = ctx.config.dbConnections();
    try (HikariDataSource pool = ctx.pool(connections + 1, "inbox");
        HikariDataSource probe = ctx.pool(1, "inbox-probe")) {
      HeapMonitor heap = HeapMonitor.start();
      long start = System.nanoTime();
      try (Inbox inbox = inbox(ctx.broker.bootstrapServers(), group, topic, pool, connections, businessRowHandler(table))) {
        inbox.start();
        if (!awaitApplied(probe, group, topic, expected, APPLY_TIMEOUT)) {
          throw new IllegalStateException("inbox did not apply " + expected + " records");
        }
        Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
        long rows = ctx.count(table);
        if (rows != expected) {
          throw new IllegalStateException("inbox applied " + rows + " business rows, expected " + expected);
        }
        return new Outcome.Measured("inbox", expected, elapsed, null, heap.stop());
      }
    }
  }
}
