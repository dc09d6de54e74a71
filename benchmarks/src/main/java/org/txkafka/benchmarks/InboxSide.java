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
import org.txkafka.inbox.InboxBatchHandler;
import org.txkafka.inbox.InboxBuilder;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.inbox.InboxRecord;

/**
 * Our side of rows 1, 2, 5 and 7: the inbox (default settings, concurrency = the connections a
 * side gets) applying each record as the same business row the baselines insert. Rows 1, 2 and 7
 * use a batch handler (one multi-row insert per batch); row 5, which measures the latency of single
 * records at a steady rate, keeps the per-record handler.
 */
final class InboxSide {
  private static final Duration APPLY_TIMEOUT = Duration.ofMinutes(30);

  private InboxSide() {}

  /** The per-record handler (row 5): one business row per record, on the inbox's connection. */
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

  /**
   * The batch handler (rows 1, 2 and 7): the same business rows, one per record, inserted with one
   * statement per call (unnest of three arrays), on the inbox's connection.
   */
  static InboxBatchHandler businessRowsHandler(String table) {
    String sql =
        "INSERT INTO " + table + " (event_id, account, amount)"
            + " SELECT * FROM unnest(?::bigint[], ?::text[], ?::bigint[])";
    return (records, context) -> {
      int size = records.size();
      Long[] eventIds = new Long[size];
      String[] accounts = new String[size];
      Long[] amounts = new Long[size];
      for (int i = 0; i < size; i++) {
        InboxRecord record = records.get(i);
        eventIds[i] = MessageSet.eventId(record.value());
        accounts[i] = new String(record.key(), StandardCharsets.UTF_8);
        amounts[i] = MessageSet.amount(record.value());
      }
      Connection connection = context.connection();
      try (PreparedStatement insert = connection.prepareStatement(sql)) {
        insert.setArray(1, connection.createArrayOf("int8", eventIds));
        insert.setArray(2, connection.createArrayOf("text", accounts));
        insert.setArray(3, connection.createArrayOf("int8", amounts));
        insert.executeUpdate();
      }
    };
  }

  /** An inbox applying with {@code handler} (rows 1, 2 and 7). */
  static Inbox inbox(
      String bootstrap,
      String group,
      String topic,
      DataSource dataSource,
      int concurrency,
      InboxBatchHandler handler) {
    return builder(bootstrap, group, topic, dataSource, concurrency).batchHandler(handler).build();
  }

  /** An inbox applying with the per-record {@code handler} (row 5). */
  static Inbox inbox(
      String bootstrap,
      String group,
      String topic,
      DataSource dataSource,
      int concurrency,
      InboxHandler handler,
      InboxListener listener) {
    return builder(bootstrap, group, topic, dataSource, concurrency)
        .handler(handler)
        .listener(listener)
        .build();
  }

  private static InboxBuilder builder(
      String bootstrap, String group, String topic, DataSource dataSource, int concurrency) {
    return Inbox.builder()
        .kafkaProperties(
            Map.of(
                ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap,
                ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest"))
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .concurrency(concurrency);
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
      try (Inbox inbox = inbox(ctx.broker.bootstrapServers(), group, topic, pool, connections, businessRowsHandler(table))) {
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
