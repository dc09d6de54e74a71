package org.txkafka.it.e2e;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Two services, each with its own database, chained through Kafka with nothing but txkafka:
 * orders writes an order and an outbox message in one transaction; its relay publishes; the
 * payments inbox writes a payment and an outbox reply in one transaction; the payments relay
 * publishes; the orders inbox marks the order paid. Rolled-back orders never travel, and records
 * resent with the same message id (as a relay does after a crash) are applied once.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class ChainedPipelineTest {
  private static final int ORDERS = 600;
  private static TestDatabase ordersDb;
  private static TestDatabase paymentsDb;

  @BeforeAll
  static void setUp() {
    ordersDb = TestPostgres.shared().createDatabase().migrate();
    paymentsDb = TestPostgres.shared().createDatabase().migrate();
    ordersDb.execute("CREATE TABLE orders (id BIGINT PRIMARY KEY, amount BIGINT NOT NULL,"
        + " status TEXT NOT NULL DEFAULT 'NEW', paid_count INT NOT NULL DEFAULT 0)");
    // No unique constraint: a payment applied twice shows as two rows instead of an error.
    paymentsDb.execute("CREATE TABLE payments (order_id BIGINT NOT NULL, amount BIGINT NOT NULL)");
  }

  @AfterAll
  static void tearDown() {
    ordersDb.close();
    paymentsDb.close();
  }

  @Test
  void orderToPaymentToConfirmationIsAppliedExactlyOnceAcrossTwoServices() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String ordersTopic = KafkaBroker.uniqueTopic("orders");
    String paymentsTopic = KafkaBroker.uniqueTopic("payments");
    broker.createTopic(ordersTopic, 3);
    broker.createTopic(paymentsTopic, 3);

    Inbox payments = Inbox.builder()
        .kafkaProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
        .kafkaProperty(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest")
        .groupId("payments-service")
        .topics(ordersTopic)
        .dataSource(paymentsDb.dataSource())
        .handler((record, context) -> {
          long orderId = Long.parseLong(record.keyAsString());
          long amount = Long.parseLong(record.valueAsString());
          try (PreparedStatement insert = context.connection()
              .prepareStatement("INSERT INTO payments (order_id, amount) VALUES (?, ?)")) {
            insert.setLong(1, orderId);
            insert.setLong(2, amount);
            insert.executeUpdate();
          }
          context.send(OutboxMessage.to(paymentsTopic).key(record.key())
              .payload("paid:" + amount).build());
        })
        .build();
    Inbox confirmations = Inbox.builder()
        .kafkaProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
        .kafkaProperty(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest")
        .groupId("orders-service")
        .topics(paymentsTopic)
        .dataSource(ordersDb.dataSource())
        .handler((record, context) -> {
          try (PreparedStatement update = context.connection().prepareStatement(
              "UPDATE orders SET status = 'PAID', paid_count = paid_count + 1 WHERE id = ?")) {
            update.setLong(1, Long.parseLong(record.keyAsString()));
            if (update.executeUpdate() != 1) {
              throw new IllegalStateException("payment for an unknown order " + record.keyAsString());
            }
          }
        })
        .build();
    OutboxRelay ordersRelay = relay(ordersDb, broker, "orders-relay");
    OutboxRelay paymentsRelay = relay(paymentsDb, broker, "payments-relay");
    payments.start();
    confirmations.start();
    ordersRelay.start();
    paymentsRelay.start();
    try {
      long committedSum = 0;
      int committed = 0;
      try (Connection connection = ordersDb.connect()) {
        connection.setAutoCommit(false);
        for (long id = 1; id <= ORDERS; id++) {
          long amount = id * 10;
          try (PreparedStatement insert =
              connection.prepareStatement("INSERT INTO orders (id, amount) VALUES (?, ?)")) {
            insert.setLong(1, id);
            insert.setLong(2, amount);
            insert.executeUpdate();
          }
          Outbox.writer().send(connection, OutboxMessage.to(ordersTopic).key(Long.toString(id))
              .payload(Long.toString(amount)).build());
          if (id % 7 == 0) {
            connection.rollback(); // the customer cancelled: neither order nor message exists
          } else {
            connection.commit();
            committed++;
            committedSum += amount;
          }
        }
      }

      // A relay that crashed after publishing resends with the same message ids: replay some of
      // what reached the orders topic.
      resendFirstRecords(broker, ordersTopic, 50);

      long deadline = System.nanoTime() + TimeUnit.MINUTES.toNanos(3);
      while (ordersDb.queryLong("SELECT count(*) FROM orders WHERE status = 'PAID'") < committed
          && System.nanoTime() < deadline) {
        Thread.sleep(200);
      }
      // Both inboxes read their topics to the end, resends included: a wrong extra application
      // would have landed by now.
      while ((storedOffsets(paymentsDb, "payments-service") < broker.endOffsetSum(ordersTopic)
              || storedOffsets(ordersDb, "orders-service") < broker.endOffsetSum(paymentsTopic))
          && System.nanoTime() < deadline) {
        Thread.sleep(200);
      }
      assertEquals(broker.endOffsetSum(ordersTopic), storedOffsets(paymentsDb, "payments-service"),
          "the payments inbox read the orders topic to its end");
      assertEquals(broker.endOffsetSum(paymentsTopic), storedOffsets(ordersDb, "orders-service"),
          "the orders inbox read the payments topic to its end");
      assertEquals(committed, ordersDb.queryLong("SELECT count(*) FROM orders"));
      assertEquals(committed, ordersDb.queryLong("SELECT count(*) FROM orders WHERE status = 'PAID'"),
          "every committed order was paid");
      assertEquals(0L, ordersDb.queryLong("SELECT count(*) FROM orders WHERE paid_count <> 1"),
          "no order confirmed twice");
      assertEquals(committed, paymentsDb.queryLong("SELECT count(*) FROM payments"),
          "one payment per committed order");
      assertEquals(committed, paymentsDb.queryLong("SELECT count(DISTINCT order_id) FROM payments"));
      assertEquals(committedSum, paymentsDb.queryLong("SELECT sum(amount) FROM payments"));
      assertEquals(0L, paymentsDb.queryLong(
          "SELECT count(*) FROM payments WHERE order_id % 7 = 0"), "rolled-back orders never paid");
      assertTrue(paymentsDb.queryLong("SELECT count(*) FROM txkafka_inbox") >= committed);
      assertEquals(0L, paymentsDb.queryLong("SELECT count(*) FROM txkafka_inbox_dead_letter"));
      assertEquals(0L, ordersDb.queryLong("SELECT count(*) FROM txkafka_inbox_dead_letter"));
    } finally {
      ordersRelay.close();
      paymentsRelay.close();
      payments.close();
      confirmations.close();
    }
    assertEquals(0L, ordersDb.queryLong("SELECT count(*) FROM txkafka_outbox"),
        "published rows are removed");
    assertEquals(0L, paymentsDb.queryLong("SELECT count(*) FROM txkafka_outbox"));
  }

  private static OutboxRelay relay(TestDatabase db, KafkaBroker broker, String name) {
    return Outbox.relay()
        .dataSource(db.dataSource())
        .producerProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
        .name(name)
        .build();
  }

  /** Reads the first {@code count} records of the topic and produces them again, headers and all. */
  private static long storedOffsets(TestDatabase db, String group) {
    return db.queryLong(
        "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE consumer_group = ?",
        group);
  }

  private static void resendFirstRecords(KafkaBroker broker, String topic, int count) {
    List<ConsumerRecord<byte[], byte[]>> seen = new ArrayList<>();
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(Map.of(
        ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers(),
        ConsumerConfig.GROUP_ID_CONFIG, "resender-" + topic,
        ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest"),
        new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
      consumer.subscribe(List.of(topic));
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (seen.size() < count && System.nanoTime() < deadline) {
        consumer.poll(Duration.ofMillis(200)).forEach(seen::add);
      }
    }
    assertTrue(seen.size() >= count, "the relay published at least " + count + " orders");
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(Map.of(
        ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers()),
        new ByteArraySerializer(), new ByteArraySerializer())) {
      for (ConsumerRecord<byte[], byte[]> record : seen.subList(0, count)) {
        assertTrue(record.headers().lastHeader(Outbox.MESSAGE_ID_HEADER) != null,
            "published with a message id: " + new String(record.key(), StandardCharsets.UTF_8));
        producer.send(new ProducerRecord<>(topic, null, record.key(), record.value(),
            record.headers()));
      }
      producer.flush();
    }
  }
}
