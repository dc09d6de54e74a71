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

  private static void sleep(long millis) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
