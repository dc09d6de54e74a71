package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Queue;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.migrations.TxKafkaMigrations;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The two ways the poll loop brings a partition back to work without any rebalance: the delayed
 * re-claim of a partition that was fenced while Kafka still assigns it here, and the immediate
 * re-claim after an unexpected error escaped the batch processor. Both must resume from the offset
 * stored in the database, so that every record is applied exactly once (never skipped with the
 * batch that was lost in memory, never applied twice), nothing is dead-lettered, and the partition
 * never stalls while this member keeps it.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class InboxRecoveryPathsTest {
  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    TxKafkaMigrations.migrate(db.dataSource(), RESET_SCHEMA);
    InboxTestSupport.createLedger(db);
  }

  /** The schema of the offset-reset test's inbox: the recovery SQL it prints must name it. */
  private static final String RESET_SCHEMA = "recovery_tx";

  @AfterAll
  static void tearDown() {
    db.close();
  }

  /**
   * The topic is deleted and created again under the same name while the service keeps its
   * database (or its log is truncated, or the service is pointed at another cluster): the stored
   * offset (50) is out of range, and the consumer's reset policy sends it back to offset 0. The
   * inbox must not apply those records: it would move the stored offset backwards, apply again
   * records whose inbox rows expired, and take records reusing derived message ids for
   * duplicates. It stops, applying nothing, with a failure that says what happened and how to
   * fix it; the stored offset stays where it was. The fix is SQL the test runs as printed: it
   * names the inbox's schema (not public) and quotes a group id that holds a quote.
   */
  @Test
  void consumerPositionResetBehindTheStoredOffsetStopsTheInboxBeforeApplyingAnything()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-offset-reset");
    broker.createTopic(topic, 1);
    String group = "reset'" + topic;
    // Without message-id headers: the inbox derives ids from topic, partition and offset, which
    // the records of the topic created again reuse.
    InboxTestSupport.produce(broker, topic, withoutIds(InboxTestSupport.messages("before-", 50)));
    try (HikariDataSource dataSource = db.newDataSource(3)) {
      try (Inbox first = resetMember(broker, dataSource, topic, group, InboxTestSupport.ledgerHandler("first"))) {
        first.start();
        await("the 50 records applied", Duration.ofSeconds(60),
            () -> db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic) == 50);
        await("the offset stored", Duration.ofSeconds(30),
            () -> resetStored(group) == 50);
      }

      broker.admin().deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (true) { // the deletion finishes in the background
        try {
          broker.createTopic(topic, 1);
          break;
        } catch (RuntimeException e) {
          if (System.nanoTime() > deadline) {
            throw e;
          }
          Thread.sleep(200);
        }
      }
      InboxTestSupport.produce(broker, topic, withoutIds(InboxTestSupport.messages("after-", 10)));

      AtomicInteger handled = new AtomicInteger();
      InboxHandler counting = (record, context) -> handled.incrementAndGet();
      Inbox second = resetMember(broker, dataSource, topic, group, counting);
      String recovery;
      try {
        second.start();
        await("the inbox to stop", Duration.ofSeconds(60), () -> !second.isRunning());
        assertNotNull(second.failure(), "it stopped on a failure");
        String message = second.failure().getMessage();
        assertTrue(message.contains("its position was reset"), message);
        assertTrue(message.contains("returned offset 0 where it was at 50"), message);
        assertEquals(0, handled.get(), "nothing of the new topic was applied");
        assertEquals(50, resetStored(group), "the stored offset stayed");
        assertEquals(50, db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic));
        assertTrue(message.contains("Do not delete the offset row"), message);
        assertTrue(message.contains("UPDATE \"" + RESET_SCHEMA + "\".txkafka_inbox_offset"), message);
        assertTrue(message.contains("consumer_group = 'reset''" + topic + "'"), message);
        assertTrue(message.contains("starts_with(message_id, 'kafka:" + topic + "/0/')"), message);
        recovery = message.substring(
            message.indexOf("start again: ") + "start again: ".length(),
            message.indexOf(" Do not delete the offset row"));
      } finally {
        second.close();
      }

      // The recovery the failure names, run as printed: the offset to go on from (0), the batch
      // marks cleared, the old derived ids gone.
      db.execute("BEGIN; " + recovery.replace("<offset>", "0") + " COMMIT;");
      assertEquals(0, resetStored(group));
      assertEquals(0, db.queryLong(
          "SELECT count(*) FROM " + RESET_SCHEMA + ".txkafka_inbox WHERE consumer_group = ?", group));
      List<String> applied = Collections.synchronizedList(new ArrayList<>());
      InboxHandler collecting = (record, context) -> applied.add(record.valueAsString());
      try (Inbox third = resetMember(broker, dataSource, topic, group, collecting)) {
        third.start();
        await("the 10 records of the new topic applied", Duration.ofSeconds(60),
            () -> resetStored(group) == 10);
        assertTrue(third.isRunning());
      }
      List<String> expected = new ArrayList<>();
      for (int i = 1; i <= 10; i++) {
        expected.add(Integer.toString(i));
      }
      assertEquals(expected, applied, "each record of the new topic applied once, in order");
    }
  }

  private static List<Message> withoutIds(List<Message> messages) {
    List<Message> plain = new ArrayList<>(messages.size());
    for (Message message : messages) {
      plain.add(new Message(message.key(), null, message.amount()));
    }
    return plain;
  }

  private static Inbox resetMember(
      KafkaBroker broker, HikariDataSource dataSource, String topic, String group, InboxHandler handler) {
    return Inbox.builder()
        .kafkaProperties(InboxTestSupport.consumerProperties(broker))
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .schema(RESET_SCHEMA)
        .handler(handler)
        .build();
  }

  private static long resetStored(String group) {
    return db.queryLong(
        "SELECT coalesce(sum(next_offset), 0) FROM " + RESET_SCHEMA + ".txkafka_inbox_offset"
            + " WHERE consumer_group = ?",
        group);
  }

  /**
   * A lone member works off a one-partition topic with a slow handler (150 ms a record, batches of
   * 10, so a batch is nearly always in flight) while the test bumps the partition's owner epoch in
   * {@code txkafka_inbox_offset}, as another member's claim would. The member's next mark or commit
   * is refused (fenced); Kafka, which saw no rebalance, still assigns the partition to it.
   *
   * <p>Without PollLoop's re-claim after fencing ({@code advancePhases}, phase FENCED, after
   * session timeout + 1 s), the partition would stay FENCED for as long as this member lives: no
   * rebalance comes to assign it anew, so the remaining records would never be applied and the
   * wait below would time out. A re-claim that did not restart from the stored offset would skip
   * or repeat the records of the batches dropped at fencing (count, distinct offsets, sum).
   */
  @Test
  void reclaimsAPartitionFencedWhileStillAssigned() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-reclaim-fenced");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("reclaim-", 60);
    InboxTestSupport.produce(broker, topic, messages);
    String group = "reclaim-" + topic;
    RecordingListener listener = new RecordingListener();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("reclaim");
    InboxHandler slow =
        (record, context) -> {
          ledger.handle(record, context);
          Thread.sleep(150); // the scenario: a slow handler, so that batches are in flight
        };
    // A short session timeout (the re-claim then comes 4 s after the fencing), yet long enough that
    // a pause of a loaded CI machine does not end the session (the test asserts no rebalance).
    Map<String, Object> kafka = new HashMap<>(InboxTestSupport.consumerProperties(broker));
    kafka.put("session.timeout.ms", "3000");
    kafka.put("heartbeat.interval.ms", "500");
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(kafka)
                .kafkaProperty("auto.offset.reset", "earliest")
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(slow)
                .maxBatchSize(10)
                .concurrency(1)
                .retryBackoff(Duration.ofMillis(50))
                .listener(listener)
                .build()) {
      inbox.start();
      await(
          "the first batch to commit",
          Duration.ofSeconds(60),
          () -> listener.highestCommitted.get() >= 1);
      long epochBeforeBump = ownerEpoch(group, topic);
      // Another member's claim, as far as the database can tell. It waits for the row lock of the
      // batch in its transaction, so it lands between two batch transactions.
      assertEquals(1, bumpOwnerEpoch(group, topic), "the partition's offset row was updated");
      long bumpedAt = System.nanoTime();
      long committedAtBump = storedOffset(group, topic);
      assertTrue(
          committedAtBump < messages.size(),
          "records are left to apply after the epoch bump (stored offset "
              + committedAtBump
              + "): the handler must be slow enough for the fencing to hit work in progress");

      assertTrue(
          listener.fenced.await(30, TimeUnit.SECONDS),
          "onPartitionFenced fired after the owner epoch was bumped behind the member's back");
      long fencedAt = listener.fencedAtNanos.get();
      await(
          "every record to be applied after the fencing",
          Duration.ofSeconds(60),
          () -> ledgerRows(topic) >= messages.size());
      await(
          "the stored offset to reach the end",
          Duration.ofSeconds(30),
          () -> storedOffset(group, topic) == messages.size());

      Long resumedAt =
          listener.commits.stream()
              .filter(commit -> commit.atNanos() > fencedAt)
              .map(Commit::atNanos)
              .min(Long::compare)
              .orElse(null);
      assertNotNull(resumedAt, "a commit followed the fencing: the partition resumed");
      long resumeMillis = TimeUnit.NANOSECONDS.toMillis(resumedAt - fencedAt);
      System.out.printf(
          "reclaim: epoch bump at stored offset %d, fenced %d ms after it, first commit %d ms"
              + " after the fencing%n",
          committedAtBump, TimeUnit.NANOSECONDS.toMillis(fencedAt - bumpedAt), resumeMillis);
      // The re-claim is due session timeout + 1 s = 4 s after the fencing; 20 s leaves room for a
      // slow machine, and is still far below "never" (the failure without the re-claim path).
      assertTrue(
          resumeMillis < 20_000,
          "the fenced partition resumed within 20 s, took " + resumeMillis + " ms");

      // The partition came back through the re-claim, not through a rebalance.
      assertEquals(1, listener.assigned.get(), "the partition was assigned once: no rebalance");
      assertEquals(0, listener.lost.get(), "the partition was never lost");
      assertEquals(0, listener.revoked.get(), "the partition was never revoked");
      assertEquals(
          epochBeforeBump + 2,
          ownerEpoch(group, topic),
          "one bump by the test plus exactly one re-claim by the member");
      assertTrue(inbox.isRunning(), "the inbox is still running");
    }
    assertEachRecordAppliedOnce(group, topic, messages);
  }

  /**
   * The handler throws {@code new InternalError("simulated")} once, at offset 15. BatchProcessor
   * lets {@code OutOfMemoryError | InternalError | UnknownError} through from the handler (other
   * VirtualMachineErrors, e.g. StackOverflowError, count as a handler failure and are retried
   * there), the transaction rolls back, and the error reaches the {@code catch (Throwable)} in
   * PollLoop.work(): the batch is lost in memory, so the partition is re-claimed at once (READY to
   * CLAIMING) and resumes from the stored offset; the error is then rethrown and ends that worker
   * thread, which the pool replaces.
   *
   * <p>Without that restart, the records of the lost batch would be gone from memory while the
   * partition stayed READY: the next batch would continue the stream after them, be refused by the
   * compare-and-set on the stored offset (fenced), and only the delayed re-claim after fencing
   * (session timeout + 1 s) would bring the partition back; a restart that did not go back to the
   * stored offset would skip records 10..19 or apply some twice.
   */
  @Test
  void restartsAfterAnUnexpectedErrorWithoutSkippingOrDuplicating() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-restart-error");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("restart-", 100);
    InboxTestSupport.produce(broker, topic, messages);
    String group = "restart-" + topic;
    RecordingListener listener = new RecordingListener();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("restart");
    AtomicLong thrownAt = new AtomicLong();
    AtomicInteger thrown = new AtomicInteger();
    InboxHandler failingOnce =
        (record, context) -> {
          if (record.offset() == 15 && thrown.compareAndSet(0, 1)) {
            thrownAt.set(System.nanoTime());
            throw new InternalError("simulated");
          }
          ledger.handle(record, context);
        };
    // A long session timeout makes the fallback path slow: were the error to leave the partition
    // READY with its batch lost, the next batch would be fenced and only re-claimed after the
    // session timeout + 1 s = 31 s, far beyond the bound asserted below.
    Map<String, Object> kafka = new HashMap<>(InboxTestSupport.consumerProperties(broker));
    kafka.put("session.timeout.ms", "30000");
    kafka.put("heartbeat.interval.ms", "1000");
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(kafka)
                .kafkaProperty("auto.offset.reset", "earliest")
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(failingOnce)
                .maxBatchSize(10)
                .concurrency(1)
                .retryBackoff(Duration.ofMillis(50))
                .listener(listener)
                .build()) {
      inbox.start();
      await(
          "every record to be applied",
          Duration.ofSeconds(90),
          () -> listener.highestCommitted.get() >= messages.size());
      assertEquals(1, thrown.get(), "the handler threw the InternalError once");
      long recoveredAt =
          listener.commits.stream()
              .filter(commit -> commit.nextOffset() >= messages.size())
              .map(Commit::atNanos)
              .min(Long::compare)
              .orElseThrow();
      long recoveryMillis = TimeUnit.NANOSECONDS.toMillis(recoveredAt - thrownAt.get());
      System.out.printf(
          "restart: all %d records committed %d ms after the InternalError%n",
          messages.size(), recoveryMillis);
      // The immediate restart re-claims at once (one database round trip) and the remaining ~85
      // records take well under a second. The fallback (fenced, then re-claimed after
      // session timeout + 1 s) would take at least 31 s here. 10 s separates the two on a slow
      // machine.
      assertTrue(
          recoveryMillis < 10_000,
          "the partition restarted right after the error: the last record committed "
              + recoveryMillis
              + " ms after it (the re-claim after fencing would take more than 31 s)");
      assertEquals(
          0,
          listener.fencedCount.get(),
          "no fencing: the restart re-claimed the partition before any batch could be refused");
      assertEquals(1, listener.assigned.get(), "the partition was assigned once: no rebalance");
      assertEquals(0, listener.lost.get(), "the partition was never lost");
      assertEquals(0, listener.revoked.get(), "the partition was never revoked");
      assertEquals(
          2L,
          ownerEpoch(group, topic),
          "the first claim (epoch 1) plus exactly one re-claim by the restart");
      assertTrue(inbox.isRunning(), "the error did not stop the inbox");
      assertNull(inbox.failure(), "the poll thread did not fail");
      await(
          "the stored offset to reach the end",
          Duration.ofSeconds(30),
          () -> storedOffset(group, topic) == messages.size());
    }
    assertEachRecordAppliedOnce(group, topic, messages);
  }

  private static void assertEachRecordAppliedOnce(
      String group, String topic, List<Message> messages) {
    assertEquals(messages.size(), ledgerRows(topic), "each record applied once (ledger rows)");
    assertEquals(
        messages.size(),
        db.queryLong("SELECT count(DISTINCT kafka_offset) FROM ledger WHERE topic = ?", topic),
        "every offset applied (distinct offsets)");
    assertEquals(
        InboxTestSupport.sum(messages),
        db.queryLong("SELECT sum(amount) FROM ledger WHERE topic = ?", topic),
        "sum of the amounts");
    assertEquals(
        0L,
        db.queryLong("SELECT count(*) FROM txkafka_inbox_dead_letter WHERE topic = ?", topic),
        "no dead letters");
    assertEquals(
        messages.size(), storedOffset(group, topic), "the stored offset is the end of the topic");
  }

  /** Bumps the owner epoch as another member's claim would; returns the rows updated. */
  private static int bumpOwnerEpoch(String group, String topic) throws Exception {
    try (Connection connection = db.connect();
        PreparedStatement update =
            connection.prepareStatement(
                "UPDATE txkafka_inbox_offset SET owner_epoch = owner_epoch + 1"
                    + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = 0")) {
      update.setString(1, group);
      update.setString(2, topic);
      return update.executeUpdate();
    }
  }

  private static long ownerEpoch(String group, String topic) {
    return db.queryLong(
        "SELECT owner_epoch FROM txkafka_inbox_offset WHERE consumer_group = ? AND topic = ?",
        group,
        topic);
  }

  private static long ledgerRows(String topic) {
    return db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic);
  }

  private static long storedOffset(String group, String topic) {
    return db.queryLong(
        "SELECT coalesce(max(next_offset), -1) FROM txkafka_inbox_offset"
            + " WHERE consumer_group = ? AND topic = ?",
        group,
        topic);
  }

  record Commit(long nextOffset, long atNanos) {}

  /** Records what the inbox reports, with the time of each commit and of the first fencing. */
  private static final class RecordingListener implements InboxListener {
    final AtomicInteger assigned = new AtomicInteger();
    final AtomicInteger lost = new AtomicInteger();
    final AtomicInteger revoked = new AtomicInteger();
    final AtomicInteger fencedCount = new AtomicInteger();
    final CountDownLatch fenced = new CountDownLatch(1);
    final AtomicLong fencedAtNanos = new AtomicLong();
    final AtomicLong highestCommitted = new AtomicLong(-1);
    final Queue<Commit> commits = new ConcurrentLinkedQueue<>();

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

    @Override
    public void onPartitionFenced(TopicPartition partition) {
      if (fencedCount.getAndIncrement() == 0) {
        fencedAtNanos.set(System.nanoTime());
        fenced.countDown();
      }
    }

    @Override
    public void onCommitted(TopicPartition partition, long nextOffset) {
      commits.add(new Commit(nextOffset, System.nanoTime()));
      highestCommitted.accumulateAndGet(nextOffset, Math::max);
    }
  }
}
