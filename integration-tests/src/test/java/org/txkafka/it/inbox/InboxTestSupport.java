package org.txkafka.it.inbox;

import java.nio.charset.StandardCharsets;
import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.outbox.Outbox;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;

/** Shared helpers of the inbox tests: the business table, producing records, waiting. */
final class InboxTestSupport {
  private InboxTestSupport() {}

  /**
   * The business table. Deliberately without a unique constraint: a record applied twice shows as
   * two rows (count and sum checks), it is never hidden by a constraint violation.
   */
  static void createLedger(TestDatabase db) {
    db.execute(
        "CREATE TABLE IF NOT EXISTS ledger (message_id TEXT NOT NULL, topic TEXT NOT NULL,"
            + " kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL, amount BIGINT NOT NULL,"
            + " applied_by TEXT NOT NULL)");
  }

  /** A handler that inserts one ledger row per record, amount = the record value as a number. */
  static InboxHandler ledgerHandler(String appliedBy) {
    return (record, context) -> {
      try (PreparedStatement insert =
          context
              .connection()
              .prepareStatement(
                  "INSERT INTO ledger (message_id, topic, kafka_partition, kafka_offset, amount,"
                      + " applied_by) VALUES (?, ?, ?, ?, ?, ?)")) {
        insert.setString(1, record.messageId());
        insert.setString(2, record.topic());
        insert.setInt(3, record.partition());
        insert.setLong(4, record.offset());
        insert.setLong(5, Long.parseLong(record.valueAsString()));
        insert.setString(6, appliedBy);
        insert.executeUpdate();
      }
    };
  }

  /** One record to produce. A null message id produces a record without the id header. */
  record Message(String key, String messageId, long amount) {}

  /** The messages m-0 .. m-(count-1), amounts 1 .. count, keys spread over 64 values. */
  static List<Message> messages(String prefix, int count) {
    List<Message> messages = new ArrayList<>(count);
    for (int i = 0; i < count; i++) {
      messages.add(new Message("key-" + (i % 64), prefix + i, i + 1));
    }
    return messages;
  }

  static long sum(List<Message> messages) {
    return messages.stream().mapToLong(Message::amount).sum();
  }

  static KafkaProducer<byte[], byte[]> producer(KafkaBroker broker) {
    return new KafkaProducer<>(
        Map.of(
            ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers(),
            ProducerConfig.ACKS_CONFIG, "all",
            ProducerConfig.LINGER_MS_CONFIG, "5"),
        new ByteArraySerializer(),
        new ByteArraySerializer());
  }

  static ProducerRecord<byte[], byte[]> record(String topic, Message message) {
    ProducerRecord<byte[], byte[]> record =
        new ProducerRecord<>(topic, bytes(message.key()), bytes(Long.toString(message.amount())));
    if (message.messageId() != null) {
      record.headers().add(Outbox.MESSAGE_ID_HEADER, bytes(message.messageId()));
    }
    return record;
  }

  /** Sends all messages and waits for the broker's acknowledgements. */
  /**
   * Sends the messages and checks that Kafka acknowledged every one. A send that failed (a batch
   * that expired while the broker did not answer) fails the test here, with its cause, instead of
   * leaving it to wait for records that were never written.
   */
  static void produce(KafkaBroker broker, String topic, List<Message> messages) {
    try (KafkaProducer<byte[], byte[]> producer = producer(broker)) {
      List<java.util.concurrent.Future<org.apache.kafka.clients.producer.RecordMetadata>> sent =
          new java.util.ArrayList<>(messages.size());
      for (Message message : messages) {
        sent.add(producer.send(record(topic, message)));
      }
      producer.flush();
      for (int i = 0; i < sent.size(); i++) {
        try {
          sent.get(i).get();
        } catch (java.util.concurrent.ExecutionException e) {
          throw new IllegalStateException(
              "test setup: Kafka did not take record " + i + " of " + sent.size() + " on " + topic,
              e.getCause());
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new IllegalStateException("interrupted while producing to " + topic, e);
        }
      }
    }
  }

  /**
   * Sends the messages over about {@code duration} from a background thread (so that they arrive
   * while consumers crash, rebalance or lose the database).
   */
  static Thread produceSlowly(
      KafkaBroker broker, String topic, List<Message> messages, Duration duration) {
    Thread thread =
        new Thread(
            () -> {
              int chunks = 40;
              int chunk = Math.max(1, messages.size() / chunks);
              long pause = duration.toMillis() / chunks;
              try (KafkaProducer<byte[], byte[]> producer = producer(broker)) {
                for (int i = 0; i < messages.size(); i++) {
                  producer.send(record(topic, messages.get(i)));
                  if ((i + 1) % chunk == 0) {
                    producer.flush();
                    Thread.sleep(pause);
                  }
                }
                producer.flush();
              } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
              }
            },
            "test-producer");
    thread.start();
    return thread;
  }

  static byte[] bytes(String text) {
    return text == null ? null : text.getBytes(StandardCharsets.UTF_8);
  }

  /** Waits until {@code condition} holds; throws naming {@code what} if it does not in time. */
  static void await(String what, Duration timeout, BooleanSupplier condition) {
    long deadline = System.nanoTime() + timeout.toNanos();
    while (!condition.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        throw new AssertionError("timed out after " + timeout + " waiting for " + what);
      }
      try {
        TimeUnit.MILLISECONDS.sleep(100);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new AssertionError("interrupted waiting for " + what, e);
      }
    }
  }

  /**
   * The sum of the next offsets stored for {@code group} over all its partitions: equal to the
   * number of records produced once every record of a fresh topic is committed.
   */
  static long storedOffsetSum(TestDatabase db, String group) {
    return db.queryLong(
        "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE consumer_group = ?",
        group);
  }

  /**
   * Kafka consumer properties for tests on {@code groupProtocol} ("classic" or "consumer"), as a
   * map the caller may change. With "consumer" (KIP-848) the broker owns the session timeout and
   * heartbeat interval (the test broker's: 6 s and 500 ms), so they are left out.
   */
  static Map<String, Object> consumerProperties(KafkaBroker broker, String groupProtocol) {
    Map<String, Object> properties = new java.util.HashMap<>(consumerProperties(broker));
    if (groupProtocol.equals("consumer")) {
      properties.remove("session.timeout.ms");
      properties.remove("heartbeat.interval.ms");
      properties.put("group.protocol", "consumer");
    }
    return properties;
  }

  /** Kafka consumer properties for tests: quick to notice dead members. */
  static Map<String, Object> consumerProperties(KafkaBroker broker) {
    return Map.of(
        "bootstrap.servers", broker.bootstrapServers(),
        "session.timeout.ms", "6000",
        "heartbeat.interval.ms", "1000",
        "max.poll.interval.ms", "30000");
  }
}
