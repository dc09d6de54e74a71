package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import java.sql.Connection;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.hibernate.Session;
import org.hibernate.jpa.HibernatePersistenceConfiguration;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.DeadLetter;
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
        EntityManagerFactory emf = paymentsOn(dataSource);
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
      String mine = " FROM jpa_payment WHERE order_id LIKE 'order-%'";
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(*)" + mine));
      assertEquals(
          orders.size() - 1,
          db.queryLong("SELECT count(DISTINCT order_id)" + mine),
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
          InboxTestSupport.sum(orders) - 14, db.queryLong("SELECT sum(amount)" + mine));
    }
  }
  /** How a JPA handler commits the inbox's transaction itself, then carries on. */
  private enum JpaCommit {
    /** commit() on the JDBC connection under the Hibernate session (Session.doWork). */
    SESSION_CONNECTION,
    /** The Hibernate session's own transaction (the entity manager's is refused). */
    SESSION_TRANSACTION
  }

  /**
   * A JPA handler that commits the inbox's transaction itself in the middle of a batch, ignores the
   * error and carries on: PostgreSQL refuses that commit (migration 1.0.5), so the record is
   * dead-lettered, every other record is applied exactly once, and (maxAttempts 1) no other record
   * is charged for it (without the seal, the early commit stored the batch's offset and inbox rows
   * with part of its entities, and the committing record's entity stayed committed).
   */
  @Test
  void jpaHandlerThatCommitsMidBatchCommitsNothingEarlyAndNoOtherRecordIsCharged() {
    for (JpaCommit mode : JpaCommit.values()) {
      KafkaBroker broker = KafkaBroker.shared();
      String topic = KafkaBroker.uniqueTopic("inbox-jpa-commit");
      broker.createTopic(topic, 2);
      String prefix = "jpacommit" + mode.ordinal() + "-";
      List<Message> orders = InboxTestSupport.messages(prefix, 200);
      InboxTestSupport.produce(broker, topic, orders);
      String committer = prefix + "13";
      try (HikariDataSource dataSource = db.newDataSource(4);
          EntityManagerFactory emf = paymentsOn(dataSource);
          Inbox inbox =
              Inbox.builder()
                  .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                  .groupId("payments-" + topic)
                  .topics(topic)
                  .entityManagerFactory(emf)
                  .handler(
                      (record, context) -> {
                        // Every record also uses the transaction's connection: after an earlier
                        // handler ended the transaction, this fails, and must not be charged to
                        // this record.
                        try (var statement = context.connection().createStatement()) {
                          statement.execute("SELECT 1");
                        }
                        EntityManager em = context.entityManager();
                        em.persist(
                            new Payment(
                                record.messageId(), Long.parseLong(record.valueAsString())));
                        if (record.messageId().equals(committer)) {
                          em.flush();
                          try {
                            Session session = em.unwrap(Session.class);
                            switch (mode) {
                              case SESSION_CONNECTION -> session.doWork(Connection::commit);
                              case SESSION_TRANSACTION -> session.getTransaction().commit();
                            }
                          } catch (RuntimeException ignored) {
                            // the handler carries on as if its commit had worked
                          }
                        }
                      })
                  .maxAttempts(1)
                  .retryBackoff(Duration.ofMillis(10))
                  .build()) {
        inbox.start();
        await(
            mode + ": every order to be consumed",
            Duration.ofSeconds(90),
            () ->
                db.queryLong(
                        "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE"
                            + " topic = ?",
                        topic)
                    == orders.size());
        String mine = " FROM jpa_payment WHERE order_id LIKE '" + prefix + "%'";
        assertEquals(orders.size() - 1, db.queryLong("SELECT count(*)" + mine), mode.name());
        assertEquals(
            orders.size() - 1,
            db.queryLong("SELECT count(DISTINCT order_id)" + mine),
            mode + ": one payment per order");
        assertEquals(
            0,
            db.queryLong("SELECT count(*) FROM jpa_payment WHERE order_id = ?", committer),
            mode + ": nothing of the committing record stays committed");
        List<DeadLetter> deadLetters = inbox.deadLetters(10);
        assertEquals(1, deadLetters.size(), mode + ": " + deadLetters);
        assertEquals(committer, deadLetters.get(0).record().messageId());
        assertTrue(
            deadLetters.get(0).lastError().contains("ended the inbox's transaction"),
            mode + ": " + deadLetters.get(0).lastError());
      }
    }
  }

  /** A Hibernate EntityManagerFactory of {@link Payment} on {@code dataSource}. */
  private static EntityManagerFactory paymentsOn(HikariDataSource dataSource) {
    return new HibernatePersistenceConfiguration("inbox-jpa-test")
        .managedClasses(Payment.class)
        .property("hibernate.connection.datasource", dataSource)
        .createEntityManagerFactory();
  }
}
