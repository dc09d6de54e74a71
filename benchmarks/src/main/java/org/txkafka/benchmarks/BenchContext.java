package org.txkafka.benchmarks;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.txkafka.outbox.Outbox;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;

/**
 * What every side of every row shares: the one database and the one broker of the run, and helpers
 * to make topics, business tables, connection pools and messages the same way for every side.
 */
final class BenchContext {
  final BenchConfig config;
  final TestDatabase db;
  final KafkaBroker broker;

  BenchContext(BenchConfig config, TestDatabase db, KafkaBroker broker) {
    this.config = config;
    this.db = db;
    this.broker = broker;
  }

  /**
   * A pool of {@code size} connections to the run's database, the same settings for every side
   * (batched inserts rewritten into multi-row statements). The caller closes it.
   */
  HikariDataSource pool(int size, String name) {
    HikariConfig hikari = new HikariConfig();
    String url = db.jdbcUrl();
    hikari.setJdbcUrl(url + (url.contains("?") ? "&" : "?") + "reWriteBatchedInserts=true");
    hikari.setUsername(db.user());
    hikari.setPassword(db.password());
    hikari.setMaximumPoolSize(size);
    hikari.setMinimumIdle(Math.min(size, 1));
    hikari.setPoolName("bench-" + name);
    return new HikariDataSource(hikari);
  }

  /** A new topic with the configured partitions. */
  String topic(String prefix) {
    String topic = KafkaBroker.uniqueTopic(prefix);
    broker.createTopic(topic, config.partitions());
    awaitLeaders(topic);
    return topic;
  }

  /**
   * Waits until every partition of a new topic has a leader: a producer that sends earlier gets
   * NOT_LEADER_OR_FOLLOWER and retries, which only adds noise to what is measured.
   */
  private void awaitLeaders(String topic) {
    long deadline = System.nanoTime() + Duration.ofSeconds(30).toNanos();
    while (System.nanoTime() < deadline) {
      try {
        TopicDescription description =
            broker.admin().describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS).get(topic);
        if (description.partitions().size() == config.partitions()
            && description.partitions().stream().allMatch(p -> p.leader() != null && !p.leader().isEmpty())) {
          sleep(Duration.ofMillis(200));
          return;
        }
      } catch (ExecutionException | TimeoutException e) {
        // not visible yet: ask again
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException("interrupted", e);
      }
      sleep(Duration.ofMillis(50));
    }
    throw new IllegalStateException("topic " + topic + " has no leader for every partition after 30 s");
  }

  /** A new, empty business table named {@code name}: the row every consuming side inserts. */
  String businessTable(String name) {
    execute(
        "DROP TABLE IF EXISTS " + name,
        "CREATE TABLE " + name + " (event_id BIGINT PRIMARY KEY, account TEXT NOT NULL,"
            + " amount BIGINT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())");
    return name;
  }

  void execute(String... statements) {
    try (Connection connection = db.connect();
        Statement statement = connection.createStatement()) {
      for (String sql : statements) {
        statement.execute(sql);
      }
    } catch (SQLException e) {
      throw new IllegalStateException("SQL failed: " + String.join("; ", statements), e);
    }
  }

  long count(String table) {
    try (Connection connection = db.connect();
        Statement statement = connection.createStatement();
        var rs = statement.executeQuery("SELECT count(*) FROM " + table)) {
      rs.next();
      return rs.getLong(1);
    } catch (SQLException e) {
      throw new IllegalStateException("count of " + table + " failed", e);
    }
  }

  /** Producer settings shared by every publishing side: the ones the outbox relay must use. */
  Properties producerProperties() {
    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers());
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    return props;
  }

  Map<String, Object> producerConfig() {
    Map<String, Object> map = new HashMap<>();
    producerProperties().forEach((k, v) -> map.put((String) k, v));
    return map;
  }

  /** Consumer settings shared by every consuming side (manual commits, from the start). */
  Properties consumerProperties(String group) {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers());
    props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    props.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    return props;
  }

  Map<String, Object> consumerConfig(String group) {
    Map<String, Object> map = new HashMap<>();
    consumerProperties(group).forEach((k, v) -> map.put((String) k, v));
    return map;
  }

  /**
   * Publishes messages {@code [0, set.count())} of {@code set} to {@code topic}, as the outbox
   * relay would (key, payload, message-id header), and waits for every acknowledgement.
   */
  void produce(String topic, MessageSet set) {
    Properties props = producerProperties();
    props.put(ProducerConfig.LINGER_MS_CONFIG, "20");
    props.put(ProducerConfig.BATCH_SIZE_CONFIG, "262144");
    AtomicReference<Exception> failure = new AtomicReference<>();
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
      producer.partitionsFor(topic);
      for (long i = 0; i < set.count(); i++) {
        producer.send(record(topic, set, i), (metadata, e) -> {
          if (e != null) {
            failure.compareAndSet(null, e);
          }
        });
      }
      producer.flush();
    }
    if (failure.get() != null) {
      throw new IllegalStateException("prefill of " + topic + " failed", failure.get());
    }
  }

  static ProducerRecord<byte[], byte[]> record(String topic, MessageSet set, long index) {
    ProducerRecord<byte[], byte[]> record =
        new ProducerRecord<>(topic, set.keyBytes(index), set.payload(index));
    record
        .headers()
        .add(Outbox.MESSAGE_ID_HEADER,
            set.messageId(index).toString().getBytes(StandardCharsets.UTF_8));
    return record;
  }

  /** Sum of the end offsets of every partition of {@code topic}: records published to it. */
  long endOffsetSum(String topic) {
    try {
      Map<TopicPartition, OffsetSpec> request = new HashMap<>();
      for (int partition = 0; partition < config.partitions(); partition++) {
        request.put(new TopicPartition(topic, partition), OffsetSpec.latest());
      }
      return broker.admin().listOffsets(request).all().get(10, TimeUnit.SECONDS).values().stream()
          .mapToLong(info -> info.offset())
          .sum();
    } catch (ExecutionException | TimeoutException e) {
      throw new IllegalStateException("end offsets of " + topic + " unavailable", e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted", e);
    }
  }

  /**
   * Waits until {@code topic} holds at least {@code expected} records; returns false on timeout.
   */
  boolean awaitPublished(String topic, long expected, Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (System.nanoTime() < deadline) {
      if (endOffsetSum(topic) >= expected) {
        return true;
      }
      // Often enough for the figures, rarely enough to cost the measured side nothing noticeable.
      sleep(Duration.ofMillis(10));
    }
    return false;
  }

  static void sleep(Duration duration) {
    try {
      Thread.sleep(duration.toMillis());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted", e);
    }
  }

  static String insertBusinessRow(String table) {
    return "INSERT INTO " + table + " (event_id, account, amount) VALUES (?, ?, ?)";
  }
}
