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
import org.txkafka.inbox.InboxBuilder;
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

  /**
   * A record applied one at a time after a lost batch has each start counted in the database before
   * its handler runs, so that a death while it runs is charged to it. A start that ends with the
   * process alive and the handler not run (here close() comes while the start mark is written; a
   * revocation does the same) is withdrawn. Closing at that moment three times must not make the
   * record dead-lettered (maxAttempts 2) when it finally runs: it is applied.
   */
  @Test
  void startsCutShortByCloseAreNotCountedAgainstTheRecord() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-cut-start");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("cut-start-", 12);
    InboxTestSupport.produce(broker, topic, messages.subList(0, 10));
    String group = "cut-start-" + topic;
    InboxHandler ledger = InboxTestSupport.ledgerHandler("cut-start");
    String startMarkRunning =
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            + " AND pid <> pg_backend_pid() AND state = 'active' AND query LIKE '%started_token%'";
    String starts =
        "SELECT coalesce(max(started_count), -1) FROM txkafka_inbox_offset"
            + " WHERE consumer_group = ?";
    try (HikariDataSource dataSource = db.newDataSource(4)) {
      try (Inbox first = guardedInbox(dataSource, topic, group, ledger)) {
        first.start();
        await(
            "the first 10 records applied",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 10);
      }
      // A batch lost at the stored offset: the next owner applies its records one at a time.
      db.execute(
          "UPDATE txkafka_inbox_offset SET batch_offset = next_offset, batch_records = 2"
              + " WHERE consumer_group = '" + group + "'");
      InboxTestSupport.produce(broker, topic, messages.subList(10, 12));
      // Every start mark takes 2 s, so that close() comes while one is being written.
      db.execute(
          "CREATE FUNCTION slow_start() RETURNS trigger LANGUAGE plpgsql AS"
              + " $$ BEGIN PERFORM pg_sleep(2); RETURN NEW; END $$",
          "CREATE TRIGGER slow_start BEFORE UPDATE ON txkafka_inbox_offset FOR EACH ROW"
              + " WHEN (NEW.started_token IS DISTINCT FROM OLD.started_token)"
              + " EXECUTE FUNCTION slow_start()");
      try {
        for (int i = 0; i < 3; i++) {
          try (Inbox cut = guardedInbox(dataSource, topic, group, ledger)) {
            cut.start();
            await(
                "a start mark being written",
                Duration.ofSeconds(60),
                () -> db.queryLong(startMarkRunning) > 0);
          }
          assertEquals(
              0, db.queryLong(starts, group), "the start cut short by close() was withdrawn");
        }
      } finally {
        db.execute("DROP TRIGGER slow_start ON txkafka_inbox_offset", "DROP FUNCTION slow_start()");
      }
      try (Inbox last = guardedInbox(dataSource, topic, group, ledger)) {
        last.start();
        await(
            "the last 2 records applied",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 12);
      }
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM txkafka_inbox_dead_letter WHERE topic = ?", topic),
          "nothing dead-lettered");
      assertEquals(12, db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic));
      assertEquals(
          12, db.queryLong("SELECT count(DISTINCT message_id) FROM ledger WHERE topic = ?", topic));
    } finally {
      // The other test of this class counts the whole ledger.
      db.execute("DELETE FROM ledger WHERE topic = '" + topic + "'");
    }
  }

  private static Inbox guardedInbox(
      DataSource dataSource, String topic, String group, InboxHandler handler) {
    return builder(dataSource, topic, group, handler)
        .maxAttempts(2)
        .closeTimeout(Duration.ofSeconds(10))
        .build();
  }

  private static Inbox inbox(
      DataSource dataSource, String topic, String group, InboxHandler handler) {
    return builder(dataSource, topic, group, handler)
        .maxBatchSize(10)
        // Shorter than a batch (10 x 50 ms): close() does not wait for it to finish.
        .closeTimeout(Duration.ofMillis(100))
        .build();
  }

  private static InboxBuilder builder(
      DataSource dataSource, String topic, String group, InboxHandler handler) {
    return Inbox.builder()
        .kafkaProperties(InboxTestSupport.consumerProperties(broker()))
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .handler(handler);
  }

  private static KafkaBroker broker() {
    return KafkaBroker.shared();
  }
}
