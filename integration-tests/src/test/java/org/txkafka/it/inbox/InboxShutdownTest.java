package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
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

  private static Inbox inbox(
      DataSource dataSource, String topic, String group, InboxHandler handler) {
    return Inbox.builder()
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
