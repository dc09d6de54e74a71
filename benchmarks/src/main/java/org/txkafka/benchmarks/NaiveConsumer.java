package org.txkafka.benchmarks;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.time.Duration;
import java.util.List;
import java.util.UUID;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;

/**
 * Baseline of row 1: the consumer most services start with. A plain {@link KafkaConsumer}, one JDBC
 * transaction per record inserting the business row, {@code commitSync()} after each poll.
 * At-least-once: a crash between the database commit and the offset commit applies records twice,
 * and nothing removes duplicates. It is measured only for speed.
 */
final class NaiveConsumer {
  private NaiveConsumer() {}

  static Outcome run(BenchContext ctx, String topic, String table, long limit, Duration timeout) {
    HeapMonitor heap = HeapMonitor.start();
    Latencies latencies = new Latencies();
    long start = System.nanoTime();
    long applied = 0;
    long deadline = start + timeout.toNanos();
    try (var pool = ctx.pool(1, "naive");
        KafkaConsumer<byte[], byte[]> consumer =
            new KafkaConsumer<>(ctx.consumerProperties("naive-" + UUID.randomUUID()))) {
      DataSource dataSource = pool;
      consumer.subscribe(List.of(topic));
      try (Connection connection = dataSource.getConnection();
          PreparedStatement insert =
              connection.prepareStatement(BenchContext.insertBusinessRow(table))) {
        connection.setAutoCommit(false);
        while (applied < limit) {
          if (System.nanoTime() > deadline) {
            throw new IllegalStateException(
                "naive consumer applied only " + applied + " of " + limit + " within " + timeout);
          }
          ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(100));
          for (ConsumerRecord<byte[], byte[]> record : records) {
            if (applied == limit) {
              break;
            }
            long begin = System.nanoTime();
            insert.setLong(1, MessageSet.eventId(record.value()));
            insert.setString(2, new String(record.key(), StandardCharsets.UTF_8));
            insert.setLong(3, MessageSet.amount(record.value()));
            insert.executeUpdate();
            connection.commit();
            latencies.add(System.nanoTime() - begin);
            applied++;
          }
          if (!records.isEmpty()) {
            consumer.commitSync();
          }
        }
      }
    } catch (SQLException e) {
      throw new IllegalStateException("naive consumer failed", e);
    }
    Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
    return new Outcome.Measured("naive consumer", applied, elapsed, latencies, heap.stop());
  }
}
