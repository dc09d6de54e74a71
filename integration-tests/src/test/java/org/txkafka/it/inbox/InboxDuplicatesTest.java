package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The same message id at different offsets (and partitions) is applied once; also shows the
 * metrics, the offset mirror in Kafka and a pattern subscription.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxDuplicatesTest {
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
  void sameMessageIdAtDifferentOffsetsIsAppliedOnce() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-dups");
    broker.createTopic(topic, 2);
    List<Message> originals = InboxTestSupport.messages("dup-", 100);
    List<Message> all = new ArrayList<>(originals);
    // A producer's resend: same ids, other offsets; half of them under another key, so that
    // they may land in the other partition.
    for (Message message : originals) {
      String key = message.amount() % 2 == 0 ? message.key() : message.key() + "-moved";
      all.add(new Message(key, message.messageId(), message.amount()));
    }
    // Duplicates inside one batch: the same id twice in a row.
    for (int i = 0; i < 10; i++) {
      Message message = originals.get(i);
      all.add(new Message("same", message.messageId(), message.amount()));
      all.add(new Message("same", message.messageId(), message.amount()));
    }
    // Records without an id get one derived from their offset: each is applied.
    List<Message> withoutId = new ArrayList<>();
    for (int i = 0; i < 20; i++) {
      withoutId.add(new Message("no-id", null, 1000 + i));
    }
    all.addAll(withoutId);
    InboxTestSupport.produce(broker, topic, all);

    SimpleMeterRegistry registry = new SimpleMeterRegistry();
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId("dups-" + topic)
                .topicPattern(Pattern.compile(Pattern.quote(topic)))
                .dataSource(dataSource)
                .handler(InboxTestSupport.ledgerHandler("single"))
                .maxBatchSize(50)
                .concurrency(2)
                .meterRegistry(registry)
                .build()) {
      inbox.start();
      long expectedRows = originals.size() + withoutId.size();
      await(
          "every record to be consumed (offsets stored)",
          Duration.ofSeconds(90),
          () ->
              db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset"
                          + " WHERE topic = ?",
                      topic)
                  == all.size());
      assertEquals(expectedRows, db.queryLong("SELECT count(*) FROM ledger"), "ledger rows");
      assertEquals(
          InboxTestSupport.sum(originals) + InboxTestSupport.sum(withoutId),
          db.queryLong("SELECT sum(amount) FROM ledger"),
          "ledger sum");
      assertEquals(
          expectedRows,
          db.queryLong("SELECT count(DISTINCT message_id) FROM ledger"),
          "distinct ids in the ledger");
      assertEquals(expectedRows, db.queryLong("SELECT count(*) FROM txkafka_inbox"), "inbox rows");
      // The counters move after each batch's commit, so after its stored offset: wait for them.
      await(
          "the processed and duplicates metrics",
          Duration.ofSeconds(30),
          () ->
              (long) registry.get("txkafka.inbox.records.processed").counter().count()
                      == expectedRows
                  && (long) registry.get("txkafka.inbox.records.duplicates").counter().count()
                      == all.size() - expectedRows);
      double duplicates = registry.get("txkafka.inbox.records.duplicates").counter().count();
      double processed = registry.get("txkafka.inbox.records.processed").counter().count();
      assertEquals(all.size() - expectedRows, (long) duplicates, "duplicates metric");
      assertEquals(expectedRows, (long) processed, "processed metric");
      assertEquals(
          2, registry.get("txkafka.inbox.lag").gauges().size(), "a lag gauge per partition");
      // The database's offsets are mirrored to Kafka, so that kafka-consumer-groups shows lag.
      await(
          "the Kafka-committed offsets to mirror the stored ones",
          Duration.ofSeconds(30),
          () -> kafkaCommitted(broker, "dups-" + topic) == all.size());
      await(
          "the lag gauges to show everything consumed",
          Duration.ofSeconds(30),
          () ->
              registry.get("txkafka.inbox.lag").gauges().stream()
                  .allMatch(gauge -> gauge.value() == 0));
      assertTrue(
          registry.get("txkafka.inbox.batch.latency").timer().count() > 0,
          "batch latency recorded");
    }
  }

  private static long kafkaCommitted(KafkaBroker broker, String group) {
    try {
      Map<TopicPartition, OffsetAndMetadata> offsets =
          broker.admin().listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get();
      return offsets.values().stream().mapToLong(OffsetAndMetadata::offset).sum();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new AssertionError(e);
    } catch (ExecutionException e) {
      throw new AssertionError(e);
    }
  }
}
