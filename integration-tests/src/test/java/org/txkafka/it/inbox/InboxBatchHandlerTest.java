package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.SQLException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.postgresql.ds.PGSimpleDataSource;
import org.txkafka.inbox.DeadLetter;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxBatchHandler;
import org.txkafka.inbox.InboxBuilder;
import org.txkafka.inbox.InboxRecord;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A batch handler applies the new records of a batch with one statement, each exactly once; a
 * failing call falls back to one record at a time, so a poison record is dead-lettered alone, while
 * a transient database error retries the same batch without counting an attempt.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxBatchHandlerTest {
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

  /** Inserts one ledger row per record with a single multi-row statement (unnest of arrays). */
  private static void insertLedgerRows(
      Connection connection, List<InboxRecord> records, String appliedBy) throws Exception {
    int size = records.size();
    String[] ids = new String[size];
    String[] topics = new String[size];
    Integer[] partitions = new Integer[size];
    Long[] offsets = new Long[size];
    Long[] amounts = new Long[size];
    for (int i = 0; i < size; i++) {
      InboxRecord record = records.get(i);
      ids[i] = record.messageId();
      topics[i] = record.topic();
      partitions[i] = record.partition();
      offsets[i] = record.offset();
      amounts[i] = Long.parseLong(record.valueAsString());
    }
    try (PreparedStatement insert =
        connection.prepareStatement(
            "INSERT INTO ledger (message_id, topic, kafka_partition, kafka_offset, amount,"
                + " applied_by) SELECT m, t, p, o, a, ? FROM unnest(?::text[], ?::text[],"
                + " ?::int[], ?::bigint[], ?::bigint[]) AS r(m, t, p, o, a)")) {
      insert.setString(1, appliedBy);
      insert.setArray(2, connection.createArrayOf("text", ids));
      insert.setArray(3, connection.createArrayOf("text", topics));
      insert.setArray(4, connection.createArrayOf("int4", partitions));
      insert.setArray(5, connection.createArrayOf("int8", offsets));
      insert.setArray(6, connection.createArrayOf("int8", amounts));
      int inserted = insert.executeUpdate();
      if (inserted != size) {
        throw new IllegalStateException("inserted " + inserted + " rows for " + size + " records");
      }
    }
  }

  /** Records a contract violation of one call: empty, mixed partitions, or not in offset order. */
  private static void checkCall(List<InboxRecord> records, List<String> violations) {
    if (records.isEmpty()) {
      violations.add("empty list");
      return;
    }
    for (int i = 1; i < records.size(); i++) {
      InboxRecord previous = records.get(i - 1);
      InboxRecord record = records.get(i);
      if (record.partition() != previous.partition() || record.offset() <= previous.offset()) {
        violations.add(
            "out of order: "
                + previous.partition()
                + "/"
                + previous.offset()
                + " then "
                + record.partition()
                + "/"
                + record.offset());
      }
    }
  }

  @Test
  void batchHandlerAppliesEachRecordOnceWithOneStatementPerBatch() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-batch");
    broker.createTopic(topic, 3);
    List<Message> originals = InboxTestSupport.messages("batch-", 2000);
    List<Message> all = new ArrayList<>(originals);
    // Resends (same id and key, so the same partition): duplicates across batches and within one.
    Random random = new Random(42);
    for (int i = 0; i < 400; i++) {
      all.add(originals.get(random.nextInt(originals.size())));
    }
    for (int i = 0; i < 20; i++) {
      Message message = originals.get(i);
      all.add(message);
      all.add(message);
    }
    InboxTestSupport.produce(broker, topic, all);

    String group = "batch-" + topic;
    AtomicInteger calls = new AtomicInteger();
    AtomicInteger largestCall = new AtomicInteger();
    List<String> violations = Collections.synchronizedList(new ArrayList<>());
    InboxBatchHandler handler =
        (records, context) -> {
          calls.incrementAndGet();
          largestCall.accumulateAndGet(records.size(), Math::max);
          checkCall(records, violations);
          insertLedgerRows(context.connection(), records, "batch");
        };
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .concurrency(2)
                .batchHandler(handler)
                .build()) {
      inbox.start();
      await(
          "every record to be committed",
          Duration.ofSeconds(120),
          () -> InboxTestSupport.storedOffsetSum(db, group) == all.size());
    }
    assertEquals(List.of(), violations, "calls that broke the batch handler's contract");
    assertEquals(
        originals.size(), db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'batch'"));
    assertEquals(
        originals.size(),
        db.queryLong("SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'batch'"));
    assertEquals(
        InboxTestSupport.sum(originals),
        db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'batch'"));
    assertEquals(
        originals.size(),
        db.queryLong(
            "SELECT count(*) FROM txkafka_inbox WHERE consumer_group = ? AND status = 'PROCESSED'",
            group));
    assertTrue(
        calls.get() * 10 <= originals.size(),
        "the batch handler should be called far fewer times than there are records, was called "
            + calls.get()
            + " times for "
            + originals.size()
            + " records");
    assertTrue(largestCall.get() > 1, "largest call had " + largestCall.get() + " records");
  }

  @Test
  void poisonRecordInABatchIsIsolatedAndDeadLetteredWhileTheRestIsApplied() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-batch-poison");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("bpoison-", 300);
    InboxTestSupport.produce(broker, topic, messages);
    String poisonId = "bpoison-137";
    long poisonAmount = 138;

    String group = "batch-poison-" + topic;
    AtomicInteger calls = new AtomicInteger();
    AtomicInteger poisonAlone = new AtomicInteger();
    AtomicInteger poisonInBatch = new AtomicInteger();
    List<String> violations = Collections.synchronizedList(new ArrayList<>());
    InboxBatchHandler handler =
        (records, context) -> {
          calls.incrementAndGet();
          checkCall(records, violations);
          // The business write happens first: the rollback must undo it for the whole list.
          insertLedgerRows(context.connection(), records, "batch-poison");
          if (records.stream().anyMatch(record -> record.messageId().equals(poisonId))) {
            (records.size() == 1 ? poisonAlone : poisonInBatch).incrementAndGet();
            throw new IllegalStateException("cannot apply " + poisonId);
          }
        };
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .batchHandler(handler)
                .maxBatchSize(25)
                .maxAttempts(3)
                .retryBackoff(Duration.ofMillis(20))
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());

      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size(), "dead letters");
      assertEquals(poisonId, deadLetters.get(0).record().messageId());
      assertEquals(3, deadLetters.get(0).attempts(), "attempts before dead-lettering");
      assertTrue(
          deadLetters.get(0).lastError().contains("cannot apply " + poisonId),
          deadLetters.get(0).lastError());
    }
    assertEquals(List.of(), violations, "calls that broke the batch handler's contract");
    assertEquals(3, poisonAlone.get(), "calls with the poison record alone (one per attempt)");
    assertTrue(poisonInBatch.get() >= 1, "the poison record first came in a batch");
    assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poisonId));
    assertEquals(
        messages.size() - 1,
        db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'batch-poison'"));
    assertEquals(
        messages.size() - 1,
        db.queryLong(
            "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'batch-poison'"));
    assertEquals(
        InboxTestSupport.sum(messages) - poisonAmount,
        db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'batch-poison'"));
    // Only the poison record's batch is applied one record at a time; the others stay batched.
    assertTrue(
        calls.get() < messages.size() / 3,
        "expected the records outside the poison's batch to stay batched, but the handler was"
            + " called "
            + calls.get()
            + " times for "
            + messages.size()
            + " records");
  }

  @Test
  void transientDatabaseErrorInTheBatchHandlerRetriesTheSameBatchWithoutCountingAttempts() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-batch-transient");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("btransient-", 200);
    InboxTestSupport.produce(broker, topic, messages);

    String group = "batch-transient-" + topic;
    int injected = 3;
    AtomicInteger failures = new AtomicInteger();
    // The offsets of each call, in call order: a failed call must be followed by the same list.
    List<List<Long>> callOffsets = Collections.synchronizedList(new ArrayList<>());
    List<Integer> failedCalls = Collections.synchronizedList(new ArrayList<>());
    InboxBatchHandler handler =
        (records, context) -> {
          callOffsets.add(records.stream().map(InboxRecord::offset).toList());
          insertLedgerRows(context.connection(), records, "batch-transient");
          if (records.size() > 1 && failures.get() < injected) {
            failures.incrementAndGet();
            failedCalls.add(callOffsets.size() - 1);
            throw new SQLException("simulated serialization failure", "40001");
          }
        };
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .batchHandler(handler)
                .maxBatchSize(50)
                // One counted failure would dead-letter a record at once.
                .maxAttempts(1)
                .retryBackoff(Duration.ofMillis(20))
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      assertEquals(List.of(), inbox.deadLetters(10), "a transient error counts no attempt");
    }
    assertEquals(injected, failedCalls.size(), "injected failures");
    for (int failed : failedCalls) {
      assertTrue(failed + 1 < callOffsets.size(), "a call after failed call " + failed);
      assertEquals(
          callOffsets.get(failed),
          callOffsets.get(failed + 1),
          "a transient failure retries the same records as one batch (call " + failed + ")");
    }
    assertEquals(
        messages.size(),
        db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'batch-transient'"));
    assertEquals(
        messages.size(),
        db.queryLong(
            "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'batch-transient'"));
    assertEquals(
        InboxTestSupport.sum(messages),
        db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'batch-transient'"));
  }

  @Test
  void handlerAndBatchHandlerAreExclusiveAndOneIsRequired() {
    InboxBuilder neither =
        Inbox.builder()
            .kafkaProperties(Map.of("bootstrap.servers", "127.0.0.1:1"))
            .groupId("orders")
            .topics("orders.placed")
            .dataSource(new PGSimpleDataSource());
    IllegalArgumentException none = assertThrows(IllegalArgumentException.class, neither::build);
    assertEquals(
        "exactly one of batchHandler and handler is required, neither was given",
        none.getMessage());

    InboxBuilder both =
        neither.handler((record, context) -> {}).batchHandler((records, context) -> {});
    IllegalArgumentException twice = assertThrows(IllegalArgumentException.class, both::build);
    assertEquals(
        "exactly one of batchHandler and handler is required, both were given",
        twice.getMessage());

    neither.handler(null);
    Inbox batchOnly = neither.build();
    batchOnly.close();
  }
}
