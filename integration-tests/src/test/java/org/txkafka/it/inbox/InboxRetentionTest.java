package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Clock;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneId;
import java.time.ZoneOffset;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.DeadLetter;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Inbox rows older than the dedup window are removed (in batches, by the inbox's clock), except
 * those of dead letters that were not replayed.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxRetentionTest {
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

  /** A clock the test moves by hand. */
  static final class MutableClock extends Clock {
    private final AtomicReference<Instant> now = new AtomicReference<>(Instant.now());

    void advance(Duration duration) {
      now.updateAndGet(instant -> instant.plus(duration));
    }

    @Override
    public ZoneId getZone() {
      return ZoneOffset.UTC;
    }

    @Override
    public Clock withZone(ZoneId zone) {
      return this;
    }

    @Override
    public Instant instant() {
      return now.get();
    }
  }

  @Test
  void rowsOlderThanTheDedupWindowAreRemovedButPendingDeadLettersAreKept() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-retention");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("keep-", 2500);
    InboxTestSupport.produce(broker, topic, messages);
    MutableClock clock = new MutableClock();
    AtomicBoolean fixed = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("retention");
    InboxHandler handler =
        (record, context) -> {
          if (record.messageId().equals("keep-7") && !fixed.get()) {
            throw new IllegalStateException("not yet");
          }
          ledger.handle(record, context);
        };
    String group = "retention-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .clock(clock)
                .dedupRetention(Duration.ofHours(1))
                .retentionInterval(Duration.ofMillis(200))
                .build()) {
      inbox.start();
      await(
          "every record to be consumed",
          Duration.ofSeconds(90),
          () ->
              InboxTestSupport.storedOffsetSum(db, group)
                  == messages.size());
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM txkafka_inbox"));
      clock.advance(Duration.ofMinutes(59));
      sleep(1000);
      assertEquals(
          messages.size(),
          db.queryLong("SELECT count(*) FROM txkafka_inbox"),
          "rows inside the window are kept");

      clock.advance(Duration.ofMinutes(2));
      await(
          "expired rows to be removed (in batches of 1000)",
          Duration.ofSeconds(30),
          () -> db.queryLong("SELECT count(*) FROM txkafka_inbox") == 1);
      assertEquals(
          1,
          db.queryLong(
              "SELECT count(*) FROM txkafka_inbox WHERE message_id = 'keep-7'"
                  + " AND status = 'DEAD_LETTERED'"),
          "the pending dead letter's row is kept");

      fixed.set(true);
      assertEquals(1, inbox.replayAll());
      sleep(1000);
      assertEquals(
          1,
          db.queryLong("SELECT count(*) FROM txkafka_inbox WHERE status = 'REPLAYED'"),
          "a replayed row starts a new dedup window");
      clock.advance(Duration.ofMinutes(61));
      await(
          "the replayed row to expire too",
          Duration.ofSeconds(30),
          () -> db.queryLong("SELECT count(*) FROM txkafka_inbox") == 0);
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"));
    }
  }

  /**
   * A message id comes back after its dead letter was replayed and retention removed its inbox row
   * (the id counts as new again: a re-created topic's fallback ids, or an id taken from a business
   * key), and fails again. It must be dead-lettered again, listed and replayable. The old, replayed
   * dead letter of that id once made the new one a silent no-op: the record was reported
   * dead-lettered (offset moved on, listener called) and stored nowhere.
   */
  @Test
  void messageIdDeadLetteredAgainAfterAReplayAndRetentionIsListedAgain() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-dead-again");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("again-", 20);
    InboxTestSupport.produce(broker, topic, messages);
    MutableClock clock = new MutableClock();
    AtomicBoolean broken = new AtomicBoolean(true);
    InboxHandler ledger = InboxTestSupport.ledgerHandler("dead-again");
    InboxHandler handler =
        (record, context) -> {
          if (record.messageId().equals("again-7") && broken.get()) {
            throw new IllegalStateException("cannot apply again-7");
          }
          ledger.handle(record, context);
        };
    String group = "dead-again-" + topic;
    try {
      deadLetterAgain(broker, topic, group, messages, clock, broken, handler);
    } finally {
      // The other test of this class counts every row of these tables.
      db.execute(
          "DELETE FROM txkafka_inbox WHERE consumer_group = '" + group + "'",
          "DELETE FROM txkafka_inbox_dead_letter WHERE consumer_group = '" + group + "'",
          "DELETE FROM ledger WHERE applied_by = 'dead-again'");
    }
  }

  private void deadLetterAgain(
      KafkaBroker broker,
      String topic,
      String group,
      List<Message> messages,
      MutableClock clock,
      AtomicBoolean broken,
      InboxHandler handler) {
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .clock(clock)
                .dedupRetention(Duration.ofHours(1))
                .retentionInterval(Duration.ofMillis(200))
                .build()) {
      inbox.start();
      await(
          "every record to be consumed",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      broken.set(false);
      assertEquals(1, inbox.replayAll(), "the first dead letter replayed");
      clock.advance(Duration.ofMinutes(61));
      await(
          "retention to remove the group's inbox rows, the replayed one too",
          Duration.ofSeconds(30),
          () ->
              db.queryLong("SELECT count(*) FROM txkafka_inbox WHERE consumer_group = ?", group)
                  == 0);

      broken.set(true);
      InboxTestSupport.produce(broker, topic, List.of(messages.get(7)));
      await(
          "the returning record to be consumed",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size() + 1);
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size(), "dead-lettered again: " + deadLetters);
      assertEquals("again-7", deadLetters.get(0).record().messageId());
      assertEquals(messages.size(), deadLetters.get(0).record().offset(), "the new record");

      broken.set(false);
      assertEquals(1, inbox.replayAll(), "and replayable");
      assertEquals(
          2,
          db.queryLong(
              "SELECT count(*) FROM ledger WHERE message_id = 'again-7' AND applied_by = ?",
              "dead-again"),
          "applied by each replay (the id counted as new once its window had passed)");
    }
  }

  private static void sleep(long millis) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
