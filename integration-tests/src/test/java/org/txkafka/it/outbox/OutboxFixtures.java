package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.function.BooleanSupplier;
import java.util.function.Predicate;
import java.util.function.Supplier;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.postgresql.ds.PGSimpleDataSource;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;

/** Helpers shared by the outbox tests: writing in transactions, reading topics, order checks. */
final class OutboxFixtures {
  static final OutboxWriter WRITER = Outbox.writer();

  private OutboxFixtures() {}

  /** A relay builder with short intervals, so that tests converge quickly. */
  static OutboxRelay.Builder relay(DataSource dataSource, KafkaBroker broker) {
    return Outbox.relay()
        .dataSource(dataSource)
        .producerProperty("bootstrap.servers", broker.bootstrapServers())
        .pollInterval(Duration.ofMillis(500))
        .leaseCheckInterval(Duration.ofMillis(200))
        .retryBackoff(Duration.ofMillis(50), Duration.ofSeconds(1))
        .closeTimeout(Duration.ofSeconds(10));
  }

  /** Starts a {@link RelayProcessMain} in a child JVM against {@code db} and {@code broker}. */
  static ChildJvm startRelayProcess(
      TestDatabase db, KafkaBroker broker, String name, int batchSize, String... jvmOptions) {
    ChildJvm.Builder builder = ChildJvm.builder(RelayProcessMain.class);
    for (String option : jvmOptions) {
      builder.jvmOption(option);
    }
    return builder
        .name(name)
        .maxHeap("192m")
        .jvmOption("-XX:+UseSerialGC")
        .jvmOption("-XX:TieredStopAtLevel=1")
        .args(
            db.jdbcUrl(),
            db.user() == null ? "-" : db.user(),
            db.password() == null ? "-" : db.password(),
            broker.bootstrapServers(),
            name,
            Integer.toString(batchSize))
        .start();
  }

  /** An unpooled data source: each getConnection() is a new session (what a relay needs). */
  static PGSimpleDataSource unpooled(TestDatabase db) {
    return unpooled(db.jdbcUrl(), db.user(), db.password());
  }

  static PGSimpleDataSource unpooled(String url, String user, String password) {
    PGSimpleDataSource dataSource = new PGSimpleDataSource();
    dataSource.setURL(url);
    if (user != null && !user.isEmpty() && !"-".equals(user)) {
      dataSource.setUser(user);
    }
    if (password != null && !password.isEmpty() && !"-".equals(password)) {
      dataSource.setPassword(password);
    }
    return dataSource;
  }

  /** A message whose payload is {@code key|seq}, so that order can be checked from the record. */
  static OutboxMessage numbered(String topic, String key, int seq) {
    return OutboxMessage.to(topic).key(key).payload(key + "|" + seq).build();
  }

  /** Inserts {@code messages} in one committed transaction and returns their ids. */
  static List<UUID> commit(DataSource dataSource, List<OutboxMessage> messages) {
    try (Connection connection = dataSource.getConnection()) {
      connection.setAutoCommit(false);
      try {
        List<UUID> ids = WRITER.sendAll(connection, messages);
        connection.commit();
        return ids;
      } catch (RuntimeException | SQLException e) {
        connection.rollback();
        throw e;
      }
    } catch (SQLException e) {
      throw new IllegalStateException(e);
    }
  }

  /** Waits until {@code condition} holds, polling every 50 ms; fails with {@code what} if not. */
  static void await(Duration timeout, String what, BooleanSupplier condition) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        fail("timed out after " + timeout + " waiting for: " + what);
      }
      sleep(50);
    }
  }

  static void await(Duration timeout, Supplier<String> what, BooleanSupplier condition) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        fail("timed out after " + timeout + " waiting for: " + what.get());
      }
      sleep(50);
    }
  }

  static void sleep(long millis) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException(e);
    }
  }

  /** A listener counting the times the relay lost its shares with its database session. */
  static OutboxRelay.Listener countingLostSessions(java.util.concurrent.atomic.AtomicInteger lost) {
    return new OutboxRelay.Listener() {
      @Override
      public void sharesReleased(Set<Integer> shares, boolean wasLost) {
        if (wasLost) {
          lost.incrementAndGet();
        }
      }
    };
  }

  /** Sessions holding advisory locks (share leases, wake-up slots) in {@code db}. */
  static long advisoryLockSessions(TestDatabase db) {
    return db.queryLong(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            + " WHERE l.locktype = 'advisory' AND d.datname = current_database()");
  }

  static long pendingRows(TestDatabase db) {
    return db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE parked_at IS NULL");
  }

  static String messageId(ConsumerRecord<byte[], byte[]> record) {
    Header header = record.headers().lastHeader(Outbox.MESSAGE_ID_HEADER);
    return header == null ? null : new String(header.value(), StandardCharsets.UTF_8);
  }

  static String text(byte[] bytes) {
    return bytes == null ? null : new String(bytes, StandardCharsets.UTF_8);
  }

  /**
   * Checks per-key order the way a receiver that removes duplicates by message id (the txkafka
   * inbox) sees it: per partition, in offset order, first copy of each message id only, the
   * sequence numbers of every key strictly increase. Returns the number of duplicate copies seen.
   */
  static int assertPerKeyOrderAfterDedup(List<ConsumerRecord<byte[], byte[]>> records) {
    Map<Integer, List<ConsumerRecord<byte[], byte[]>>> byPartition = new HashMap<>();
    for (ConsumerRecord<byte[], byte[]> record : records) {
      byPartition.computeIfAbsent(record.partition(), p -> new ArrayList<>()).add(record);
    }
    int duplicates = 0;
    Set<String> seen = new HashSet<>();
    for (List<ConsumerRecord<byte[], byte[]>> partition : byPartition.values()) {
      partition.sort((a, b) -> Long.compare(a.offset(), b.offset()));
      Map<String, Integer> lastSeq = new HashMap<>();
      for (ConsumerRecord<byte[], byte[]> record : partition) {
        if (!seen.add(messageId(record))) {
          duplicates++;
          continue;
        }
        String[] keyAndSeq = text(record.value()).split("\\|");
        String key = keyAndSeq[0];
        int seq = Integer.parseInt(keyAndSeq[1]);
        assertEquals(key, text(record.key()), "the payload names the record's key");
        Integer previous = lastSeq.put(key, seq);
        if (previous != null && previous >= seq) {
          fail(
              "key "
                  + key
                  + " out of order in partition "
                  + record.partition()
                  + ": seq "
                  + seq
                  + " at offset "
                  + record.offset()
                  + " after seq "
                  + previous);
        }
      }
    }
    return duplicates;
  }

  /**
   * What a compacted topic would keep: for every key, its last record (highest offset) must be its
   * latest row (highest sequence number in the payload). A late copy of an earlier row, landing
   * after the later rows of its key (a producer left running after its round was given up), would
   * end the key on a stale value; the per-key order check after dedup does not see that.
   */
  static void assertLatestRowOfEachKeyIsLast(List<ConsumerRecord<byte[], byte[]>> records) {
    Map<String, Integer> latest = new HashMap<>();
    Map<String, ConsumerRecord<byte[], byte[]>> last = new HashMap<>();
    for (ConsumerRecord<byte[], byte[]> record : records) {
      String key = text(record.key());
      int seq = Integer.parseInt(text(record.value()).split("\\|")[1]);
      latest.merge(key, seq, Math::max);
      ConsumerRecord<byte[], byte[]> before = last.get(key);
      if (before == null || record.offset() > before.offset()) {
        last.put(key, record);
      }
    }
    for (Map.Entry<String, ConsumerRecord<byte[], byte[]>> entry : last.entrySet()) {
      ConsumerRecord<byte[], byte[]> record = entry.getValue();
      assertEquals(
          latest.get(entry.getKey()).intValue(),
          Integer.parseInt(text(record.value()).split("\\|")[1]),
          "key " + entry.getKey() + " ends at offset " + record.offset() + " on a stale row");
    }
  }

  /** Reads a topic from the beginning, keeping every record it has seen. Not thread-safe. */
  static final class TopicReader implements AutoCloseable {
    private final KafkaConsumer<byte[], byte[]> consumer;
    private final List<ConsumerRecord<byte[], byte[]>> records = new ArrayList<>();
    private final Set<String> distinctIds = new HashSet<>();

    TopicReader(KafkaBroker broker, String topic) {
      Map<String, Object> props = new HashMap<>();
      props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers());
      props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
      props.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, 2000);
      props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
      props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
      consumer = new KafkaConsumer<>(props);
      List<TopicPartition> partitions = new ArrayList<>();
      for (PartitionInfo info : consumer.partitionsFor(topic, Duration.ofSeconds(30))) {
        partitions.add(new TopicPartition(topic, info.partition()));
      }
      consumer.assign(partitions);
      consumer.seekToBeginning(partitions);
    }

    /** Polls once for up to {@code millis}. */
    TopicReader poll(long millis) {
      for (ConsumerRecord<byte[], byte[]> record : consumer.poll(Duration.ofMillis(millis))) {
        records.add(record);
        distinctIds.add(messageId(record));
      }
      return this;
    }

    /** Polls until {@code done} holds for the records read so far. */
    TopicReader pollUntil(Duration timeout, String what, Predicate<TopicReader> done) {
      long deadline = System.nanoTime() + timeout.toNanos();
      while (!done.test(this)) {
        if (System.nanoTime() > deadline) {
          fail(
              "timed out after "
                  + timeout
                  + " waiting for "
                  + what
                  + " (read "
                  + records.size()
                  + " records, "
                  + distinctIds.size()
                  + " distinct ids)");
        }
        poll(200);
      }
      return this;
    }

    /** Polls until every id of {@code ids} has been read at least once. */
    TopicReader awaitIds(Duration timeout, Set<String> ids) {
      return pollUntil(
          timeout, ids.size() + " message ids", reader -> reader.distinctIds.containsAll(ids));
    }

    List<ConsumerRecord<byte[], byte[]>> records() {
      return records;
    }

    Set<String> distinctIds() {
      return distinctIds;
    }

    @Override
    public void close() {
      consumer.close();
    }
  }

  static Set<String> asStrings(List<UUID> ids) {
    Set<String> strings = new HashSet<>();
    for (UUID id : ids) {
      strings.add(id.toString());
    }
    return strings;
  }

  static void assertAllPresent(Set<String> expected, Set<String> actual) {
    Set<String> missing = new HashSet<>(expected);
    missing.removeAll(actual);
    assertTrue(missing.isEmpty(), missing.size() + " message ids never reached Kafka, e.g. "
        + missing.stream().limit(5).toList());
  }
}
