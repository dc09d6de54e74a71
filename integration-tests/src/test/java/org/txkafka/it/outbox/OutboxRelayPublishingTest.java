package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.WRITER;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertAllPresent;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.messageId;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;
import static org.txkafka.it.outbox.OutboxFixtures.text;

import com.zaxxer.hikari.HikariDataSource;
import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.simple.SimpleMeterRegistry;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxAdmin;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.outbox.TraceContext;
import org.txkafka.outbox.internal.Shares;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** One relay against the real PostgreSQL and the real broker: what it publishes, and how. */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxRelayPublishingTest {
  private static final Duration WAIT = Duration.ofSeconds(60);

  private static TestDatabase db;
  private static KafkaBroker broker;
  private static HikariDataSource relayPool;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    broker = KafkaBroker.shared();
    relayPool = db.newDataSource(2);
  }

  @AfterAll
  static void tearDown() {
    relayPool.close();
    db.close();
  }

  /**
   * A server that refuses the lease timeout's {@code SET idle_session_timeout} (a proxy, a
   * PostgreSQL-compatible server, a policy) costs the relay its lease timeout, not its work: it
   * warns and publishes. Before, the refusal failed every session the relay opened, for ever.
   */
  @Test
  void relayWhoseServerRefusesTheLeaseTimeoutRunsWithoutIt() throws Exception {
    String topic = topic(1);
    AtomicInteger refused = new AtomicInteger();
    javax.sql.DataSource refusing = refusingIdleSessionTimeout(db.dataSource(), refused);
    List<UUID> ids = commit(db.dataSource(), List.of(numbered(topic, "k", 1), numbered(topic, "k", 2)));
    try (OutboxRelay relay = relay(refusing, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(ids));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      assertTrue(refused.get() >= 1, "the SET was refused: " + refused.get());
      assertEquals(Outbox.SHARE_COUNT, relay.ownedShares().size());
    }
  }

  /**
   * {@code dataSource} whose statements refuse {@code SET idle_session_timeout} as a server
   * without the setting would (SQLState 42704), counting the refusals; everything else, including
   * {@code unwrap} to the driver's connection, is the real PostgreSQL connection.
   */
  private static javax.sql.DataSource refusingIdleSessionTimeout(
      javax.sql.DataSource dataSource, AtomicInteger refused) {
    org.postgresql.ds.PGSimpleDataSource unpooled = new org.postgresql.ds.PGSimpleDataSource() {
      @Override
      public Connection getConnection() throws java.sql.SQLException {
        Connection real = dataSource.getConnection();
        return (Connection) java.lang.reflect.Proxy.newProxyInstance(
            Connection.class.getClassLoader(),
            new Class<?>[] {Connection.class},
            (proxy, method, args) -> {
              Object result = invoke(method, real, args);
              if (method.getName().equals("createStatement") && result instanceof java.sql.Statement statement) {
                return java.lang.reflect.Proxy.newProxyInstance(
                    java.sql.Statement.class.getClassLoader(),
                    new Class<?>[] {java.sql.Statement.class},
                    (p, m, a) -> {
                      if (m.getName().equals("execute")
                          && a != null
                          && a[0] instanceof String sql
                          && sql.startsWith("SET idle_session_timeout")) {
                        refused.incrementAndGet();
                        throw new java.sql.SQLException(
                            "unrecognized configuration parameter \"idle_session_timeout\"",
                            "42704");
                      }
                      return invoke(m, statement, a);
                    });
              }
              return result;
            });
      }
    };
    return unpooled;
  }

  private static Object invoke(java.lang.reflect.Method method, Object target, Object[] args)
      throws Throwable {
    try {
      return method.invoke(target, args);
    } catch (java.lang.reflect.InvocationTargetException e) {
      throw e.getCause();
    }
  }

  private static String topic(int partitions) {
    String topic = KafkaBroker.uniqueTopic("outbox");
    broker.createTopic(topic, partitions);
    return topic;
  }

  @Test
  void publishesEveryCommittedRowWithKeyPayloadHeadersPartitionAndStableMessageId() {
    String topic = topic(3);
    List<OutboxMessage> messages =
        List.of(
            OutboxMessage.to(topic)
                .key("order-1")
                .payload("{\"a\":1}")
                .header("content-type", "application/json")
                .header("empty", (byte[]) null)
                .build(),
            OutboxMessage.to(topic).key("order-2").payload("to partition 2").partition(2).build(),
            OutboxMessage.to(topic).payload("no key").build(),
            OutboxMessage.to(topic).key("order-3").build());
    List<UUID> ids = commit(db.dataSource(), messages);
    try (OutboxRelay relay = relay(relayPool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(ids));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);

      assertEquals(4, reader.records().size(), "each row exactly once (no failure happened)");
      Map<String, ConsumerRecord<byte[], byte[]>> byId = new HashMap<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        byId.put(messageId(record), record);
      }
      ConsumerRecord<byte[], byte[]> first = byId.get(ids.get(0).toString());
      assertEquals("order-1", text(first.key()));
      assertEquals("{\"a\":1}", text(first.value()));
      List<String> headerNames = new ArrayList<>();
      for (Header header : first.headers()) {
        headerNames.add(header.key());
      }
      assertEquals(List.of(Outbox.MESSAGE_ID_HEADER, "content-type", "empty"), headerNames);
      assertEquals("application/json", text(first.headers().lastHeader("content-type").value()));
      assertNull(first.headers().lastHeader("empty").value());

      assertEquals(2, byId.get(ids.get(1).toString()).partition(), "explicit partition kept");
      assertNull(byId.get(ids.get(2).toString()).key(), "keyless row published without key");
      assertNull(byId.get(ids.get(3).toString()).value(), "null payload published as tombstone");
    }
  }

  @Test
  void rolledBackTransactionPublishesNothing() throws Exception {
    String topic = topic(1);
    UUID rolledBack;
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(false);
      rolledBack = WRITER.send(connection, numbered(topic, "k", 1));
      WRITER.send(connection, numbered(topic, "k", 2));
      connection.rollback();
    }
    List<UUID> committed = commit(db.dataSource(), List.of(numbered(topic, "k", 3)));
    try (OutboxRelay relay = relay(relayPool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(committed));
      // The committed row was written after the rolled-back ones, so had they existed they would
      // have been published first (one partition, id order): reading a little more cannot matter.
      reader.poll(500);
      assertEquals(1, reader.records().size());
      assertFalse(reader.distinctIds().contains(rolledBack.toString()));
      assertEquals("k|3", text(reader.records().get(0).value()));
    }
  }

  @Test
  void rowOfATransactionThatTookALowerIdAndCommitsLaterIsStillPublished() throws Exception {
    String topic = topic(1);
    try (OutboxRelay relay = relay(relayPool, broker).archive(true).build();
        TopicReader reader = new TopicReader(broker, topic);
        Connection slow = db.dataSource().getConnection()) {
      relay.start();
      slow.setAutoCommit(false);
      UUID late = WRITER.send(slow, numbered(topic, "slow", 1));

      List<UUID> fast = new ArrayList<>();
      for (int i = 0; i < 5; i++) {
        fast.addAll(commit(db.dataSource(), List.of(numbered(topic, "fast", i))));
      }
      reader.awaitIds(WAIT, asStrings(fast));
      assertFalse(reader.distinctIds().contains(late.toString()), "uncommitted row not published");
      await(WAIT, "fast rows archived", () -> archived(fast.get(4)) != null);

      slow.commit();
      reader.awaitIds(WAIT, Set.of(late.toString()));
      // On the topic is not yet archived: the relay archives a row after Kafka acknowledged it.
      await(WAIT, "late row archived", () -> archived(late) != null);
      long lateId = archivedId(late);
      long firstFastId = archivedId(fast.get(0));
      assertTrue(
          lateId < firstFastId,
          "the late row had the lower id ("
              + lateId
              + " < "
              + firstFastId
              + "): an id cursor would have skipped it");
    }
  }

  @Test
  void concurrentWritersCommittingOutOfIdOrderLoseNothingAndKeepPerKeyOrder() throws Exception {
    String topic = topic(4);
    int writers = 6;
    int transactionsPerWriter = 40;
    AtomicInteger commitOrder = new AtomicInteger();
    Map<UUID, Integer> committedAt = Collections.synchronizedMap(new HashMap<>());
    List<UUID> all = Collections.synchronizedList(new ArrayList<>());
    try (HikariDataSource writerPool = db.newDataSource(5);
        OutboxRelay relay = relay(relayPool, broker).batchSize(20).archive(true).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      ExecutorService pool = Executors.newFixedThreadPool(writers);
      List<Future<?>> done = new ArrayList<>();
      for (int w = 0; w < writers; w++) {
        int writer = w;
        done.add(
            pool.submit(
                () -> {
                  Random random = new Random(writer);
                  int[] seq = new int[3];
                  for (int t = 0; t < transactionsPerWriter; t++) {
                    int keyIndex = random.nextInt(3);
                    String key = "w" + writer + "-k" + keyIndex;
                    List<OutboxMessage> batch = new ArrayList<>();
                    for (int r = 0, n = 1 + random.nextInt(3); r < n; r++) {
                      batch.add(numbered(topic, key, seq[keyIndex]++));
                    }
                    try (Connection connection = writerPool.getConnection()) {
                      connection.setAutoCommit(false);
                      List<UUID> ids = WRITER.sendAll(connection, batch);
                      // Hold the transaction open so that others take higher ids and commit first.
                      Thread.sleep(random.nextInt(15));
                      connection.commit();
                      int order = commitOrder.incrementAndGet();
                      for (UUID id : ids) {
                        committedAt.put(id, order);
                      }
                      all.addAll(ids);
                    }
                  }
                  return null;
                }));
      }
      for (Future<?> future : done) {
        future.get(90, TimeUnit.SECONDS);
      }
      pool.shutdown();

      Set<String> expected = asStrings(all);
      reader.awaitIds(WAIT, expected);
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      assertAllPresent(expected, reader.distinctIds());
      int duplicates = assertPerKeyOrderAfterDedup(reader.records());
      assertEquals(0, duplicates, "no row published twice when nothing failed");
      assertEquals(expected.size(), reader.records().size());

      // Prove the scenario happened: some transaction committed after one with higher ids.
      Map<UUID, Long> rowIds = archivedIds(all);
      int inversions = 0;
      List<UUID> byRowId = new ArrayList<>(all);
      byRowId.sort((a, b) -> Long.compare(rowIds.get(a), rowIds.get(b)));
      int maxCommitSoFar = 0;
      for (UUID id : byRowId) {
        int order = committedAt.get(id);
        if (order < maxCommitSoFar) {
          inversions++;
        }
        maxCommitSoFar = Math.max(maxCommitSoFar, order);
      }
      assertTrue(inversions > 0, "writers committed out of id order at least once");
    }
  }

  /**
   * While rounds come back full, the relay reads the next round while the one before it waits for
   * Kafka, leaving the rows in flight out by their ids. A row that took a lower id than the rows in
   * flight and commits only now (its key has no later row yet, so the order trigger keeps its id)
   * must be read then, before the later row of its key committed right after it. A read that
   * continued after the highest id in flight (a cursor) would skip it until the pipeline ends, and
   * publish the later row of its key first.
   */
  @Test
  void rowCommittedLateWithALowerIdDuringAPipelinedDrainKeepsItsKeysOrder() throws Exception {
    String topic = topic(1);
    int share = Shares.shareOf("late".getBytes(StandardCharsets.UTF_8), null);
    String filler = null;
    for (int i = 0; filler == null; i++) {
      if (Shares.shareOf(("fill-" + i).getBytes(StandardCharsets.UTF_8), null) == share) {
        filler = "fill-" + i;
      }
    }
    List<UUID> late = Collections.synchronizedList(new ArrayList<>());
    AtomicInteger open = new AtomicInteger();
    AtomicInteger overlaps = new AtomicInteger();
    try (Connection slow = db.dataSource().getConnection()) {
      slow.setAutoCommit(false);
      late.add(WRITER.send(slow, numbered(topic, "late", 0)));
      List<UUID> backlog = new ArrayList<>();
      for (int i = 0; i < 100; i++) {
        backlog.addAll(commit(db.dataSource(), List.of(numbered(topic, filler, i))));
      }
      OutboxRelay.Listener commitDuringTheFirstRound =
          new OutboxRelay.Listener() {
            @Override
            public void batchStarting(Set<Integer> shares, int rows) {
              if (open.incrementAndGet() > 1) {
                overlaps.incrementAndGet();
              }
              if (late.size() == 1) {
                // On the relay thread, after the first round's read and before the read ahead.
                try {
                  slow.commit();
                } catch (java.sql.SQLException e) {
                  throw new IllegalStateException(e);
                }
                late.addAll(commit(db.dataSource(), List.of(numbered(topic, "late", 1))));
              }
            }

            @Override
            public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
              open.decrementAndGet();
            }
          };
      List<UUID> all = new ArrayList<>(backlog);
      try (OutboxRelay relay =
              relay(relayPool, broker)
                  .batchSize(20)
                  .archive(true)
                  // No round is read ahead past the next lease check: none falls in this drain.
                  .leaseCheckInterval(Duration.ofMinutes(1))
                  .listener(commitDuringTheFirstRound)
                  .build();
          TopicReader reader = new TopicReader(broker, topic)) {
        relay.start();
        await(WAIT, "the late rows committed", () -> late.size() == 2);
        all.addAll(late);
        reader.awaitIds(WAIT, asStrings(all));
        await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
        assertAllPresent(asStrings(all), reader.distinctIds());
        assertPerKeyOrderAfterDedup(reader.records());
      }
      assertTrue(overlaps.get() > 0, "a round started before the one before it finished");
      assertTrue(
          archivedId(late.get(0)) < archivedId(backlog.get(0)),
          "the late row kept its id below every row of the backlog");
    }
  }

  @Test
  void idleRelayIsWokenByTheCommitLongBeforeItsNextPoll() {
    String topic = topic(1);
    try (OutboxRelay relay =
            relay(relayPool, broker).pollInterval(Duration.ofMinutes(10)).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      await(WAIT, "relay took all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      await(WAIT, "relay waits for work (holds a wake-up slot)", () -> heldWakeSlots("ExclusiveLock") == 1);
      for (int i = 0; i < 3; i++) {
        List<UUID> ids = commit(db.dataSource(), List.of(numbered(topic, "idle", i)));
        // Polling alone would take ten minutes: only the commit's notification can wake it.
        reader.awaitIds(WAIT, asStrings(ids));
      }
    }
  }

  /**
   * A writer that commits while the relay is in a round sends no NOTIFY (each one costs a commit
   * a lock held through its flush and wakes the listener): the relay gives its wake-up slot back
   * as soon as a read finds rows. It still publishes that row at once, without waiting for a poll:
   * before it waits again it takes its slot and reads once more.
   */
  @Test
  void writerCommittingDuringARelayRoundSendsNoNotificationAndIsStillPublishedAtOnce()
      throws Exception {
    String topic = topic(1);
    List<UUID> duringRound = Collections.synchronizedList(new ArrayList<>());
    OutboxRelay.Listener commitDuringFirstRound =
        new OutboxRelay.Listener() {
          @Override
          public void batchStarting(Set<Integer> shares, int rows) {
            if (duringRound.isEmpty()) {
              // On the relay thread, after its read and before its sends: the round is running.
              duringRound.addAll(
                  commit(db.dataSource(), List.of(numbered(topic, "during-round", 1))));
            }
          }
        };
    try (Connection listening = db.dataSource().getConnection();
        OutboxRelay relay =
            relay(relayPool, broker)
                .pollInterval(Duration.ofMinutes(10))
                .listener(commitDuringFirstRound)
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      try (var statement = listening.createStatement()) {
        statement.execute("LISTEN txkafka_outbox");
      }
      relay.start();
      await(WAIT, "relay took all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      await(WAIT, "relay waits for work (holds a wake-up slot)", () -> heldWakeSlots("ExclusiveLock") == 1);
      List<UUID> first = commit(db.dataSource(), List.of(numbered(topic, "wakes-the-relay", 0)));
      // Polling alone would take ten minutes: the first row's notification wakes the relay, the
      // second is read by the read that follows the round.
      reader.awaitIds(WAIT, asStrings(first));
      await(WAIT, "the row committed during the round", () -> !duringRound.isEmpty());
      reader.awaitIds(WAIT, asStrings(duringRound));
      int notifications = 0;
      org.postgresql.PGConnection notified = listening.unwrap(org.postgresql.PGConnection.class);
      org.postgresql.PGNotification[] received;
      while ((received = notified.getNotifications(500)) != null && received.length > 0) {
        notifications += received.length;
      }
      assertEquals(1, notifications, "only the commit that found the relay waiting notified");
    }
  }

  /**
   * While a writer holds the wake-up slots shared for long (a transaction that ran SET CONSTRAINTS
   * ALL IMMEDIATE, which fires the order trigger early, and stays open), a relay cannot take a slot
   * before it waits, and writers that commit meanwhile send no NOTIFY. It must read anyway, not
   * keep trying for the slot until its poll interval (ten minutes here).
   */
  @Test
  void rowCommittedWhileAWriterHoldsTheWakeUpSlotsIsPublishedWithoutWaitingForThePoll()
      throws Exception {
    String topic = topic(1);
    List<UUID> duringRound = Collections.synchronizedList(new ArrayList<>());
    List<Boolean> slotsTaken = Collections.synchronizedList(new ArrayList<>());
    try (Connection holder = db.dataSource().getConnection()) {
      holder.setAutoCommit(false);
      OutboxRelay.Listener holdSlotsDuringFirstRound =
          new OutboxRelay.Listener() {
            @Override
            public void batchStarting(Set<Integer> shares, int rows) {
              if (!duringRound.isEmpty()) {
                return;
              }
              // The relay gave its slot back for this round: a writer's transaction takes all
              // four shared, as the order trigger does, and stays open.
              try (var statement = holder.createStatement();
                  ResultSet taken =
                      statement.executeQuery(
                          "SELECT pg_try_advisory_xact_lock_shared("
                              + "hashtextextended('public/wake/' || n, 0))"
                              + " FROM generate_series(0, 3) n")) {
                while (taken.next()) {
                  slotsTaken.add(taken.getBoolean(1));
                }
              } catch (java.sql.SQLException e) {
                throw new IllegalStateException(e);
              }
              duringRound.addAll(
                  commit(db.dataSource(), List.of(numbered(topic, "while-held", 1))));
            }
          };
      try (OutboxRelay relay =
              relay(relayPool, broker)
                  .pollInterval(Duration.ofMinutes(10))
                  .listener(holdSlotsDuringFirstRound)
                  .build();
          TopicReader reader = new TopicReader(broker, topic)) {
        relay.start();
        await(
            WAIT, "relay took all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
        await(WAIT, "relay waits for work (holds a wake-up slot)", () -> heldWakeSlots("ExclusiveLock") == 1);
        List<UUID> first = commit(db.dataSource(), List.of(numbered(topic, "wakes-the-relay", 0)));
        reader.awaitIds(WAIT, asStrings(first));
        await(WAIT, "the row committed during the round", () -> !duringRound.isEmpty());
        assertEquals(List.of(true, true, true, true), slotsTaken, "the writer holds every slot");
        long held = System.nanoTime();
        reader.awaitIds(WAIT, asStrings(duringRound));
        assertTrue(
            System.nanoTime() - held < TimeUnit.SECONDS.toNanos(30),
            "published while the slots are held, long before the poll");
        assertEquals(
            4L,
            heldWakeSlots("ShareLock"),
            "the slots were still held when the row was published");
      } finally {
        holder.rollback();
      }
    }
  }

  @Test
  void moreIdleRelaysThanWakeUpSlotsAreAllWokenByCommits() {
    String topic = topic(1);
    int relays = 6; // four wake-up slots: two relays wait without one
    List<OutboxRelay> started = new ArrayList<>();
    try (HikariDataSource pool = db.newDataSource(relays + 1);
        TopicReader reader = new TopicReader(broker, topic)) {
      try {
        for (int i = 0; i < relays; i++) {
          OutboxRelay relay = relay(pool, broker).pollInterval(Duration.ofMinutes(10)).build();
          started.add(relay);
          relay.start();
        }
        await(WAIT, "every share held by one of the relays", () -> started.stream()
            .mapToInt(relay -> relay.ownedShares().size()).sum() == Outbox.SHARE_COUNT);
        List<UUID> ids = new ArrayList<>();
        for (int i = 0; i < 64; i++) {
          // Many keys, so that every relay (slot or not) has rows to publish.
          ids.addAll(commit(db.dataSource(), List.of(numbered(topic, "many-" + i, i))));
        }
        // Polling alone would take ten minutes: each relay is woken by a notification.
        reader.awaitIds(WAIT, asStrings(ids));
        assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
      } finally {
        started.forEach(OutboxRelay::close);
      }
    }
  }

  /**
   * The relay's producer allocates a whole {@code batch.size} (256 KB by default) for each partition
   * a batch of rows touches. A batch spread over more partitions than {@code buffer.memory} holds
   * such buffers makes sends wait for memory; they must all still go out, once each, with no send
   * timing out into a failure.
   */
  @Test
  void batchSpreadOverMorePartitionsThanTheProducerBufferHoldsIsPublishedOnce() {
    int partitions = 120;
    String topic = topic(partitions);
    List<OutboxMessage> messages = new ArrayList<>();
    for (int i = 0; i < 2 * partitions; i++) {
      messages.add(
          OutboxMessage.to(topic).key("key-" + i).payload("row " + i).partition(i % partitions).build());
    }
    List<UUID> ids = commit(db.dataSource(), messages);
    SimpleMeterRegistry registry = new SimpleMeterRegistry();
    // 2 MB: room for 8 buffers of 256 KB while one batch of rows needs 120.
    try (OutboxRelay relay =
            relay(relayPool, broker)
                .producerProperty("buffer.memory", 2 * 1024 * 1024)
                .meterRegistry(registry)
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(WAIT, asStrings(ids));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);

      assertEquals(ids.size(), reader.records().size(), "each row exactly once");
      Set<Integer> partitionsSeen = new HashSet<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        partitionsSeen.add(record.partition());
      }
      assertEquals(partitions, partitionsSeen.size(), "every partition got its rows");
      assertEquals(
          0.0,
          registry.get("txkafka.outbox.failures").counter().count(),
          "no send failed while waiting for memory");
      // The counter moves after the rows' removal: wait for it.
      await(WAIT, "published counter",
          () -> registry.get("txkafka.outbox.published").counter().count() == ids.size());
    }
  }

  @Test
  void pollingOnlyRelayPublishesWithoutNotifications() {
    String topic = topic(2);
    try (OutboxRelay relay =
            relay(relayPool, broker)
                .listenNotify(false)
                .pollInterval(Duration.ofMillis(100))
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      await(WAIT, "relay took all shares", () -> relay.ownedShares().size() == Outbox.SHARE_COUNT);
      List<UUID> ids = new ArrayList<>();
      for (int i = 0; i < 30; i++) {
        ids.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + (i % 5), i))));
      }
      reader.awaitIds(WAIT, asStrings(ids));
      assertEquals(0, assertPerKeyOrderAfterDedup(reader.records()));
      assertTrue(
          db.queryLong(
                  "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                      + " AND query ILIKE 'LISTEN%'")
              == 0,
          "a polling-only relay never listens");
    }
  }

  @Test
  void writerTraceContextTravelsToThePublishedRecordAsW3cHeaders() {
    String topic = topic(1);
    String traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    OutboxWriter tracing =
        Outbox.writer(
            "public",
            new TraceContext() {
              @Override
              public String traceparent() {
                return traceparent;
              }

              @Override
              public String tracestate() {
                return "vendor=1";
              }
            });
    OutboxWriter broken = Outbox.writer("public", () -> "not a traceparent");
    OutboxWriter failing =
        Outbox.writer(
            "public",
            () -> {
              throw new IllegalStateException("the tracer failed");
            });
    UUID traced;
    UUID untraced;
    UUID untracedAfterFailure;
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(false);
      traced = tracing.send(connection, numbered(topic, "t", 1));
      untraced = broken.send(connection, numbered(topic, "t", 2));
      untracedAfterFailure = failing.send(connection, numbered(topic, "t", 3));
      connection.commit();
    } catch (java.sql.SQLException e) {
      throw new IllegalStateException(e);
    }
    try (OutboxRelay relay = relay(relayPool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.awaitIds(
          WAIT, Set.of(traced.toString(), untraced.toString(), untracedAfterFailure.toString()));
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        Header header = record.headers().lastHeader(TraceContext.TRACEPARENT);
        if (messageId(record).equals(traced.toString())) {
          assertArrayEquals(traceparent.getBytes(StandardCharsets.US_ASCII), header.value());
          assertEquals("vendor=1", text(record.headers().lastHeader("tracestate").value()));
        } else {
          assertNull(header, "a malformed or failing trace context is left out, not stored");
        }
      }
    }
  }

  /**
   * The writer refuses a connection in auto-commit: its row would commit on its own, and be
   * published for a business transaction that may still roll back. Nothing is written.
   */
  @Test
  void writerRefusesAConnectionInAutoCommitAndWritesNothing() {
    String topic = topic(1);
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(true);
      IllegalStateException refused =
          assertThrows(
              IllegalStateException.class,
              () -> OutboxFixtures.WRITER.send(connection, numbered(topic, "a", 1)));
      assertTrue(refused.getMessage().contains("auto-commit is on"), refused.getMessage());
      assertThrows(
          IllegalStateException.class,
          () ->
              OutboxFixtures.WRITER.sendAll(
                  connection, List.of(numbered(topic, "a", 2), numbered(topic, "a", 3))));
    } catch (java.sql.SQLException e) {
      throw new IllegalStateException(e);
    }
    assertEquals(
        0,
        db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE topic = ?", topic),
        "nothing written for a refused send");
  }

  @Test
  void metersCountPublishedRowsAndFailuresAndShowParkedRows() {
    String topic = topic(1);
    SimpleMeterRegistry registry = new SimpleMeterRegistry();
    try (OutboxRelay relay =
            relay(relayPool, broker)
                .name("metered")
                .meterRegistry(registry)
                .statsInterval(Duration.ofSeconds(1))
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      List<UUID> ids = new ArrayList<>();
      for (int i = 0; i < 20; i++) {
        ids.addAll(commit(db.dataSource(), List.of(numbered(topic, "m", i))));
      }
      commit(
          db.dataSource(),
          List.of(OutboxMessage.to(topic).key("big").payload(new byte[2 * 1024 * 1024]).build()));
      reader.awaitIds(WAIT, asStrings(ids));
      Counter published = registry.get("txkafka.outbox.published").tag("relay", "metered").counter();
      Counter failures = registry.get("txkafka.outbox.failures").tag("relay", "metered").counter();
      Gauge parked = registry.get("txkafka.outbox.parked").tag("relay", "metered").gauge();
      Gauge owned = registry.get("txkafka.outbox.shares.owned").tag("relay", "metered").gauge();
      await(WAIT, "published counter", () -> published.count() >= 20);
      await(WAIT, "failure counted", () -> failures.count() >= 1);
      await(WAIT, "parked gauge", () -> parked.value() >= 1);
      assertEquals(Outbox.SHARE_COUNT, owned.value());
      assertTrue(registry.find("txkafka.outbox.pending").gauge() != null);
      assertTrue(registry.find("txkafka.outbox.oldest.pending.age").timeGauge() != null);
    } finally {
      OutboxAdmin admin = Outbox.admin(db.dataSource());
      admin.parked(100).forEach(parked -> admin.discard(parked.id()));
    }
    assertTrue(
        registry.find("txkafka.outbox.published").counters().isEmpty(), "close removes meters");
  }

  @Test
  void closeReleasesEveryLeaseSoTheNextRelayTakesAllSharesAtOnce() {
    OutboxRelay first = relay(relayPool, broker).build();
    first.start();
    await(
        WAIT,
        "first relay holds all shares",
        () -> first.ownedShares().size() == Outbox.SHARE_COUNT);
    first.close();
    assertFalse(first.isRunning());
    assertTrue(first.ownedShares().isEmpty());
    assertEquals(
        0,
        db.queryLong(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                + " WHERE l.locktype = 'advisory' AND d.datname = current_database()"),
        "no advisory lock survives close(), even on a pooled connection");
    try (OutboxRelay second = relay(relayPool, broker).build()) {
      second.start();
      await(
          WAIT,
          "second relay holds all shares",
          () -> second.ownedShares().size() == Outbox.SHARE_COUNT);
    }
  }

  private static Long archived(UUID messageId) {
    try (Connection connection = db.connect();
        PreparedStatement query =
            connection.prepareStatement(
                "SELECT id FROM txkafka_outbox_archive WHERE message_id = ?")) {
      query.setObject(1, messageId);
      try (ResultSet rs = query.executeQuery()) {
        return rs.next() ? rs.getLong(1) : null;
      }
    } catch (java.sql.SQLException e) {
      throw new IllegalStateException(e);
    }
  }

  private static long archivedId(UUID messageId) {
    Long id = archived(messageId);
    assertTrue(id != null, "message " + messageId + " archived");
    return id;
  }

  private static Map<UUID, Long> archivedIds(List<UUID> messageIds) throws Exception {
    Map<UUID, Long> ids = new HashMap<>();
    try (Connection connection = db.connect();
        PreparedStatement query =
            connection.prepareStatement(
                "SELECT message_id, id, published_offset FROM txkafka_outbox_archive"
                    + " WHERE message_id = ANY(?)")) {
      query.setArray(1, connection.createArrayOf("uuid", messageIds.toArray()));
      try (ResultSet rs = query.executeQuery()) {
        while (rs.next()) {
          ids.put(rs.getObject(1, UUID.class), rs.getLong(2));
          assertTrue(rs.getLong(3) >= 0, "archive keeps the Kafka offset");
        }
      }
    }
    assertEquals(new HashSet<>(messageIds), ids.keySet(), "every published row is archived");
    return ids;
  }

  /** Wake-up slots of schema public held granted in {@code mode} (ExclusiveLock, ShareLock). */
  private static long heldWakeSlots(String mode) {
    return db.queryLong(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = ? AND objsubid = 1"
            + " AND granted AND ((classid::bigint << 32) | objid::bigint)"
            + " IN (SELECT hashtextextended('public/wake/' || n, 0) FROM generate_series(0, 3) n)",
        mode);
  }
}
