package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
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

/**
 * {@link InboxListener#onCommitted} reports each commit after it is visible: at every call, a new
 * transaction sees exactly the partition's records below the reported offset (applied ones in the
 * ledger, the dead-lettered one in the inbox table), the reported offsets of a partition only grow,
 * and the last one is the partition's end.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxCommittedListenerTest {
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
  void everyReportedOffsetIsVisibleWhenReported() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-committed");
    broker.createTopic(topic, 2);
    List<Message> messages = InboxTestSupport.messages("committed-", 300);
    InboxTestSupport.produce(broker, topic, messages);
    String poisonId = "committed-123";
    InboxHandler ledger = InboxTestSupport.ledgerHandler("committed");
    InboxHandler handler =
        (record, context) -> {
          if (record.messageId().equals(poisonId)) {
            throw new IllegalStateException("cannot apply " + poisonId);
          }
          ledger.handle(record, context);
        };
    Map<Integer, List<Long>> reported = new ConcurrentHashMap<>();
    List<String> violations = Collections.synchronizedList(new ArrayList<>());
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onCommitted(TopicPartition partition, long nextOffset) {
            reported
                .computeIfAbsent(partition.partition(), p -> Collections.synchronizedList(new ArrayList<>()))
                .add(nextOffset);
            // One worker per partition: nothing else of this partition commits meanwhile.
            long visible =
                db.queryLong(
                        "SELECT count(*) FROM ledger WHERE topic = ? AND kafka_partition = ?",
                        topic,
                        partition.partition())
                    + db.queryLong(
                        "SELECT count(*) FROM txkafka_inbox WHERE topic = ? AND kafka_partition = ?"
                            + " AND status = 'DEAD_LETTERED'",
                        topic,
                        partition.partition());
            if (visible != nextOffset) {
              violations.add(partition + ": reported " + nextOffset + ", visible " + visible);
            }
          }
        };
    String group = "committed-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxBatchSize(20)
                .maxAttempts(2)
                .retryBackoff(Duration.ofMillis(10))
                .listener(listener)
                .build()) {
      inbox.start();
      await(
          "every record to be committed",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
    }
    assertEquals(List.of(), violations, "reports ahead of or behind what is visible");
    long ends = 0;
    for (int partition = 0; partition < 2; partition++) {
      List<Long> offsets = new ArrayList<>(reported.getOrDefault(partition, List.of()));
      assertTrue(offsets.size() >= 2, "partition " + partition + " reported " + offsets);
      for (int i = 1; i < offsets.size(); i++) {
        assertTrue(offsets.get(i) > offsets.get(i - 1), "offsets grow: " + offsets);
      }
      ends += offsets.get(offsets.size() - 1);
    }
    assertEquals(messages.size(), ends, "the last reports are the partitions' ends");
    assertEquals(
        1,
        db.queryLong(
            "SELECT count(*) FROM txkafka_inbox WHERE message_id = ? AND status = 'DEAD_LETTERED'",
            poisonId),
        "the failing record was dead-lettered (its commit reported too)");
  }
}
