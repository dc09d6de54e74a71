package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** PostgreSQL sessions killed mid-run: the inbox resumes by itself and applies each record once. */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class InboxDatabaseOutageTest {
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
  void terminatedDatabaseConnectionsAreRetriedAndEveryRecordIsAppliedExactlyOnce()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-outage");
    broker.createTopic(topic, 3);
    List<Message> messages = InboxTestSupport.messages("outage-", 3000);
    AtomicInteger revokedOrLost = new AtomicInteger();
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            revokedOrLost.addAndGet(partitions.size());
          }

          @Override
          public void onPartitionsLost(Collection<TopicPartition> partitions) {
            revokedOrLost.addAndGet(partitions.size());
          }
        };
    try (HikariDataSource dataSource = db.newDataSource(4);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId("outage-" + topic)
                .topics(topic)
                .dataSource(dataSource)
                .handler(InboxTestSupport.ledgerHandler("outage"))
                .maxBatchSize(50)
                .concurrency(3)
                .retryBackoff(Duration.ofMillis(50))
                .maxRetryBackoff(Duration.ofMillis(500))
                .listener(listener)
                .build()) {
      inbox.start();
      Thread producer =
          InboxTestSupport.produceSlowly(broker, topic, messages, Duration.ofSeconds(8));
      await("the first records to be applied", Duration.ofSeconds(60),
          () -> db.queryLong("SELECT count(*) FROM ledger") > 0);
      List<Integer> terminated = new ArrayList<>();
      for (int i = 0; i < 12; i++) {
        terminated.add(db.terminateConnections());
        Thread.sleep(400);
      }
      producer.join(60_000);
      await("every record to be applied", Duration.ofSeconds(120),
          () -> db.queryLong("SELECT count(DISTINCT message_id) FROM ledger") == messages.size());
      // Let anything still in flight settle before counting duplicates.
      await("every offset to be stored", Duration.ofSeconds(30),
          () -> db.queryLong(
                  "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic = ?",
                  topic)
              == messages.size());
      assertTrue(
          terminated.stream().mapToInt(Integer::intValue).sum() > 0,
          "sessions were actually terminated: " + terminated);
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"), "ledger rows");
      assertEquals(InboxTestSupport.sum(messages), db.queryLong("SELECT sum(amount) FROM ledger"));
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM txkafka_inbox"));
      assertTrue(inbox.isRunning(), "the inbox kept running");
      assertEquals(0, revokedOrLost.get(), "the consumer stayed in its group while PG was down");
    }
  }
}
