package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** A batch that takes longer than max.poll.interval.ms does not trigger a rebalance. */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxSlowHandlerTest {
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
  void handlerSlowerThanMaxPollIntervalCausesNoRebalance() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-slow");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("slow-", 8);
    InboxTestSupport.produce(broker, topic, messages);
    AtomicInteger assigned = new AtomicInteger();
    AtomicInteger revoked = new AtomicInteger();
    AtomicInteger lost = new AtomicInteger();
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            assigned.addAndGet(partitions.size());
          }

          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            revoked.addAndGet(partitions.size());
          }

          @Override
          public void onPartitionsLost(Collection<TopicPartition> partitions) {
            lost.addAndGet(partitions.size());
          }
        };
    InboxHandler ledger = InboxTestSupport.ledgerHandler("slow");
    // Each record takes 800 ms; one batch of 4 takes 3.2 s, past max.poll.interval.ms = 2000.
    InboxHandler slow =
        (record, context) -> {
          Thread.sleep(800);
          ledger.handle(record, context);
        };
    Map<String, Object> properties = new HashMap<>(InboxTestSupport.consumerProperties(broker));
    properties.put("max.poll.interval.ms", "2000");
    try (HikariDataSource dataSource = db.newDataSource(2);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(properties)
                .groupId("slow-" + topic)
                .topics(topic)
                .dataSource(dataSource)
                .handler(slow)
                .maxBatchSize(4)
                .revocationTimeout(Duration.ofSeconds(1))
                .listener(listener)
                .build()) {
      inbox.start();
      await(
          "every record to be applied",
          Duration.ofSeconds(90),
          () ->
              db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'slow'")
                  == messages.size());
      assertEquals(1, assigned.get(), "assigned once");
      assertEquals(0, revoked.get(), "never revoked");
      assertEquals(0, lost.get(), "never lost (max.poll.interval.ms exceeded would lose it)");
      assertEquals(
          1,
          db.queryLong("SELECT max(owner_epoch) FROM txkafka_inbox_offset WHERE topic = ?", topic),
          "claimed once");
      assertEquals(
          InboxTestSupport.sum(messages),
          db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'slow'"));
    }
  }
}
