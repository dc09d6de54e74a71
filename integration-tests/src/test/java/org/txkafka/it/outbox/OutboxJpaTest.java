package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;
import static org.txkafka.it.outbox.OutboxFixtures.text;

import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import java.time.Duration;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import org.hibernate.jpa.HibernatePersistenceConfiguration;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** The README's JPA example, run: an entity and its message commit or roll back together. */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxJpaTest {
  private static final Duration WAIT = Duration.ofSeconds(60);

  private static TestDatabase db;
  private static HikariDataSource pool;
  private static EntityManagerFactory entityManagerFactory;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    pool = db.newDataSource(3);
    entityManagerFactory =
        new HibernatePersistenceConfiguration("outbox-jpa-test")
            .managedClass(PurchaseOrder.class)
            .property("jakarta.persistence.nonJtaDataSource", pool)
            .property("jakarta.persistence.schema-generation.database.action", "create")
            .createEntityManagerFactory();
  }

  @AfterAll
  static void tearDown() {
    entityManagerFactory.close();
    pool.close();
    db.close();
  }

  @Test
  void entityAndItsOutboxMessageCommitTogetherAndRollBackTogether() {
    String topic = KafkaBroker.uniqueTopic("orders");
    KafkaBroker broker = KafkaBroker.shared();
    broker.createTopic(topic, 2);
    OutboxWriter outbox = Outbox.writer();

    AtomicReference<UUID> committed = new AtomicReference<>();
    entityManagerFactory.runInTransaction(
        entityManager -> {
          PurchaseOrder order = new PurchaseOrder("alice", 4_200);
          entityManager.persist(order);
          committed.set(
              outbox.send(
                  entityManager,
                  OutboxMessage.to(topic)
                      .key(order.getId().toString())
                      .payload("{\"customer\":\"alice\",\"amountCents\":4200}")
                      .header("content-type", "application/json")
                      .build()));
        });

    UUID rolledBack;
    EntityManager entityManager = entityManagerFactory.createEntityManager();
    try {
      entityManager.getTransaction().begin();
      PurchaseOrder order = new PurchaseOrder("bob", 100);
      entityManager.persist(order);
      rolledBack =
          outbox.send(
              entityManager,
              OutboxMessage.to(topic).key(order.getId().toString()).payload("bob").build());
      entityManager.getTransaction().rollback();
    } finally {
      entityManager.close();
    }

    EntityManager outside = entityManagerFactory.createEntityManager();
    try {
      assertThrows(
          IllegalStateException.class,
          () -> outbox.send(outside, OutboxMessage.to(topic).payload("x").build()),
          "no transaction, no outbox row");
    } finally {
      outside.close();
    }

    assertEquals(1, db.queryLong("SELECT count(*) FROM purchase_order"));
    assertEquals(1, pendingRows(db), "only the committed transaction's row exists");
    try (OutboxRelay relay = relay(pool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(WAIT, Set.of(committed.get().toString()));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      reader.poll(300);
      assertEquals(1, reader.records().size());
      assertEquals(committed.get().toString(), OutboxFixtures.messageId(reader.records().get(0)));
      assertEquals(
          "{\"customer\":\"alice\",\"amountCents\":4200}",
          text(reader.records().get(0).value()));
      assertFalse(reader.distinctIds().contains(rolledBack.toString()));
    }
  }
}
