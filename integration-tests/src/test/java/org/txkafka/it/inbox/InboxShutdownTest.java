package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.apache.kafka.common.TopicPartition;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * close() in the middle of a batch, with a close timeout shorter than the batch: nothing committed
 * is lost, nothing half-done is ever visible, and the next inbox continues exactly once.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxShutdownTest {
  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    InboxTestSupport.createLedger(db);
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void closeDuringABatchLeavesNothingHalfDoneAndTheNextInboxContinuesExactlyOnce()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-close");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("close-", 60);
    InboxTestSupport.produce(broker, topic, messages);
    String group = "close-" + topic;
    InboxHandler ledger = InboxTestSupport.ledgerHandler("close");
    InboxHandler slow =
        (record, context) -> {
          ledger.handle(record, context);
          Thread.sleep(50);
        };
    // One snapshot: the applied records are exactly the ones below the stored offset.
    String consistent =
        "SELECT CASE WHEN (SELECT count(*) FROM ledger) = (SELECT coalesce(max(next_offset), 0)"
            + " FROM txkafka_inbox_offset WHERE consumer_group = ?) THEN 1 ELSE 0 END";
    try (HikariDataSource dataSource = db.newDataSource(3)) {
      Inbox first = inbox(dataSource, topic, group, slow);
      first.start();
      await(
          "the first batch to commit and the second to run",
          Duration.ofSeconds(60),
          () -> db.queryLong("SELECT count(*) FROM ledger") >= 15);
      first.close();
      long afterClose = db.queryLong("SELECT count(*) FROM ledger");
      assertTrue(afterClose < messages.size(), "closed mid-run: " + afterClose);
      for (int i = 0; i < 10; i++) {
        assertEquals(1, db.queryLong(consistent, group), "applied rows match the stored offset");
        Thread.sleep(100);
      }
      try (Inbox second = inbox(dataSource, topic, group, ledger)) {
        second.start();
        await(
            "the next inbox to apply the rest",
            Duration.ofSeconds(60),
            () ->
                InboxTestSupport.storedOffsetSum(db, group)
                    == messages.size());
      }
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"));
      assertEquals(messages.size(), db.queryLong("SELECT count(DISTINCT message_id) FROM ledger"));
      assertEquals(InboxTestSupport.sum(messages), db.queryLong("SELECT sum(amount) FROM ledger"));
      assertEquals(1, db.queryLong(consistent, group));
    }
  }

  /**
   * A batch commit announces the batch after it (up to min(32, maxBatchSize) records), so that
   * batch needs no mark transaction of its own. A member that gives a partition back cleanly, on a
   * rebalance or at close(), withdraws the announcement: nothing was lost there, and the next owner
   * must not apply those records one at a time as after a death.
   */
  @Test
  void partitionsGivenBackCleanlyHaveTheAnnouncedBatchWithdrawn() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-release");
    broker.createTopic(topic, 2);
    List<Message> messages = InboxTestSupport.messages("release-", 30);
    InboxTestSupport.produce(broker, topic, messages.subList(0, 20));
    String group = "release-" + topic;
    InboxHandler ledger = InboxTestSupport.ledgerHandler("release");
    String announced =
        "SELECT count(*) FROM txkafka_inbox_offset WHERE consumer_group = ?"
            + " AND batch_records = 10 AND batch_offset = next_offset";
    Set<TopicPartition> secondGot = ConcurrentHashMap.newKeySet();
    InboxListener assigned =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            secondGot.addAll(partitions);
          }
        };
    try (HikariDataSource dataSource = db.newDataSource(4)) {
      Inbox first = inbox(dataSource, topic, group, ledger, new InboxListener() {});
      Inbox second = inbox(dataSource, topic, group, ledger, assigned);
      try {
        first.start();
        await(
            "the first 20 records applied",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 20);
        assertEquals(
            2, db.queryLong(announced, group), "each partition's last commit announced the next");

        second.start();
        await(
            "the second member to claim what it was given",
            Duration.ofSeconds(60),
            () -> !secondGot.isEmpty() && secondGot.stream().allMatch(p -> epoch(group, p) >= 2));
        for (TopicPartition moved : secondGot) {
          assertEquals(
              0,
              db.queryLong(
                  "SELECT count(*) FROM txkafka_inbox_offset WHERE consumer_group = ?"
                      + " AND kafka_partition = ? AND batch_records IS NOT NULL",
                  group,
                  moved.partition()),
              "the first member withdrew the announcement of " + moved + " when it gave it back");
        }

        InboxTestSupport.produce(broker, topic, messages.subList(20, 30));
        await(
            "all 30 records applied",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 30);
      } finally {
        second.close();
        first.close();
      }
      assertEquals(
          0,
          db.queryLong(
              "SELECT count(*) FROM txkafka_inbox_offset WHERE consumer_group = ?"
                  + " AND batch_records IS NOT NULL",
              group),
          "close() withdrew every announcement");
      assertEquals(30, db.queryLong("SELECT count(DISTINCT message_id) FROM ledger WHERE topic = ?",
          topic));
      assertEquals(30, db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic));
    } finally {
      // The other test of this class counts the whole ledger.
      db.execute("DELETE FROM ledger WHERE topic = '" + topic + "'");
    }
  }

  private static long epoch(String group, TopicPartition partition) {
    return db.queryLong(
        "SELECT coalesce(max(owner_epoch), 0) FROM txkafka_inbox_offset WHERE consumer_group = ?"
            + " AND topic = ? AND kafka_partition = ?",
        group,
        partition.topic(),
        partition.partition());
  }

  private static Inbox inbox(
      DataSource dataSource, String topic, String group, InboxHandler handler) {
    return inbox(dataSource, topic, group, handler, new InboxListener() {});
  }

  private static Inbox inbox(
      DataSource dataSource,
      String topic,
      String group,
      InboxHandler handler,
      InboxListener listener) {
    return Inbox.builder()
        .listener(listener)
        .kafkaProperties(InboxTestSupport.consumerProperties(broker()))
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .handler(handler)
        .maxBatchSize(10)
        // Shorter than a batch (10 x 50 ms): close() does not wait for it to finish.
        .closeTimeout(Duration.ofMillis(100))
        .build();
  }

  private static KafkaBroker broker() {
    return KafkaBroker.shared();
  }
}
