package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.hibernate.jpa.HibernatePersistenceConfiguration;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The README's JPA example, run: a Hibernate EntityManagerFactory, a handler that persists an
 * entity and sends a follow-up message through the outbox, all in the inbox's transaction.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxJpaTest {
  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    db.execute(
        "CREATE TABLE jpa_payment (id BIGSERIAL PRIMARY KEY, order_id TEXT NOT NULL,"
            + " amount BIGINT NOT NULL)");
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void jpaHandlerEntityAndOutboxMessageCommitWithTheInboxRowOrNotAtAll() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-jpa");
    broker.createTopic(topic, 2);
    List<Message> orders = InboxTestSupport.messages("order-", 200);
    InboxTestSupport.produce(broker, topic, orders);
    String failing = "order-13";
    try (HikariDataSource dataSource = db.newDataSource(4);
        EntityManagerFactory emf =
            new HibernatePersistenceConfiguration("inbox-jpa-test")
                .managedClasses(Payment.class)
                .property("hibernate.connection.datasource", dataSource)
                .createEntityManagerFactory();
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId("payments-" + topic)
                .topics(topic)
                .entityManagerFactory(emf)
                .handler(
                    (record, context) -> {
                      EntityManager em = context.entityManager();
                      em.persist(
                          new Payment(record.messageId(), Long.parseLong(record.valueAsString())));
                      context.send(
                          OutboxMessage.to("payments.requested")
                              .key(record.messageId())
                              .payload(record.value())
                              .build());
                      if (record.messageId().equals(failing)) {
                        throw new IllegalArgumentException("order " + failing + " is invalid");
                      }
                    })
                .maxAttempts(2)
                .retryBackoff(Duration.ofMillis(10))
                .build()) {
      inbox.start();
      await(
          "every order to be consumed",
          Duration.ofSeconds(90),
          () ->
              db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic ="
                          + " ?",
                      topic)
                  == orders.size());
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(*) FROM jpa_payment"));
      assertEquals(
          orders.size() - 1,
          db.queryLong("SELECT count(DISTINCT order_id) FROM jpa_payment"),
          "one payment per order");
      assertEquals(
          orders.size() - 1,
          db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE topic = 'payments.requested'"),
          "one outbox message per applied order");
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM jpa_payment WHERE order_id = ?", failing),
          "the failing order's entity was rolled back");
      assertEquals(
          0,
          db.queryLong(
              "SELECT count(*) FROM txkafka_outbox WHERE topic = 'payments.requested'"
                  + " AND record_key = convert_to(?, 'UTF8')",
              failing),
          "the failing order's outbox message was rolled back");
      assertEquals(1, inbox.deadLetters(10).size(), "the failing order is a dead letter");
      assertEquals(
          InboxTestSupport.sum(orders) - 14, db.queryLong("SELECT sum(amount) FROM jpa_payment"));
    }
  }
}
