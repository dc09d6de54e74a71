package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.migrations.TxKafkaMigrations;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * An inbox of this version started before migration 1.0.5 ran (the README's upgrade order not
 * followed): it must start no work at all, not even the batch and start marks of 1.0.4, whose
 * every commit would then be refused (enough ownership changes would dead-letter a record that
 * never ran). Once the migration runs, it applies every record once.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxSchemaUpgradeTest {
  private TestDatabase db;

  @BeforeEach
  void createDatabase() {
    db = TestPostgres.shared().createDatabase();
    TxKafkaMigrations.configure(db.dataSource(), "public").target("1.0.4").load().migrate();
    InboxTestSupport.createLedger(db);
  }

  @AfterEach
  void dropDatabase() {
    db.close();
  }

  @Test
  void inboxStartedBeforeMigration105StartsNoWorkAndCatchesUpOnceItRan() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-upgrade");
    broker.createTopic(topic, 2);
    List<Message> messages = InboxTestSupport.messages("upgrade-", 40);
    InboxTestSupport.produce(broker, topic, messages);
    CountDownLatch assigned = new CountDownLatch(1);
    String group = "upgrade-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(InboxTestSupport.ledgerHandler("upgrade"))
                .concurrency(2)
                .retryBackoff(Duration.ofMillis(50))
                .maxRetryBackoff(Duration.ofMillis(200))
                .listener(
                    new InboxListener() {
                      @Override
                      public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                        assigned.countDown();
                      }
                    })
                .build()) {
      inbox.start();
      assertTrue(assigned.await(60, TimeUnit.SECONDS), "partitions assigned");
      // Claims are retried every 200 ms at most: give them many tries.
      Thread.sleep(3000);
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM txkafka_inbox_offset"),
          "no claim, so no mark, before the migration");
      assertEquals(0, db.queryLong("SELECT count(*) FROM ledger"), "nothing applied");

      TxKafkaMigrations.migrate(db.dataSource());
      await(
          "every record applied once the migration ran",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"));
      assertEquals(
          messages.size(), db.queryLong("SELECT count(DISTINCT message_id) FROM ledger"));
      assertEquals(0, inbox.deadLetters(10).size());
    }
  }
  /**
   * An inbox of this version on a schema without migration 1.0.8 consumes as before, but refuses
   * to replay a dead letter (the replay is sealed through 1.0.8's column), saying which migration
   * is missing; once it ran, the replay applies the record once.
   */
  @Test
  void replayBeforeMigration108IsRefusedNamingItAndWorksOnceItRan() throws Exception {
    TxKafkaMigrations.configure(db.dataSource(), "public").target("1.0.7").load().migrate();
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-upgrade-replay");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("upgrade-replay-", 3);
    InboxTestSupport.produce(broker, topic, messages);
    String poison = messages.get(1).messageId();
    java.util.concurrent.atomic.AtomicBoolean fixed =
        new java.util.concurrent.atomic.AtomicBoolean();
    org.txkafka.inbox.InboxHandler ledger = InboxTestSupport.ledgerHandler("upgrade-replay");
    String group = "upgrade-replay-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(
                    (record, context) -> {
                      if (record.messageId().equals(poison) && !fixed.get()) {
                        throw new IllegalStateException("cannot apply " + poison);
                      }
                      ledger.handle(record, context);
                    })
                .maxAttempts(1)
                .retryBackoff(Duration.ofMillis(20))
                .build()) {
      inbox.start();
      await(
          "every record consumed",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      List<org.txkafka.inbox.DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size(), "the poison record dead-lettered");
      fixed.set(true);
      org.txkafka.TxKafkaException refused =
          org.junit.jupiter.api.Assertions.assertThrows(
              org.txkafka.TxKafkaException.class, () -> inbox.replay(deadLetters.get(0).id()));
      assertTrue(refused.getMessage().contains("migration 1.0.8"), refused.getMessage());
      assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poison));

      TxKafkaMigrations.migrate(db.dataSource());
      assertTrue(inbox.replay(deadLetters.get(0).id()), "replayed once migrated");
      assertEquals(1, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poison));
      assertEquals(0, inbox.deadLetters(10).size());
    }
  }

  /**
   * While claims keep failing (here: before migration 1.0.5) with a long backoff, close() does not
   * wait for that backoff: claim retries sleep in slices that see the inbox closing.
   */
  @Test
  void closeWhileClaimsKeepFailingDoesNotWaitForTheirBackoff() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-upgrade-close");
    broker.createTopic(topic, 1);
    CountDownLatch assigned = new CountDownLatch(1);
    long closeNanos;
    try (HikariDataSource dataSource = db.newDataSource(2)) {
      Inbox inbox =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId("upgrade-close-" + topic)
              .topics(topic)
              .dataSource(dataSource)
              .handler(InboxTestSupport.ledgerHandler("upgrade-close"))
              .concurrency(1)
              .retryBackoff(Duration.ofSeconds(20))
              .maxRetryBackoff(Duration.ofSeconds(30))
              .listener(
                  new InboxListener() {
                    @Override
                    public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                      assigned.countDown();
                    }
                  })
              .build();
      try {
        inbox.start();
        assertTrue(assigned.await(60, TimeUnit.SECONDS), "partitions assigned");
        // The first claim fails at once; its retry waits 20 s.
        Thread.sleep(1000);
      } finally {
        long start = System.nanoTime();
        inbox.close();
        closeNanos = System.nanoTime() - start;
      }
    }
    assertTrue(
        closeNanos < TimeUnit.SECONDS.toNanos(10),
        "close() took " + TimeUnit.NANOSECONDS.toMillis(closeNanos) + " ms");
    assertEquals(0, db.queryLong("SELECT count(*) FROM txkafka_inbox_offset"), "nothing claimed");
  }
}
