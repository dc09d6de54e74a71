package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import jakarta.persistence.LockModeType;
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
            + " amount BIGINT NOT NULL)",
        "CREATE TABLE jpa_account (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)");
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
  /** How a record's handler debits the account after an earlier record of its batch did. */
  private enum Debit {
    /** find, then refresh with a row lock (the lock-and-reload idiom), then debit. */
    REFRESH_WITH_LOCK,
    /** clear the persistence context first, then find and debit. */
    CLEAR_THEN_FIND,
    /** an UPDATE on the inbox's connection, then a find of the same account and a debit. */
    JDBC_THEN_ENTITY
  }

  /**
   * Each of 40 records debits one account by 1, in batches of up to 40 on one partition, through
   * JPA; every handler, correct on its own, uses an idiom that assumes the changes of the records
   * before it are in the database: a refresh or a clear (which, with those changes still only in
   * the persistence context, discards them), or an UPDATE through the connection followed by an
   * entity read (which reads, and at the flush writes back, a stale balance). The inbox ends each
   * record's work with a flush and a clear, as if each record had its own transaction: the balance
   * ends at exactly 1000 - 40. Before, it ended higher while every record counted as applied.
   */
  @Test
  void eachRecordsEntityChangesAreInTheDatabaseBeforeTheNextRecordRuns() {
    for (Debit mode : Debit.values()) {
      KafkaBroker broker = KafkaBroker.shared();
      String topic = KafkaBroker.uniqueTopic("inbox-jpa-flush");
      broker.createTopic(topic, 1);
      String account = "acct-" + mode;
      db.execute("INSERT INTO jpa_account (id, balance) VALUES ('" + account + "', 1000)");
      List<Message> debits = InboxTestSupport.messages("debit-" + mode + "-", 40);
      InboxTestSupport.produce(broker, topic, debits);
      try (HikariDataSource dataSource = db.newDataSource(3);
          EntityManagerFactory emf = paymentsOn(dataSource);
          Inbox inbox =
              Inbox.builder()
                  .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                  .groupId("accounts-" + topic)
                  .topics(topic)
                  .entityManagerFactory(emf)
                  .maxBatchSize(40)
                  .handler(
                      (record, context) -> {
                        EntityManager em = context.entityManager();
                        switch (mode) {
                          case REFRESH_WITH_LOCK -> {
                            Account a = em.find(Account.class, account);
                            em.refresh(a, LockModeType.PESSIMISTIC_WRITE);
                            a.debit(1);
                          }
                          case CLEAR_THEN_FIND -> {
                            em.clear();
                            em.find(Account.class, account).debit(1);
                          }
                          case JDBC_THEN_ENTITY -> {
                            // Half the records debit through JDBC, half through the entity.
                            if (record.offset() % 2 == 0) {
                              try (var update =
                                  context
                                      .connection()
                                      .prepareStatement(
                                          "UPDATE jpa_account SET balance = balance - 1"
                                              + " WHERE id = ?")) {
                                update.setString(1, account);
                                update.executeUpdate();
                              }
                            } else {
                              em.find(Account.class, account).debit(1);
                            }
                          }
                        }
                      })
                  .build()) {
        inbox.start();
        await(
            "every debit consumed (" + mode + ")",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, "accounts-" + topic) == debits.size());
        assertEquals(
            1000 - debits.size(),
            db.queryLong("SELECT balance FROM jpa_account WHERE id = ?", account),
            mode + ": every debit in the balance, once");
        assertEquals(0, inbox.deadLetters(10).size(), mode + ": nothing dead-lettered");
      }
    }
  }

  /**
   * A handler marks the transaction rollback-only for one record (as a persistence exception it
   * catches does) and returns normally. Hibernate's commit of such a transaction rolls back and
   * returns without an error: the inbox took the batch for committed, and its records for applied,
   * while nothing of it was (on a group's first batch the Kafka offset mirror then skipped them
   * for good). Now that record fails like one that threw: it is dead-lettered, every other record
   * is applied once.
   */
  @Test
  void handlerThatMarksTheTransactionRollbackOnlyFailsItsRecordAndNothingIsLost() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-jpa-rollback-only");
    broker.createTopic(topic, 1);
    List<Message> orders = InboxTestSupport.messages("rbonly-", 50);
    InboxTestSupport.produce(broker, topic, orders);
    String marking = "rbonly-7";
    String group = "rbonly-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        EntityManagerFactory emf = paymentsOn(dataSource);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .entityManagerFactory(emf)
                .maxAttempts(2)
                .retryBackoff(Duration.ofMillis(10))
                .handler(
                    (record, context) -> {
                      EntityManager em = context.entityManager();
                      em.persist(
                          new Payment(record.messageId(), Long.parseLong(record.valueAsString())));
                      if (record.messageId().equals(marking)) {
                        em.getTransaction().setRollbackOnly();
                      }
                    })
                .build()) {
      inbox.start();
      await(
          "every order consumed",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == orders.size());
      String mine = " FROM jpa_payment WHERE order_id LIKE 'rbonly-%'";
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(*)" + mine), "all but one");
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(DISTINCT order_id)" + mine));
      assertEquals(0, db.queryLong("SELECT count(*)" + mine + " AND order_id = ?", marking));
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertEquals(marking, deadLetters.get(0).record().messageId());
      assertTrue(
          deadLetters.get(0).lastError().contains("rollback-only"),
          deadLetters.get(0).lastError());
    }
  }

  /**
   * A JPA handler that runs an SQL statement which fails, catches the error, changes its entity
   * and returns: the transaction is aborted, so the flush of that change (at the end of the
   * record) is refused. The
   * record is dead-lettered with a reason that says what the handler did (an SQL error caught and
   * ignored), not only PostgreSQL's "current transaction is aborted" wrapped by Hibernate; the
   * other records are applied once.
   */
  @Test
  void jpaHandlerThatSwallowsAnSqlErrorIsToldSoWhenTheFlushIsRefused() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-jpa-swallow");
    broker.createTopic(topic, 1);
    List<Message> orders = InboxTestSupport.messages("swallow-", 20);
    InboxTestSupport.produce(broker, topic, orders);
    String swallowing = "swallow-5";
    String group = "swallow-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        EntityManagerFactory emf = paymentsOn(dataSource);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .entityManagerFactory(emf)
                .maxAttempts(1)
                .handler(
                    (record, context) -> {
                      EntityManager em = context.entityManager();
                      Payment payment =
                          new Payment(record.messageId(), Long.parseLong(record.valueAsString()));
                      em.persist(payment); // IDENTITY: inserted at once
                      if (record.messageId().equals(swallowing)) {
                        em.unwrap(Session.class).doWork(connection -> {
                          try (var failing = connection.createStatement()) {
                            failing.execute("SELECT 1 / 0");
                          } catch (java.sql.SQLException ignored) {
                            // the mistake under test: the error is swallowed
                          }
                        });
                        payment.amount(0); // written by the flush at the end of the record
                      }
                    })
                .build()) {
      inbox.start();
      await(
          "every order consumed",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == orders.size());
      String mine = " FROM jpa_payment WHERE order_id LIKE 'swallow-%'";
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(*)" + mine), "all but one");
      assertEquals(orders.size() - 1, db.queryLong("SELECT count(DISTINCT order_id)" + mine));
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertEquals(swallowing, deadLetters.get(0).record().messageId());
      assertTrue(
          deadLetters.get(0).lastError().contains("an SQL error was caught and ignored"),
          deadLetters.get(0).lastError());
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
        // Seen by the seal, or before it, at the end of the record's work, by the rollback-only
        // mark Hibernate set when PostgreSQL refused the commit.
        String reason = deadLetters.get(0).lastError();
        assertTrue(
            reason.contains("ended the inbox's transaction")
                || reason.contains("a commit the handler tried itself"),
            mode + ": " + reason);
      }
    }
  }

  /** A Hibernate EntityManagerFactory of {@link Payment} on {@code dataSource}. */
  private static EntityManagerFactory paymentsOn(HikariDataSource dataSource) {
    return new HibernatePersistenceConfiguration("inbox-jpa-test")
        .managedClasses(Payment.class, Account.class)
        .property("hibernate.connection.datasource", dataSource)
        .createEntityManagerFactory();
  }
}
