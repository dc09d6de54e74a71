package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertAllPresent;
import static org.txkafka.it.outbox.OutboxFixtures.assertLatestRowOfEachKeyIsLast;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;

import com.zaxxer.hikari.HikariDataSource;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;
import javax.sql.DataSource;
import org.apache.kafka.clients.producer.Partitioner;
import org.apache.kafka.clients.producer.ProducerInterceptor;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.utils.Utils;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.internal.Shares;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** The relay rides out a Kafka broker outage and a loss of its own database session. */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class OutboxOutageTest {
  private static final Duration WAIT = Duration.ofSeconds(90);

  private static TestDatabase db;
  private static HikariDataSource relayPool;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    relayPool = db.newDataSource(2);
  }

  private static long advisoryLocks() {
    return db.queryLong(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            + " WHERE l.locktype = 'advisory' AND d.datname = current_database()");
  }

  private static long attempts(UUID messageId) {
    return db.queryLong(
        "SELECT coalesce(max(attempts), -1) FROM txkafka_outbox WHERE message_id = ?", messageId);
  }

  private static String lastError(UUID messageId) {
    try (Connection connection = db.connect();
        PreparedStatement query =
            connection.prepareStatement(
                "SELECT last_error FROM txkafka_outbox WHERE message_id = ?")) {
      query.setObject(1, messageId);
      try (ResultSet rs = query.executeQuery()) {
        return rs.next() ? String.valueOf(rs.getString(1)) : "no row";
      }
    } catch (SQLException e) {
      throw new IllegalStateException(e);
    }
  }

  @AfterAll
  static void tearDown() {
    relayPool.close();
    db.close();
  }

  /**
   * The lease timeout ends only a frozen relay's session, not that of a relay that waits: here the
   * relay thread waits for the acknowledgements of a frozen broker for 5 s, five times its 1 s
   * lease timeout, without a statement of its own; the keepalive keeps its session (the same
   * backend holds the locks throughout, no share is lost) and everything is published once the
   * broker is back. Without the keepalive PostgreSQL ends the session after 1 s.
   */
  @Test
  void relayWaitingForAFrozenBrokerLongerThanItsLeaseTimeoutKeepsItsSession() {
    try (KafkaBroker broker = KafkaBroker.startDedicated()) {
      String topic = KafkaBroker.uniqueTopic("lease-keepalive");
      broker.createTopic(topic, 1);
      AtomicInteger lost = new AtomicInteger();
      OutboxRelay.Listener losses = OutboxFixtures.countingLostSessions(lost);
      try (OutboxRelay relay =
              relay(relayPool, broker)
                  .leaseTimeout(Duration.ofSeconds(1))
                  .publishTimeout(Duration.ofSeconds(60))
                  .listener(losses)
                  .build();
          TopicReader reader = new TopicReader(broker, topic)) {
        relay.start();
        await(WAIT, "all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
        long holder = db.queryLong(advisoryLockHolders("min"));
        List<UUID> before = commit(db.dataSource(), List.of(numbered(topic, "k", 0)));
        reader.awaitIds(WAIT, asStrings(before));
        List<UUID> during = new ArrayList<>();
        broker.suspend();
        try {
          for (int i = 1; i <= 10; i++) {
            during.addAll(commit(db.dataSource(), List.of(numbered(topic, "k", i))));
          }
          OutboxFixtures.sleep(5_000);
          assertEquals(0, lost.get(), "no share lost while waiting for the frozen broker");
          assertEquals(
              holder, db.queryLong(advisoryLockHolders("min")), "the same session holds the locks");
        } finally {
          broker.resume();
        }
        List<UUID> all = new ArrayList<>(before);
        all.addAll(during);
        reader.awaitIds(WAIT, asStrings(all));
        await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
        assertPerKeyOrderAfterDedup(reader.records());
        assertEquals(0, lost.get(), "no share lost");
        assertEquals(holder, db.queryLong(advisoryLockHolders("min")), "still the same session");
      }
    }
  }

  @Test
  void rowsWrittenWhileTheBrokerIsDownWaitInTheOutboxAndArePublishedWhenItReturns() {
    try (KafkaBroker broker = KafkaBroker.startDedicated()) {
      String topic = KafkaBroker.uniqueTopic("outage");
      broker.createTopic(topic, 2);
      AtomicInteger batchesStarted = new AtomicInteger();
      OutboxRelay.Listener counting =
          new OutboxRelay.Listener() {
            @Override
            public void batchStarting(Set<Integer> shares, int rows) {
              batchesStarted.incrementAndGet();
            }
          };
      List<UUID> before = new ArrayList<>();
      List<UUID> during = new ArrayList<>();
      OutboxRelay relay =
          relay(relayPool, broker).listener(counting).closeTimeout(Duration.ofSeconds(1)).build();
      try {
        relay.start();
        for (int i = 0; i < 10; i++) {
          before.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
        }
        try (TopicReader reader = new TopicReader(broker, topic)) {
          reader.awaitIds(WAIT, asStrings(before));
        }
        await(WAIT, "outbox emptied before the outage", () -> pendingRows(db) == 0);

        broker.stop();
        int startedBeforeOutage = batchesStarted.get();
        for (int i = 10; i < 60; i++) {
          during.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
        }
        await(WAIT, "relay tried to publish during the outage",
            () -> batchesStarted.get() > startedBeforeOutage);
        OutboxFixtures.sleep(3_000);
        assertEquals(
            during.size(),
            pendingRows(db),
            "no row leaves the outbox without Kafka's acknowledgement");

        // close() during the outage is bounded: the unacknowledged batch is given back. Its bound
        // here: the 1 s close timeout, plus the relay's own grace steps of a few seconds each.
        long closing = System.nanoTime();
        relay.close();
        long closeMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - closing);
        assertTrue(closeMillis < 15_000, "close() took " + closeMillis + " ms");
        assertTrue(relay.ownedShares().isEmpty());
        assertEquals(0, advisoryLocks(), "leases released although Kafka never answered");
        assertEquals(during.size(), pendingRows(db), "the given-back rows are still pending");
      } finally {
        relay.close();
      }
      // A new producer has no metadata yet: its first sends wait max.block.ms for the broker.
      try (OutboxRelay successor =
          relay(relayPool, broker).producerProperty("max.block.ms", 2_000).build()) {
        successor.start();
        broker.start();
        List<UUID> after = commit(db.dataSource(), List.of(numbered(topic, "key-0", 60)));
        List<UUID> all = new ArrayList<>(before);
        all.addAll(during);
        all.addAll(after);
        try (TopicReader reader = new TopicReader(broker, topic)) {
          reader.awaitIds(WAIT, asStrings(all));
          await(WAIT, "outbox emptied after the outage", () -> pendingRows(db) == 0);
          assertAllPresent(asStrings(all), reader.distinctIds());
          int duplicates = assertPerKeyOrderAfterDedup(reader.records());
          System.out.printf("outage: %d messages, %d duplicates%n", all.size(), duplicates);
        }
      }
    }
  }

  /**
   * A broker that holds its connections open and never answers: the producer alone would wait its
   * request timeout (two minutes here) and then retry for ever. The round must end at the relay's
   * publish timeout with its rows still pending, and a new producer must publish them, in per-key
   * order, once the broker answers again.
   */
  @Test
  void roundThatKafkaNeverAcknowledgesEndsAtThePublishTimeoutAndANewProducerSendsItsRows() {
    try (KafkaBroker broker = KafkaBroker.startDedicated()) {
      String topic = KafkaBroker.uniqueTopic("unanswered");
      broker.createTopic(topic, 2);
      AtomicLong failedRoundEndedAt = new AtomicLong();
      OutboxRelay.Listener watching =
          new OutboxRelay.Listener() {
            @Override
            public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
              if (failed > 0) {
                failedRoundEndedAt.compareAndSet(0, System.nanoTime());
              }
            }
          };
      List<UUID> before = new ArrayList<>();
      List<UUID> during = new ArrayList<>();
      try (OutboxRelay relay =
          relay(relayPool, broker)
              .listener(watching)
              .publishTimeout(Duration.ofSeconds(3))
              .producerProperty("request.timeout.ms", 120_000)
              .producerProperty("max.block.ms", 2_000)
              .build()) {
        relay.start();
        for (int i = 0; i < 10; i++) {
          before.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
        }
        try (TopicReader reader = new TopicReader(broker, topic)) {
          reader.awaitIds(WAIT, asStrings(before));
        }
        await(WAIT, "outbox emptied before the freeze", () -> pendingRows(db) == 0);

        broker.suspend();
        long frozenAt = System.nanoTime();
        try {
          for (int i = 10; i < 40; i++) {
            during.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
          }
          await(
              Duration.ofSeconds(30),
              "a round to end with unacknowledged rows while the broker is frozen",
              () -> failedRoundEndedAt.get() != 0);
          long seconds = TimeUnit.NANOSECONDS.toSeconds(failedRoundEndedAt.get() - frozenAt);
          assertTrue(seconds < 20, "the round ended " + seconds + " s after the freeze");
          assertEquals(
              during.size(), pendingRows(db), "no row leaves the outbox without an acknowledgement");
          UUID first = during.get(0);
          await(WAIT, "the attempt counted", () -> attempts(first) >= 1);
          assertTrue(lastError(first).contains("publishTimeout"), lastError(first));
        } finally {
          broker.resume();
        }
        List<UUID> all = new ArrayList<>(before);
        all.addAll(during);
        try (TopicReader reader = new TopicReader(broker, topic)) {
          reader.awaitIds(WAIT, asStrings(all));
          await(WAIT, "outbox emptied after the freeze", () -> pendingRows(db) == 0);
          assertAllPresent(asStrings(all), reader.distinctIds());
          int duplicates = assertPerKeyOrderAfterDedup(reader.records());
          System.out.printf("unanswered: %d messages, %d duplicates%n", all.size(), duplicates);
        }
      }
    }
  }

  /**
   * A broker that stops answering in the middle of a pipelined drain (rounds come back full, so the
   * relay reads the next round while the one before waits for Kafka): the round in flight ends at
   * the publish timeout with its rows pending, the round read ahead is not sent behind it, and
   * once the broker answers again every row is published in per-key order and removed.
   */
  @Test
  void brokerFrozenDuringAPipelinedDrainLosesNothingAndKeepsPerKeyOrder() {
    try (KafkaBroker broker = KafkaBroker.startDedicated()) {
      String topic = KafkaBroker.uniqueTopic("frozen-drain");
      broker.createTopic(topic, 2);
      // On the relay thread, before the third round's rows are handed to the producer.
      PipelineWatch watch = new PipelineWatch(broker::suspend);
      List<UUID> all = commitBacklog(topic);
      try (OutboxRelay relay =
          pipelinedRelay(broker, watch)
              .publishTimeout(Duration.ofSeconds(3))
              .producerProperty("request.timeout.ms", 120_000)
              .producerProperty("max.block.ms", 2_000)
              .build()) {
        try {
          relay.start();
          await(
              Duration.ofSeconds(30),
              "a round to end unacknowledged while the broker is frozen",
              () -> watch.unacknowledged.get() > 0);
          assertTrue(
              pendingRows(db) >= all.size() - 40,
              "at most the two rounds acknowledged before the freeze left: " + pendingRows(db));
        } finally {
          broker.resume();
        }
        try (TopicReader reader = new TopicReader(broker, topic)) {
          assertDrainedInOrder("frozen drain", reader, all, watch);
        }
      }
      assertTrue(watch.overlaps.get() > 0, "a round started before the one before it finished");
    }
  }

  /**
   * The relay's database session ends in the middle of a pipelined drain (its backend terminated
   * while a round is in flight): the statement that fails (the read ahead, or the removal of the
   * round before) gives up every open round, closes their producer at once (left running, it would
   * retry their rows for ever, and a late copy could land after the next owner published later rows
   * of a key), and reports them finished with nothing published. A new session and producer then
   * publish every row, in per-key order, and the batch events stay paired.
   */
  @Test
  void sessionEndingDuringAPipelinedDrainLosesNothingAndKeepsPerKeyOrder() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("session-ends");
    broker.createTopic(topic, 2);
    AtomicInteger terminated = new AtomicInteger();
    // On the relay thread: the session holding the share locks ends under it.
    PipelineWatch watch =
        new PipelineWatch(
            () ->
                terminated.set(
                    (int)
                        db.queryLong(
                            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT DISTINCT pid"
                                + " FROM pg_locks WHERE locktype = 'advisory' AND granted)"
                                + " relays")));
    List<UUID> all = commitBacklog(topic);
    try (OutboxRelay relay =
            pipelinedRelay(broker, watch)
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      assertDrainedInOrder("session ended", reader, all, watch);
      assertEquals(1, terminated.get(), "the relay's session was terminated");
      assertTrue(watch.lost.get() > 0, "the relay lost its shares with its session");
      assertTrue(watch.overlaps.get() > 0, "a round started before the one before it finished");
    }
  }

  /**
   * A round that fails in the middle of a pipelined drain, with the round after it already read:
   * the relay's producer puts the third round's records into a partition their topic does not have
   * (a partitioner of the test's), so they wait for a leader that never comes and expire at {@code
   * delivery.timeout.ms} without reaching the broker, while the fourth round, read meanwhile, holds
   * the next rows of the same key and would be taken by the broker as usual. Sent behind the failed
   * round, it would be written ahead of the third round's rows, and the key would be out of order.
   * Two rules keep it back, each enough alone: the round read ahead is dropped unless the round
   * before was acknowledged cleanly, and a topic whose rows failed waits out its backoff (its rows
   * in the round ahead are skipped). This test fails if both are gone (checked by removing both).
   * The topic then waits one backoff step, not one per failed row, before its rows are sent again.
   */
  @Test
  void roundFailingInAPipelinedDrainKeepsItsKeyInOrderAndBacksItsTopicOffOneStep() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("expired-round");
    broker.createTopic(topic, 2);
    // On the relay thread, before the third round's rows are handed to the producer.
    PipelineWatch watch = new PipelineWatch(() -> NowhereForSomePartitioner.misdirectNext(20));
    // One key: the fourth round holds the rows of that key right after the third round's.
    List<UUID> all = commitBacklog(topic, 1);
    try (OutboxRelay relay =
            pipelinedRelay(broker, watch)
                .publishTimeout(Duration.ofSeconds(60))
                .retryBackoff(Duration.ofMillis(200), Duration.ofSeconds(1))
                .producerProperty("partitioner.class", NowhereForSomePartitioner.class.getName())
                .producerProperty("request.timeout.ms", 1_000)
                .producerProperty("delivery.timeout.ms", 3_000)
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      await(WAIT, "the misdirected round to be reported", () -> watch.unacknowledged.get() > 0);
      long failedAt = System.nanoTime();
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      long recoveredMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - failedAt);
      // One backoff step (200 ms) per failed round. Stepped once per failed row, the topic would
      // wait out its maximum (30 s) after a single round.
      assertTrue(
          recoveredMillis < 15_000,
          "the rest was published " + recoveredMillis + " ms after the failed round");
      assertDrainedInOrder("expired round", reader, all, watch);
    }
    assertEquals(20, NowhereForSomePartitioner.misdirected.get(), "the third round misdirected");
    assertTrue(watch.unacknowledged.get() > 0, "a round was reported with rows not published");
    assertTrue(watch.overlaps.get() > 0, "a round started before the one before it finished");
  }

  /**
   * The producer's network thread gets stuck (here in an interceptor's {@code onAcknowledgement},
   * user code that runs on that thread): the round outlives the publish timeout, the producer
   * cannot even be closed (KafkaProducer.close joins its network thread without a bound once the
   * timeout passed), and the relay leaves it behind and publishes with a new one. Before the relay
   * bounded that close, its thread waited for it for good, holding its shares.
   */
  @Test
  void producerWhoseNetworkThreadIsStuckIsLeftBehindAndANewOnePublishes() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("stuck-network-thread");
    broker.createTopic(topic, 2);
    StuckAcknowledgementInterceptor.arm();
    try {
      List<UUID> all = new ArrayList<>();
      OutboxRelay relay =
          relay(relayPool, broker)
              .publishTimeout(Duration.ofSeconds(2))
              .producerProperty(
                  "interceptor.classes", StuckAcknowledgementInterceptor.class.getName())
              .build();
      try (relay;
          TopicReader reader = new TopicReader(broker, topic)) {
        relay.start();
        for (int i = 0; i < 30; i++) {
          all.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
        }
        reader.awaitIds(Duration.ofSeconds(90), asStrings(all));
        await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
        assertAllPresent(asStrings(all), reader.distinctIds());
        int duplicates = assertPerKeyOrderAfterDedup(reader.records());
        System.out.printf(
            "stuck network thread: %d messages, %d duplicates%n", all.size(), duplicates);
        assertEquals(
            1, StuckAcknowledgementInterceptor.stuck.get(), "one network thread was stuck");
        long closing = System.nanoTime();
        relay.close();
        long closeMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - closing);
        assertTrue(closeMillis < 30_000, "close() took " + closeMillis + " ms");
      }
    } finally {
      StuckAcknowledgementInterceptor.release();
    }
  }

  /**
   * Blocks the producer's network thread in the first acknowledgement after {@link #arm()}, until
   * {@link #release()}.
   */
  public static final class StuckAcknowledgementInterceptor
      implements ProducerInterceptor<byte[], byte[]> {
    private static final AtomicBoolean armed = new AtomicBoolean();
    private static volatile CountDownLatch released = new CountDownLatch(0);
    static final AtomicInteger stuck = new AtomicInteger();

    static void arm() {
      stuck.set(0);
      released = new CountDownLatch(1);
      armed.set(true);
    }

    static void release() {
      armed.set(false);
      released.countDown();
    }

    @Override
    public ProducerRecord<byte[], byte[]> onSend(ProducerRecord<byte[], byte[]> record) {
      return record;
    }

    @Override
    public void onAcknowledgement(RecordMetadata metadata, Exception exception) {
      if (armed.compareAndSet(true, false)) {
        stuck.incrementAndGet();
        try {
          released.await(5, TimeUnit.MINUTES);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      }
    }

    @Override
    public void close() {}

    @Override
    public void configure(Map<String, ?> configs) {}
  }

  /**
   * Partitions by the key's hash, as Kafka does, except for the next records after {@link
   * #misdirectNext}: those go to a partition the topic does not have, so the producer holds them
   * until their delivery timeout (no leader) and they never reach the broker.
   */
  public static final class NowhereForSomePartitioner implements Partitioner {
    private static final AtomicInteger toMisdirect = new AtomicInteger();
    static final AtomicInteger misdirected = new AtomicInteger();

    static void misdirectNext(int records) {
      misdirected.set(0);
      toMisdirect.set(records);
    }

    @Override
    public int partition(
        String topic,
        Object key,
        byte[] keyBytes,
        Object value,
        byte[] valueBytes,
        org.apache.kafka.common.Cluster cluster) {
      int partitions = cluster.partitionCountForTopic(topic);
      if (toMisdirect.getAndUpdate(left -> Math.max(0, left - 1)) > 0) {
        misdirected.incrementAndGet();
        return partitions + 7;
      }
      return Utils.toPositive(Utils.murmur2(keyBytes)) % partitions;
    }

    @Override
    public void close() {}

    @Override
    public void configure(Map<String, ?> configs) {}
  }

  /**
   * A round abandoned at the publish timeout (broker frozen) whose bookkeeping then fails because
   * the relay's database session ended meanwhile: the round is given up and reported finished
   * once, its closed producer is replaced (a closed producer kept would fail every later send), and
   * a new session publishes every row in per-key order.
   */
  @Test
  void roundAbandonedAtThePublishTimeoutAndThenGivenUpWithItsSessionLosesNothing() {
    try (KafkaBroker broker = KafkaBroker.startDedicated()) {
      String topic = KafkaBroker.uniqueTopic("abandoned-given-up");
      broker.createTopic(topic, 2);
      PipelineWatch watch = new PipelineWatch(broker::suspend);
      List<UUID> all = commitBacklog(topic);
      try (OutboxRelay relay =
          pipelinedRelay(broker, watch)
              .publishTimeout(Duration.ofSeconds(4))
              .producerProperty("request.timeout.ms", 120_000)
              .producerProperty("max.block.ms", 2_000)
              .build()) {
        long terminated;
        try {
          relay.start();
          await(
              Duration.ofSeconds(30),
              "the broker frozen at the third round",
              () -> watch.thirdRoundStarted);
          // Within a few milliseconds the relay thread removes the second round, reads the fourth
          // and waits for the third round's acknowledgements, which the watchdog ends 4 s after the
          // send. The session ends in that wait, so that the round is abandoned first and given up
          // when its bookkeeping fails.
          OutboxFixtures.sleep(1_500);
          terminated =
              db.queryLong(
                  "SELECT count(pg_terminate_backend(pid)) FROM (SELECT DISTINCT pid FROM pg_locks"
                      + " WHERE locktype = 'advisory' AND granted) relays");
          await(
              Duration.ofSeconds(30),
              "the round to be abandoned and given up",
              () -> watch.unacknowledged.get() > 0 && watch.lost.get() > 0);
        } finally {
          broker.resume();
        }
        assertEquals(1, terminated, "the relay's session was terminated");
        try (TopicReader reader = new TopicReader(broker, topic)) {
          assertDrainedInOrder("abandoned, given up", reader, all, watch);
        }
      }
    }
  }

  /**
   * A statement of the relay fails while its session stays alive (here a trigger refuses one
   * removal; in a service: a statement or lock timeout). The relay must end that session, not hand
   * the connection back to its pool: the session's advisory locks (its presence and its shares)
   * would stay with an idle pooled connection, and no relay could take those shares while it
   * lives. The rows of the refused removal are published again (at least once), in per-key order.
   */
  @Test
  void statementFailingOnALiveSessionEndsThatSessionAndItsLocks() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("refused-removal");
    broker.createTopic(topic, 2);
    db.execute(
        "CREATE SEQUENCE refuse_removal_once",
        "CREATE FUNCTION refuse_removal_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            + " IF nextval('refuse_removal_once') = 1 THEN"
            + " RAISE EXCEPTION 'removal refused once by the test'; END IF; RETURN NULL; END $$",
        "CREATE TRIGGER refuse_removal_once BEFORE DELETE ON txkafka_outbox"
            + " FOR EACH STATEMENT EXECUTE FUNCTION refuse_removal_once()");
    try (OutboxRelay relay = relay(relayPool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      await(WAIT, "all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      long before = db.queryLong(advisoryLockHolders("min"));
      List<UUID> all = new ArrayList<>();
      for (int i = 0; i < 30; i++) {
        all.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 3, i))));
      }
      reader.awaitIds(WAIT, asStrings(all));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      await(WAIT, "shares held again", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      // Only the first removal is refused (nextval 1); more rounds may follow it.
      assertTrue(
          db.queryLong("SELECT last_value FROM refuse_removal_once") >= 2,
          "the refused removal was followed by one that succeeded");
      assertEquals(
          1, db.queryLong(advisoryLockHolders("count")), "one session holds the relay's locks");
      long after = db.queryLong(advisoryLockHolders("min"));
      assertTrue(after != before, "the session whose statement failed was ended");
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM pg_stat_activity WHERE pid = ?", before),
          "the session whose statement failed is gone");
      assertAllPresent(asStrings(all), reader.distinctIds());
      assertPerKeyOrderAfterDedup(reader.records());
    } finally {
      db.execute(
          "DROP TRIGGER refuse_removal_once ON txkafka_outbox",
          "DROP FUNCTION refuse_removal_once()",
          "DROP SEQUENCE refuse_removal_once");
    }
  }

  /**
   * close() while the relay's statement is stuck in the database (a trigger sleeps in the removal;
   * in a service: a lock wait behind a long transaction). close() returns within its bound, and the
   * shares are free for the next relay at once: PostgreSQL notices a closed socket only when it
   * next writes to it, so a backend stuck in a statement keeps its session's advisory locks until
   * the statement ends unless it is terminated.
   */
  @Test
  void closeWhileAStatementIsStuckInTheDatabaseFreesTheSharesForTheNextRelay() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("stuck-removal");
    broker.createTopic(topic, 2);
    db.execute(
        "CREATE SEQUENCE stuck_removal",
        "CREATE FUNCTION stuck_removal() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            + " IF nextval('stuck_removal') = 1 THEN PERFORM pg_sleep(300); END IF;"
            + " RETURN NULL; END $$",
        "CREATE TRIGGER stuck_removal BEFORE DELETE ON txkafka_outbox"
            + " FOR EACH STATEMENT EXECUTE FUNCTION stuck_removal()");
    try (TopicReader reader = new TopicReader(broker, topic)) {
      List<UUID> all = new ArrayList<>();
      OutboxRelay first = relay(relayPool, broker).closeTimeout(Duration.ofSeconds(1)).build();
      try {
        first.start();
        for (int i = 0; i < 5; i++) {
          all.addAll(commit(db.dataSource(), List.of(numbered(topic, "stuck-" + i % 2, i))));
        }
        await(
            WAIT,
            "the relay's removal to be stuck in the trigger",
            () ->
                db.queryLong(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            + " AND wait_event = 'PgSleep'")
                    == 1);
      } finally {
        long closing = System.nanoTime();
        first.close();
        long closeMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - closing);
        assertTrue(closeMillis < 30_000, "close() took " + closeMillis + " ms");
      }
      try (OutboxRelay next = relay(relayPool, broker).build()) {
        next.start();
        await(
            Duration.ofSeconds(20),
            "the next relay to hold every share",
            () -> next.ownedShares().size() == Outbox.SHARE_COUNT);
        reader.awaitIds(WAIT, asStrings(all));
        await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
        assertPerKeyOrderAfterDedup(reader.records());
      }
    } finally {
      db.queryLong(
          "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
              + " WHERE datname = current_database() AND wait_event = 'PgSleep'");
      db.execute(
          "DROP TRIGGER stuck_removal ON txkafka_outbox",
          "DROP FUNCTION stuck_removal()",
          "DROP SEQUENCE stuck_removal");
    }
  }

  /** The backends holding advisory locks in the test's database: {@code count} or {@code min}. */
  private static String advisoryLockHolders(String aggregate) {
    String holder = "count".equals(aggregate) ? "count(DISTINCT l.pid)" : "min(l.pid)";
    return "SELECT "
        + holder
        + " FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        + " WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()";
  }

  /**
   * After a pipelined drain that went through a failure: every row reached the topic and left the
   * outbox, each key is in order after dropping duplicates and ends on its latest row (what a
   * compacted topic keeps), and each round was reported finished once.
   */
  private static void assertDrainedInOrder(
      String label, TopicReader reader, List<UUID> all, PipelineWatch watch) {
    reader.awaitIds(WAIT, asStrings(all));
    await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
    assertAllPresent(asStrings(all), reader.distinctIds());
    int duplicates = assertPerKeyOrderAfterDedup(reader.records());
    assertLatestRowOfEachKeyIsLast(reader.records());
    System.out.printf("%s: %d messages, %d duplicates%n", label, all.size(), duplicates);
    await(WAIT, "every batch started was reported finished", () -> watch.open.get() == 0);
    assertEquals(0, watch.reportedTwice.get(), "a round reported finished more than once");
  }

  /**
   * A relay that drains a backlog as a pipeline of rounds of 20 rows, watched by {@code watch}, with
   * no lease check during the drain (so that the pipeline is not cut short by one).
   */
  private static OutboxRelay.Builder pipelinedRelay(KafkaBroker broker, PipelineWatch watch) {
    return relay(relayPool, broker)
        .batchSize(20)
        .leaseCheckInterval(Duration.ofMinutes(1))
        .listener(watch);
  }

  /** 400 rows over 5 keys, 20 per transaction: a backlog that fills many rounds of 20. */
  private static List<UUID> commitBacklog(String topic) {
    return commitBacklog(topic, 5);
  }

  /**
   * 400 rows over {@code keys} keys, 20 per transaction. A round takes its rows from as few shares
   * as fill it (the first share changes every round), so with one key every round holds the next
   * rows of that key.
   */
  private static List<UUID> commitBacklog(String topic, int keys) {
    List<UUID> all = new ArrayList<>();
    for (int t = 0; t < 20; t++) {
      List<OutboxMessage> messages = new ArrayList<>();
      for (int i = t * 20; i < (t + 1) * 20; i++) {
        messages.add(numbered(topic, "key-" + i % keys, i));
      }
      all.addAll(commit(db.dataSource(), messages));
    }
    return all;
  }

  /**
   * Watches a relay's rounds: how many are open, how often one started before the one before it
   * finished, rounds that ended with rows unacknowledged, lost shares; runs {@code atThirdRound} on
   * the relay thread when the third round starts.
   */
  private static final class PipelineWatch implements OutboxRelay.Listener {
    final AtomicInteger open = new AtomicInteger();
    final AtomicInteger overlaps = new AtomicInteger();
    final AtomicInteger unacknowledged = new AtomicInteger();
    final AtomicInteger lost = new AtomicInteger();
    /** Rounds reported finished while none was open: a round reported more than once. */
    final AtomicInteger reportedTwice = new AtomicInteger();
    volatile boolean thirdRoundStarted;
    private final AtomicInteger started = new AtomicInteger();
    private final Runnable atThirdRound;

    PipelineWatch(Runnable atThirdRound) {
      this.atThirdRound = atThirdRound;
    }

    @Override
    public void batchStarting(Set<Integer> shares, int rows) {
      if (open.incrementAndGet() > 1) {
        overlaps.incrementAndGet();
      }
      if (started.incrementAndGet() == 3) {
        atThirdRound.run();
        thirdRoundStarted = true;
      }
    }

    @Override
    public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
      if (open.decrementAndGet() < 0) {
        reportedTwice.incrementAndGet();
      }
      if (failed > 0) {
        unacknowledged.incrementAndGet();
      }
    }

    @Override
    public void sharesReleased(Set<Integer> shares, boolean lostShares) {
      if (lostShares) {
        lost.incrementAndGet();
      }
    }
  }

  @Test
  void rowsForAMissingTopicWaitAndCountAttemptsWithoutStarvingOtherSharesThenArePublished() {
    KafkaBroker broker = KafkaBroker.shared();
    String missing = KafkaBroker.uniqueTopic("created-later");
    String present = KafkaBroker.uniqueTopic("present");
    broker.createTopic(present, 2);
    try (OutboxRelay relay =
            relay(relayPool, broker)
                .batchSize(10)
                .producerProperty("max.block.ms", 1_000)
                .build();
        TopicReader reader = new TopicReader(broker, present)) {
      relay.start();
      // More waiting rows than a batch holds, over several shares: read first in id order, they
      // would fill every batch if their shares were not paused.
      List<OutboxMessage> waitingMessages = new ArrayList<>();
      Set<Integer> waitingShares = new HashSet<>();
      for (int i = 0; i < 25; i++) {
        waitingMessages.add(numbered(missing, "late-" + i, 0));
        waitingShares.add(shareOf("late-" + i));
      }
      List<UUID> waiting = commit(db.dataSource(), waitingMessages);
      List<UUID> flowing = new ArrayList<>();
      for (int i = 0; flowing.size() < 30; i++) {
        String key = "other-" + i;
        if (!waitingShares.contains(shareOf(key))) {
          flowing.addAll(commit(db.dataSource(), List.of(numbered(present, key, i))));
        }
      }
      reader.awaitIds(WAIT, asStrings(flowing));
      // Each round starts with another share, so the failed attempts spread over the waiting rows.
      await(WAIT, "failed attempts counted", () -> db.queryLong(
          "SELECT coalesce(sum(attempts), 0) FROM txkafka_outbox WHERE topic = ?", missing) >= 2);
      // The flowing rows of a round are removed after its acknowledgements, which a round holding
      // a waiting row reaches only after that row's max.block.ms: wait for their removal.
      await(WAIT, "only the waiting rows left, neither lost nor parked",
          () -> pendingRows(db) == waiting.size());
      UUID tried = waiting.stream().filter(id -> attempts(id) > 0).findFirst().orElseThrow();
      assertTrue(lastError(tried).contains("TimeoutException"), lastError(tried));

      broker.createTopic(missing, 1);
      try (TopicReader late = new TopicReader(broker, missing)) {
        late.awaitIds(WAIT, asStrings(waiting));
      }
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
    }
  }

  private static int shareOf(String key) {
    return Shares.shareOf(key.getBytes(StandardCharsets.UTF_8), null);
  }

  @Test
  void relayWhoseDatabaseSessionIsKilledReconnectsTakesItsSharesBackAndLosesNothing() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("session-loss");
    broker.createTopic(topic, 2);
    AtomicInteger lost = new AtomicInteger();
    OutboxRelay.Listener counting =
        new OutboxRelay.Listener() {
          @Override
          public void sharesReleased(Set<Integer> shares, boolean wasLost) {
            if (wasLost) {
              lost.addAndGet(shares.size());
            }
          }
        };
    try (OutboxRelay relay = relay(relayPool, broker).listener(counting).batchSize(20).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      await(WAIT, "all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      // Unpooled: every write is a fresh session, untouched by the terminations below.
      DataSource writes = OutboxFixtures.unpooled(db);
      List<UUID> all = new ArrayList<>();
      for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 100; i++) {
          all.addAll(commit(writes, List.of(numbered(topic, "key-" + i % 7, round * 100 + i))));
        }
        // Ends every other session of the database, the relay's lease session among them.
        assertTrue(db.terminateConnections() > 0);
      }
      reader.awaitIds(WAIT, asStrings(all));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      await(WAIT, "shares held again", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      assertTrue(lost.get() >= Outbox.SHARE_COUNT, "the relay noticed it lost its shares");
      assertAllPresent(asStrings(all), reader.distinctIds());
      assertPerKeyOrderAfterDedup(reader.records());
    }
  }
}
