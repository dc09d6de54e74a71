package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A member frozen inside a batch transaction (SIGSTOP, never resumed: a GC pause without end, a
 * network path gone silent) holds its partition's offset row lock. The member that takes the
 * partition over must not wait for it forever: PostgreSQL ends the frozen session after the
 * inbox's transactionIdleTimeout, and the successor applies everything exactly once.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxFrozenMemberTest {
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
  void memberFrozenInsideItsTransactionBlocksTheSuccessorOnlyForTheIdleTimeout() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-frozen");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("frozen-", 300);
    InboxTestSupport.produce(broker, topic, messages);
    String group = "frozen-" + topic;
    String stallId = "frozen-100";
    try (ChildJvm frozen = InboxMemberMain.builder(db, broker, topic, group, "frozen")
            .systemProperty("stallMessageId", stallId)
            .systemProperty("stallMillis", "60000")
            .systemProperty("maxBatchSize", "20")
            // With 0 (no bound) the successor waits for the frozen member forever: this test fails.
            .systemProperty("transactionIdleTimeoutMillis", "4000")
            .start();
        HikariDataSource dataSource = db.newDataSource(3);
        Inbox successor = Inbox.builder()
            .kafkaProperties(InboxTestSupport.consumerProperties(broker))
            .groupId(group)
            .topics(topic)
            .dataSource(dataSource)
            .handler(InboxTestSupport.ledgerHandler("successor"))
            .maxBatchSize(20)
            .build()) {
      frozen.awaitLine("STALL " + stallId, Duration.ofSeconds(60));
      frozen.suspend(); // inside its transaction, holding the offset row lock; never resumed
      successor.start();
      await("the successor to apply every record although the frozen member never wakes",
          Duration.ofSeconds(90),
          () -> db.queryLong("SELECT count(DISTINCT message_id) FROM ledger") == messages.size());
      await("the stored offset to reach the end", Duration.ofSeconds(30),
          () -> db.queryLong("SELECT coalesce(max(next_offset), 0) FROM txkafka_inbox_offset"
              + " WHERE consumer_group = ?", group) == messages.size());
      frozen.kill();
    }
    assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"), "no doubles");
    assertEquals(InboxTestSupport.sum(messages), db.queryLong("SELECT sum(amount) FROM ledger"));
    assertEquals(0L, db.queryLong(
        "SELECT count(*) FROM ledger WHERE applied_by = 'frozen' AND message_id = ?", stallId),
        "the frozen batch was rolled back, its record applied by the successor");
  }
}
