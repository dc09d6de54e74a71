package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
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
 * Handlers misbehave in ways the inbox cannot forbid: they throw JVM errors, or they restore the
 * interrupt flag before rethrowing or returning. None of it may ever make the inbox skip a record
 * (every commit must continue exactly at the offset the previous commit stored) or stop working
 * off the records it fetched.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxHandlerMisbehaviourTest {
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
  void handlerThrowingAJvmErrorNeverMakesThePartitionSkipItsBatch() {
    Set<Long> failedOnce = ConcurrentHashMap.newKeySet();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("error");
    runAndCheckEveryRecordApplied("error", (record, context) -> {
      if (record.offset() == 15 && failedOnce.add(record.offset())) {
        throw new StackOverflowError("deeply nested payload");
      }
      ledger.handle(record, context);
    });
  }

  @Test
  void handlerThatRestoresTheInterruptFlagNeverLosesRecords() {
    Set<Long> failedOnce = ConcurrentHashMap.newKeySet();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("interrupt");
    runAndCheckEveryRecordApplied("interrupt", (record, context) -> {
      if (record.offset() == 15 && failedOnce.add(record.offset())) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException("interrupted while calling a downstream service");
      }
      ledger.handle(record, context);
    });
  }

  /**
   * A handler that catches an interrupt and restores the flag, as Java code should, and then
   * returns normally: the flag is the handler's, not a request to stop the inbox. Records already
   * fetched (all 100 are produced at once, and the partition is paused with its queue full) must
   * still be worked off, with no new record arriving to wake the partition.
   */
  @Test
  void handlerThatLeavesTheInterruptFlagSetAndReturnsNeverStallsItsPartition() {
    InboxHandler ledger = InboxTestSupport.ledgerHandler("flag-left");
    runAndCheckEveryRecordApplied(
        "flag-left",
        (record, context) -> {
          ledger.handle(record, context);
          if (record.offset() == 9 || record.offset() == 55) {
            Thread.currentThread().interrupt();
          }
        },
        true);
  }

  private void runAndCheckEveryRecordApplied(String name, InboxHandler handler) {
    runAndCheckEveryRecordApplied(name, handler, false);
  }

  /** With {@code allAtOnce}, every record is produced before the inbox starts, none after. */
  private void runAndCheckEveryRecordApplied(
      String name, InboxHandler handler, boolean allAtOnce) {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-misbehaving-" + name);
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages(name + "-", 100);
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox = Inbox.builder()
            .kafkaProperties(InboxTestSupport.consumerProperties(broker))
            .kafkaProperty("auto.offset.reset", "earliest")
            .groupId("misbehaving-" + topic)
            .topics(topic)
            .dataSource(dataSource)
            .handler(handler)
            .maxBatchSize(10)
            .concurrency(1)
            .retryBackoff(Duration.ofMillis(50))
            .build()) {
      if (allAtOnce) {
        InboxTestSupport.produce(broker, topic, messages);
        inbox.start();
      } else {
        inbox.start();
        InboxTestSupport.produce(broker, topic, messages.subList(0, 50));
        await("the first half to be stored", Duration.ofSeconds(60),
            () -> storedOffset(topic) >= 50 || ledgerRows(topic) >= 50);
        InboxTestSupport.produce(broker, topic, messages.subList(50, 100));
      }
      await("every record applied", Duration.ofSeconds(90), () -> ledgerRows(topic) >= 100);
      await("the offset stored", Duration.ofSeconds(30), () -> storedOffset(topic) == 100);
    }
    assertEquals(100L, ledgerRows(topic), "each record applied once");
    assertEquals(100L, db.queryLong(
        "SELECT count(DISTINCT kafka_offset) FROM ledger WHERE topic = ?", topic));
    assertEquals(InboxTestSupport.sum(messages),
        db.queryLong("SELECT sum(amount) FROM ledger WHERE topic = ?", topic));
    assertEquals(0L, db.queryLong(
        "SELECT count(*) FROM txkafka_inbox_dead_letter WHERE topic = ?", topic));
  }

  private static long ledgerRows(String topic) {
    return db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic);
  }

  private static long storedOffset(String topic) {
    return db.queryLong("SELECT coalesce(max(next_offset), -1) FROM txkafka_inbox_offset"
        + " WHERE topic = ?", topic);
  }
}
