package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.relay;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.producer.ProducerInterceptor;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.config.ConfigResource;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxAdmin;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.ParkedMessage;
import org.txkafka.outbox.internal.Shares;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** Rows that can never be sent as they are: parked, visible, replayable, never blocking. */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxPoisonTest {
  private static final Duration WAIT = Duration.ofSeconds(60);
  private static final int TOO_LARGE = 2 * 1024 * 1024;

  private static TestDatabase db;
  private static KafkaBroker broker;
  private static HikariDataSource relayPool;
  private static OutboxAdmin admin;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    broker = KafkaBroker.shared();
    relayPool = db.newDataSource(2);
    admin = Outbox.admin(db.dataSource());
  }

  @AfterAll
  static void tearDown() {
    relayPool.close();
    db.close();
  }

  @Test
  void oversizedPayloadIsParkedWithItsErrorWhileOtherKeysKeepFlowingThenReplayedOnceFixed()
      throws Exception {
    String topic = KafkaBroker.uniqueTopic("poison");
    broker.createTopic(topic, 2);
    List<UUID> healthy = new ArrayList<>();
    UUID poison;
    try (TopicReader reader = new TopicReader(broker, topic)) {
      try (OutboxRelay relay = relay(relayPool, broker).batchSize(10).build()) {
        relay.start();
        healthy.addAll(commit(db.dataSource(), List.of(numbered(topic, "poison-key", 0))));
        poison =
            commit(
                    db.dataSource(),
                    List.of(
                        OutboxMessage.to(topic)
                            .key("poison-key")
                            .payload(new byte[TOO_LARGE])
                            .build()))
                .get(0);
        for (int i = 1; i <= 40; i++) {
          healthy.addAll(
              commit(
                  db.dataSource(),
                  List.of(numbered(topic, "poison-key", i), numbered(topic, "other-" + i % 4, i))));
        }
        reader.awaitIds(WAIT, asStrings(healthy));
        await(WAIT, "only the poison row left", () -> admin.pendingCount() == 0);
        assertFalse(reader.distinctIds().contains(poison.toString()), "poison not published");
        assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
      }

      List<ParkedMessage> parked = admin.parked(10);
      assertEquals(1, parked.size());
      ParkedMessage row = parked.get(0);
      assertEquals(poison, row.messageId());
      assertEquals(topic, row.topic());
      assertEquals(TOO_LARGE, row.payloadSize());
      assertEquals(1, row.attempts());
      assertTrue(row.lastError().contains("RecordTooLargeException"), row.lastError());
      assertTrue(row.parkedAt() != null && row.createdAt() != null);

      // The operator fixes the cause (larger records allowed) and replays the row.
      setTopicConfig(topic, "max.message.bytes", Integer.toString(4 * TOO_LARGE));
      try (OutboxRelay relay =
          relay(relayPool, broker)
              .producerProperty("max.request.size", 4 * TOO_LARGE)
              .build()) {
        relay.start();
        assertFalse(admin.replay(row.id() + 1_000_000), "no such parked row");
        assertTrue(admin.replay(row.id()));
        reader.awaitIds(WAIT, Set.of(poison.toString()));
        await(WAIT, "replayed row removed", () -> admin.pendingCount() == 0);
        assertTrue(admin.parked(10).isEmpty());
      }
    }
  }

  /**
   * The same in a pipelined drain (a backlog, so rounds of 10 come back full and the next round is
   * read while one waits for Kafka): the poison row is parked by its round while the next round is
   * already in flight, it holds up no later row, and every other key keeps its order.
   */
  @Test
  void oversizedPayloadInAPipelinedDrainIsParkedAndTheRestPublishedInOrder() throws Exception {
    String topic = KafkaBroker.uniqueTopic("poison-drain");
    broker.createTopic(topic, 2);
    List<UUID> healthy = new ArrayList<>();
    healthy.addAll(commit(db.dataSource(), List.of(numbered(topic, "poison-key", 0))));
    UUID poison =
        commit(
                db.dataSource(),
                List.of(OutboxMessage.to(topic).key("poison-key").payload(new byte[TOO_LARGE]).build()))
            .get(0);
    for (int i = 1; i <= 60; i++) {
      healthy.addAll(
          commit(
              db.dataSource(),
              List.of(numbered(topic, "poison-key", i), numbered(topic, "other-" + i % 4, i))));
    }
    AtomicInteger open = new AtomicInteger();
    AtomicInteger overlaps = new AtomicInteger();
    OutboxRelay.Listener watching =
        new OutboxRelay.Listener() {
          @Override
          public void batchStarting(Set<Integer> shares, int rows) {
            if (open.incrementAndGet() > 1) {
              overlaps.incrementAndGet();
            }
          }

          @Override
          public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
            open.decrementAndGet();
          }
        };
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay =
            relay(relayPool, broker)
                .batchSize(10)
                .leaseCheckInterval(Duration.ofMinutes(1))
                .listener(watching)
                .build()) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(healthy));
      await(WAIT, "only the poison row left", () -> admin.pendingCount() == 0);
      assertFalse(reader.distinctIds().contains(poison.toString()), "poison not published");
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
      assertTrue(overlaps.get() > 0, "a round started before the one before it finished");
      assertTrue(
          admin.parked(10).stream()
              .anyMatch(
                  parked ->
                      parked.messageId().equals(poison)
                          && parked.lastError().contains("RecordTooLargeException")),
          "the poison row is parked with its error");
    } finally {
      for (ParkedMessage parked : admin.parked(10)) {
        if (parked.messageId().equals(poison)) {
          admin.discard(parked.id());
        }
      }
    }
    assertTrue(
        admin.parked(10).stream().noneMatch(parked -> parked.messageId().equals(poison)),
        "discarded (other tests of this class count the parked rows)");
  }

  @Test
  void invalidTopicNameIsParkedAndStaysParkedOnReplayUntilDiscarded() {
    String good = KafkaBroker.uniqueTopic("poison-good");
    broker.createTopic(good, 1);
    String invalid = "not a valid topic!";
    try (OutboxRelay relay = relay(relayPool, broker).build();
        TopicReader reader = new TopicReader(broker, good)) {
      relay.start();
      // The writer refuses such a name; a row written by SQL (or by an older writer) can have it.
      UUID bad = UUID.randomUUID();
      db.queryLong(
          "WITH written AS (INSERT INTO txkafka_outbox (message_id, share, topic, record_key,"
              + " payload) VALUES (?, ?, ?, ?, ?) RETURNING id) SELECT count(*) FROM written",
          bad,
          (short) Shares.shareOf("k".getBytes(StandardCharsets.UTF_8), bad),
          invalid,
          "k".getBytes(StandardCharsets.UTF_8),
          "k|0".getBytes(StandardCharsets.UTF_8));
      List<UUID> fine = commit(db.dataSource(), List.of(numbered(good, "k", 1)));
      reader.awaitIds(WAIT, asStrings(fine));
      await(WAIT, "invalid-topic row parked", () -> admin.parked(10).size() == 1);
      ParkedMessage parked = admin.parked(10).get(0);
      assertEquals(bad, parked.messageId());
      assertTrue(parked.lastError().contains("InvalidTopicException"), parked.lastError());

      assertEquals(1, admin.replayAll());
      await(
          WAIT,
          "replayed row parked again",
          () -> {
            List<ParkedMessage> again = admin.parked(10);
            return again.size() == 1 && again.get(0).attempts() == 2;
          });
      ParkedMessage again = admin.parked(10).get(0);
      assertEquals(bad, again.messageId(), "the same message, parked again");
      assertTrue(again.id() > parked.id(), "a replay gives the row a new id, behind its key's rows");
      assertFalse(admin.discard(parked.id()), "the old id is gone with the replay");
      assertTrue(admin.discard(again.id()));
      assertFalse(admin.discard(again.id()), "already gone");
      assertTrue(admin.parked(10).isEmpty());
      assertEquals(0, admin.pendingCount());
    }
  }

  /**
   * A row addressed to a partition its topic does not have (the writer chose the partition): the
   * producer waits {@code max.block.ms} for metadata that never shows it, and fails at once. That
   * is the row's defect, not an outage: it is parked, naming the partition and the topic's count,
   * and the rows after it (the same key, and every other key of its share) keep flowing. Left
   * pending, it would block its share (a 64th of all keys, across topics) for good.
   */
  @Test
  void rowForAPartitionTheTopicLacksIsParkedAndItsShareKeepsFlowing() {
    String topic = KafkaBroker.uniqueTopic("no-such-partition");
    broker.createTopic(topic, 2);
    List<UUID> healthy = new ArrayList<>();
    healthy.addAll(commit(db.dataSource(), List.of(numbered(topic, "addressed", 0))));
    UUID misaddressed =
        commit(
                db.dataSource(),
                List.of(
                    OutboxMessage.to(topic).key("addressed").partition(7).payload("x").build()))
            .get(0);
    for (int i = 1; i <= 20; i++) {
      healthy.addAll(
          commit(
              db.dataSource(),
              List.of(numbered(topic, "addressed", i), numbered(topic, "other-" + i % 4, i))));
    }
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay =
            relay(relayPool, broker).producerProperty("max.block.ms", 1_000).build()) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(healthy));
      await(WAIT, "only the misaddressed row left", () -> admin.pendingCount() == 0);
      assertFalse(reader.distinctIds().contains(misaddressed.toString()), "not published");
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
    }
    List<ParkedMessage> parked = admin.parked(10);
    assertEquals(1, parked.size(), parked.toString());
    assertEquals(misaddressed, parked.get(0).messageId());
    String error = parked.get(0).lastError();
    assertTrue(error.contains("partition 7") && error.contains("2 partitions"), error);
    admin.discard(parked.get(0).id());
  }

  /**
   * A run of records the broker refuses as too large for the topic (above its max.message.bytes,
   * below the producer's max.request.size, so refused after the send): each round stops at the
   * first one, which is parked, and the next round starts at once on a new producer. Before, each
   * such round also waited the relay's backoff, doubling up to its maximum (5 s by default): 30
   * rows took about two minutes, in which no other share of the relay moved.
   */
  @Test
  void aRunOfRecordsTheBrokerRefusesAsTooLargeCostsARoundEachNotABackoffEach() throws Exception {
    String topic = KafkaBroker.uniqueTopic("too-large-run");
    broker.createTopic(topic, 1);
    setTopicConfig(topic, "max.message.bytes", "10000");
    List<OutboxMessage> big = new ArrayList<>();
    for (int i = 0; i < 30; i++) {
      big.add(OutboxMessage.to(topic).key("big-" + i).payload(new byte[20_000]).build());
    }
    commit(db.dataSource(), big);
    List<UUID> healthy = new ArrayList<>();
    for (int i = 0; i < 10; i++) {
      healthy.addAll(commit(db.dataSource(), List.of(numbered(topic, "small-" + i % 3, i))));
    }
    long started = System.nanoTime();
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay =
            relay(relayPool, broker)
                .retryBackoff(Duration.ofMillis(100), Duration.ofSeconds(5))
                .build()) {
      relay.start();
      reader.awaitIds(Duration.ofSeconds(40), asStrings(healthy));
      await(Duration.ofSeconds(40), "the 30 large rows parked", () ->
          admin.parked(100).size() == 30);
      assertEquals(0, admin.pendingCount(), "nothing left pending");
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
    }
    System.out.printf(
        "30 records refused as too large by the broker, parked in %d ms%n",
        TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started));
    for (ParkedMessage parked : admin.parked(100)) {
      assertTrue(parked.lastError().contains("RecordTooLargeException"), parked.lastError());
      admin.discard(parked.id());
    }
  }

  /**
   * Many rows addressed to a partition their topic does not have (a writer's bug, such as a hash
   * modulo the wrong count), at the default max.block.ms of 10 s: only the first waits for
   * metadata; the others are checked against the producer's metadata and parked at once, and the
   * healthy rows go on. Before, each such row held the relay thread for max.block.ms: 100 rows,
   * about 17 minutes in which no share of the relay moved.
   */
  @Test
  void manyRowsForAPartitionTheTopicLacksCostOneMetadataWaitNotOneEach() {
    String topic = KafkaBroker.uniqueTopic("no-such-partition-many");
    broker.createTopic(topic, 2);
    List<OutboxMessage> misaddressed = new ArrayList<>();
    for (int i = 0; i < 100; i++) {
      misaddressed.add(
          OutboxMessage.to(topic).key("bad-" + i).partition(7).payload("x" + i).build());
    }
    commit(db.dataSource(), misaddressed);
    List<UUID> healthy = new ArrayList<>();
    for (int i = 0; i < 20; i++) {
      healthy.addAll(commit(db.dataSource(), List.of(numbered(topic, "good-" + i % 4, i))));
    }
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay = relay(relayPool, broker).build()) {
      relay.start();
      reader.awaitIds(Duration.ofSeconds(45), asStrings(healthy));
      await(Duration.ofSeconds(45), "the misaddressed rows parked", () ->
          admin.parked(200).size() == 100);
      assertEquals(0, admin.pendingCount(), "nothing left pending");
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
    }
    for (ParkedMessage parked : admin.parked(200)) {
      assertTrue(parked.lastError().contains("partition 7"), parked.lastError());
      admin.discard(parked.id());
    }
  }

  /**
   * The broker refuses records whose timestamp is out of the topic's range ({@code
   * message.timestamp.before.max.ms}; in Kafka 4 also {@code message.timestamp.after.max.ms}, one
   * hour by default). The producer stamps a record when the relay sends it, so that refusal is about
   * the relay host's clock, not the row: the rows stay pending and are sent again, never parked.
   * Parked, every row of the outbox would wait for an operator while a clock was off. Here an
   * interceptor stamps ten records with 1970, as a clock far off would.
   */
  @Test
  void rowsRefusedForTheRelaysClockAreSentAgainNotParked() throws Exception {
    String topic = KafkaBroker.uniqueTopic("clock-off");
    broker.createTopic(topic, 2);
    setTopicConfig(topic, "message.timestamp.before.max.ms", "3600000");
    List<UUID> all = new ArrayList<>();
    for (int i = 0; i < 30; i++) {
      all.addAll(commit(db.dataSource(), List.of(numbered(topic, "clock-" + i % 3, i))));
    }
    OffClockInterceptor.stampNext(10);
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay =
            relay(relayPool, broker)
                .batchSize(10)
                .producerProperty("interceptor.classes", OffClockInterceptor.class.getName())
                .build()) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(all));
      await(WAIT, "outbox emptied", () -> admin.pendingCount() == 0);
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
    }
    assertEquals(10, OffClockInterceptor.stamped.get(), "ten records stamped with 1970");
    assertTrue(admin.parked(10).isEmpty(), "nothing parked: " + admin.parked(10));
  }

  /**
   * A record the broker refuses (here: one without a key on a compacted topic) takes the rows in
   * its producer batch down with it, while Kafka's idempotent producer goes on to have the later
   * batches of the partition acknowledged. The relay must not let them stay: the refused batch's
   * other rows would be sent again after them, out of their key's order (and on a compacted topic
   * a stale row would be the one kept). At the first such failure it closes the round's producer,
   * so nothing after the failure is acknowledged; the keyless row is parked and the rest is sent
   * again in order. Small producer batches make the round several batches of one partition.
   */
  @Test
  void refusedRecordDoesNotLetLaterBatchesOfItsPartitionOvertakeItsBatchMates() throws Exception {
    String topic = KafkaBroker.uniqueTopic("refused-batch");
    broker.createTopic(topic, 1);
    setTopicConfig(topic, "cleanup.policy", "compact");
    List<OutboxMessage> messages = new ArrayList<>();
    messages.add(numbered(topic, "k", 0));
    messages.add(numbered(topic, "k", 1));
    messages.add(OutboxMessage.to(topic).payload("no key").build());
    for (int i = 2; i < 60; i++) {
      messages.add(numbered(topic, "k", i));
    }
    List<UUID> ids = commit(db.dataSource(), messages);
    UUID keyless = ids.get(2);
    List<UUID> keyed = new ArrayList<>(ids);
    keyed.remove(2);
    try (TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay relay =
            relay(relayPool, broker)
                .producerProperty("batch.size", 1024)
                .producerProperty("linger.ms", 50)
                .build()) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(keyed));
      await(WAIT, "the keyless row parked and the rest published",
          () -> admin.pendingCount() == 0 && admin.parked(10).size() == 1);
      assertEquals(keyless, admin.parked(10).get(0).messageId());
      assertTrue(admin.parked(10).get(0).lastError().contains("InvalidRecordException"),
          admin.parked(10).get(0).lastError());
      long onKafka = broker.endOffsetSum(topic);
      reader.pollUntil(WAIT, onKafka + " records", r -> r.records().size() >= onKafka);
      assertPerKeyOrderAfterDedup(reader.records());
      OutboxFixtures.assertLatestRowOfEachKeyIsLast(reader.records());
      System.out.printf("refused batch: %d records on Kafka for %d rows%n", onKafka, keyed.size());
    } finally {
      // The other tests of this class count parked rows.
      for (ParkedMessage parked : admin.parked(100)) {
        if (parked.topic().equals(topic)) {
          admin.discard(parked.id());
        }
      }
    }
  }

  /**
   * The admin API on a pool that hands out connections with auto-commit off (as Spring Boot with
   * Hibernate often configures HikariCP): replay and discard commit their own work. A bare DELETE
   * once returned true for a discard and was rolled back when its connection went back to the pool.
   */
  @Test
  void adminReplaysAndDiscardsOnAPoolWithAutoCommitOff() {
    String topic = KafkaBroker.uniqueTopic("admin-no-autocommit");
    List<UUID> ids =
        commit(db.dataSource(), List.of(numbered(topic, "a", 0), numbered(topic, "b", 1)));
    db.execute(
        "UPDATE txkafka_outbox SET parked_at = now(), attempts = 1, last_error = 'parked by the"
            + " test' WHERE topic = '"
            + topic
            + "'");
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(db.jdbcUrl());
    if (db.user() != null) {
      config.setUsername(db.user());
    }
    if (db.password() != null) {
      config.setPassword(db.password());
    }
    config.setMaximumPoolSize(1);
    config.setAutoCommit(false);
    try (HikariDataSource noAutoCommit = new HikariDataSource(config)) {
      OutboxAdmin manual = Outbox.admin(noAutoCommit);
      List<ParkedMessage> parked = manual.parked(10);
      assertEquals(2, parked.size(), parked.toString());
      ParkedMessage toReplay =
          parked.stream().filter(row -> row.messageId().equals(ids.get(0))).findFirst().get();
      ParkedMessage toDiscard =
          parked.stream().filter(row -> row.messageId().equals(ids.get(1))).findFirst().get();
      assertTrue(manual.replay(toReplay.id()));
      assertTrue(manual.discard(toDiscard.id()));
    }
    assertEquals(
        1,
        db.queryLong(
            "SELECT count(*) FROM txkafka_outbox WHERE message_id = ? AND parked_at IS NULL",
            ids.get(0)),
        "the replayed row is pending");
    assertEquals(
        0,
        db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE message_id = ?", ids.get(1)),
        "the discarded row is gone");
    db.execute("DELETE FROM txkafka_outbox WHERE topic = '" + topic + "'");
  }

  /**
   * A replay draws its row's new id under the key's order lock, as a writer's commit-time trigger
   * checks under it: a writer of that key then commits either before the replay drew the id or
   * after the replayed row is visible (behind it). Before, the id was drawn without the lock, and a
   * writer that drew a higher id in that instant and committed first was published after the
   * replayed row although it committed before it. Here a session holds the key's lock as a
   * committing writer would: replay and replayAll wait for it.
   */
  @Test
  void replayWaitsForTheOrderLockOfItsKey() throws Exception {
    String topic = KafkaBroker.uniqueTopic("replay-lock");
    List<UUID> ids =
        commit(
            db.dataSource(),
            List.of(
                OutboxMessage.to(topic).key("replay-lock-a").payload("a").build(),
                OutboxMessage.to(topic).key("replay-lock-b").payload("b").build()));
    db.execute(
        "UPDATE txkafka_outbox SET parked_at = now(), last_error = 'test' WHERE topic = '"
            + topic
            + "'");
    long idA =
        db.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", ids.get(0));
    ExecutorService replays = Executors.newSingleThreadExecutor();
    try (Connection holder = db.connect()) {
      holder.setAutoCommit(false);
      holdKeyLock(holder, "replay-lock-a");
      Future<Boolean> one = replays.submit(() -> admin.replay(idA));
      Thread.sleep(700);
      assertFalse(one.isDone(), "the replay waits for the key's lock");
      holder.rollback();
      assertTrue(one.get(30, TimeUnit.SECONDS));

      db.execute(
          "UPDATE txkafka_outbox SET parked_at = now() WHERE topic = '" + topic + "'");
      holdKeyLock(holder, "replay-lock-b");
      Future<Integer> all = replays.submit(() -> admin.replayAll());
      Thread.sleep(700);
      assertFalse(all.isDone(), "replayAll waits for the lock of one of its keys");
      holder.rollback();
      assertTrue(all.get(30, TimeUnit.SECONDS) >= 2, "both replayed");
    } finally {
      replays.shutdownNow();
      db.execute("DELETE FROM txkafka_outbox WHERE topic = '" + topic + "'");
    }
  }

  /**
   * A replay renumbers only the rows it read and locked for. Here replayAll reads one parked row
   * (key a) and waits for that key's lock; meanwhile a relay parks another row (key r). That row
   * must stay parked: replayed in the same statement, it would get a new id without its key's
   * lock, and a writer of key r committing in that instant would be published after it although
   * it committed first (found by a read-only review). Before, replayAll renumbered every row
   * parked at its UPDATE.
   */
  @Test
  void replayAllRenumbersOnlyTheRowsItLockedFor() throws Exception {
    String topic = KafkaBroker.uniqueTopic("replay-snapshot");
    List<UUID> ids =
        commit(
            db.dataSource(),
            List.of(
                OutboxMessage.to(topic).key("replay-snapshot-a").payload("a").build(),
                OutboxMessage.to(topic).key("replay-snapshot-r").payload("r").build()));
    db.execute(
        "UPDATE txkafka_outbox SET parked_at = now(), last_error = 'test' WHERE message_id = '"
            + ids.get(0)
            + "'");
    ExecutorService replays = Executors.newSingleThreadExecutor();
    try (Connection holder = db.connect()) {
      holder.setAutoCommit(false);
      holdKeyLock(holder, "replay-snapshot-a");
      Future<Integer> all = replays.submit(() -> admin.replayAll());
      // It has read its ids once it waits for key a's lock.
      await(
          WAIT,
          "replayAll to wait for an advisory lock",
          () ->
              db.queryLong(
                      "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                          + " AND wait_event_type = 'Lock' AND wait_event = 'advisory'")
                  > 0);
      assertFalse(all.isDone(), "replayAll waits for the lock of key a");
      db.execute(
          "UPDATE txkafka_outbox SET parked_at = now(), last_error = 'test' WHERE message_id = '"
              + ids.get(1)
              + "'");
      holder.rollback();
      assertEquals(1, all.get(30, TimeUnit.SECONDS), "only the row it locked for");
      assertEquals(
          0L,
          db.queryLong(
              "SELECT count(*) FROM txkafka_outbox WHERE message_id = ? AND parked_at IS NOT NULL",
              ids.get(0)),
          "row a replayed");
      assertEquals(
          1L,
          db.queryLong(
              "SELECT count(*) FROM txkafka_outbox WHERE message_id = ? AND parked_at IS NOT NULL",
              ids.get(1)),
          "row r, parked while replayAll waited, is still parked");
      assertEquals(1, admin.replayAll(), "and the next call replays it");
    } finally {
      replays.shutdownNow();
      db.execute("DELETE FROM txkafka_outbox WHERE topic = '" + topic + "'");
    }
  }

  private static void holdKeyLock(Connection connection, String key) throws Exception {
    try (var lock =
        connection.prepareStatement(
            "SELECT pg_advisory_xact_lock(hashtextextended('public/key/' ||"
                + " encode(convert_to(?, 'UTF8'), 'hex'), 0))")) {
      lock.setString(1, key);
      lock.executeQuery().close();
    }
  }

  /** Sets one config of {@code topic} and waits until the broker (not only the controller) has it. */
  private static void setTopicConfig(String topic, String name, String value) throws Exception {
    ConfigResource resource = new ConfigResource(ConfigResource.Type.TOPIC, topic);
    broker
        .admin()
        .incrementalAlterConfigs(
            Map.of(
                resource,
                List.of(new AlterConfigOp(new ConfigEntry(name, value), AlterConfigOp.OpType.SET))))
        .all()
        .get(30, TimeUnit.SECONDS);
    await(WAIT, "the broker to apply " + name + "=" + value,
        () -> value.equals(topicConfig(resource, name)));
  }

  private static String topicConfig(ConfigResource topic, String name) {
    try {
      return broker
          .admin()
          .describeConfigs(List.of(topic))
          .all()
          .get(30, TimeUnit.SECONDS)
          .get(topic)
          .get(name)
          .value();
    } catch (Exception e) {
      throw new IllegalStateException("could not read " + name + " of " + topic.name(), e);
    }
  }

  /** Stamps the next records sent with a timestamp of 1970, as a relay clock far off would. */
  public static final class OffClockInterceptor implements ProducerInterceptor<byte[], byte[]> {
    private static final AtomicInteger toStamp = new AtomicInteger();
    static final AtomicInteger stamped = new AtomicInteger();

    static void stampNext(int records) {
      stamped.set(0);
      toStamp.set(records);
    }

    @Override
    public ProducerRecord<byte[], byte[]> onSend(ProducerRecord<byte[], byte[]> record) {
      if (toStamp.getAndUpdate(left -> Math.max(0, left - 1)) == 0) {
        return record;
      }
      stamped.incrementAndGet();
      return new ProducerRecord<>(
          record.topic(), record.partition(), 1L, record.key(), record.value(), record.headers());
    }

    @Override
    public void onAcknowledgement(RecordMetadata metadata, Exception exception) {}

    @Override
    public void close() {}

    @Override
    public void configure(Map<String, ?> configs) {}
  }
}
