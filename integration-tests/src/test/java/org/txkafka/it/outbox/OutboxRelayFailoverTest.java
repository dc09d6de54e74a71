package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.advisoryLockSessions;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertAllPresent;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;

import com.zaxxer.hikari.HikariDataSource;
import java.nio.charset.StandardCharsets;
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
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.internal.Shares;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Three relays in three JVMs share the outbox; one is killed with SIGKILL while writers are busy.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class OutboxRelayFailoverTest {
  private static final Duration WAIT = Duration.ofSeconds(90);

  private static TestDatabase db;
  private static KafkaBroker broker;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    broker = KafkaBroker.shared();
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void killedRelaysSharesAreTakenOverWithNothingLostOrderKeptAndNoShareEverPublishedByTwo()
      throws Exception {
    String topic = KafkaBroker.uniqueTopic("failover");
    broker.createTopic(topic, 4);
    List<String> names = List.of("relay-a", "relay-b", "relay-c");
    List<ChildJvm> relays = new ArrayList<>();
    try (TopicReader reader = new TopicReader(broker, topic)) {
      for (String name : names) {
        relays.add(OutboxFixtures.startRelayProcess(db, broker, name, 50));
      }
      for (ChildJvm relay : relays) {
        relay.awaitLine("READY", WAIT);
      }
      await(
          WAIT,
          () -> "fair split, now " + holdings(relays),
          () -> {
            List<Set<Integer>> holdings = holdings(relays);
            Set<Integer> union = new HashSet<>();
            holdings.forEach(union::addAll);
            return union.size() == Outbox.SHARE_COUNT
                && holdings.stream().allMatch(h -> h.size() >= 20 && h.size() <= 22);
          });

      List<UUID> written = Collections.synchronizedList(new ArrayList<>());
      AtomicInteger transactions = new AtomicInteger();
      ExecutorService writers = Executors.newSingleThreadExecutor();
      Future<?> writing =
          writers.submit(
              () -> {
                Random random = new Random(7);
                int[] seq = new int[60];
                for (int t = 0; t < 600; t++) {
                  List<OutboxMessage> batch = new ArrayList<>();
                  for (int r = 0, n = 1 + random.nextInt(6); r < n; r++) {
                    int key = random.nextInt(seq.length);
                    batch.add(numbered(topic, "key-" + key, seq[key]++));
                  }
                  written.addAll(commit(db.dataSource(), batch));
                  transactions.incrementAndGet();
                  OutboxFixtures.sleep(5);
                }
                return null;
              });

      await(WAIT, "writers under way", () -> transactions.get() >= 150);
      ChildJvm victim = relays.get(1);
      long beforeKill = System.currentTimeMillis();
      victim.kill();
      long afterKill = System.currentTimeMillis();
      Set<Integer> victimShares = new RelayEvents("relay-b", victim.output(), 0, 0).holding();

      await(
          WAIT,
          () -> "survivors cover all shares, now " + holdings(List.of(relays.get(0), relays.get(2))),
          () -> {
            Set<Integer> union = new HashSet<>();
            holdings(List.of(relays.get(0), relays.get(2))).forEach(union::addAll);
            return union.size() == Outbox.SHARE_COUNT;
          });
      long takenOver = System.currentTimeMillis();
      writing.get(WAIT.toSeconds(), TimeUnit.SECONDS);
      writers.shutdown();

      Set<String> expected = asStrings(written);
      reader.awaitIds(WAIT, expected);
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      assertAllPresent(expected, reader.distinctIds());
      int duplicates = assertPerKeyOrderAfterDedup(reader.records());

      long now = System.currentTimeMillis();
      List<RelayEvents> events = new ArrayList<>();
      events.add(new RelayEvents("relay-a", relays.get(0).output(), now, now));
      // The victim held its shares at least until just before the kill; a batch it began may have
      // run until it died.
      events.add(new RelayEvents("relay-b", victim.output(), beforeKill, afterKill));
      events.add(new RelayEvents("relay-c", relays.get(2).output(), now, now));
      RelayEvents.assertNoShareHeldByTwoAtOnce(events);
      new RelayEvents("relay-a", relays.get(0).output(), now, now).assertPublishedOnlyHeldShares();
      new RelayEvents("relay-b", victim.output(), Long.MAX_VALUE, afterKill)
          .assertPublishedOnlyHeldShares();
      new RelayEvents("relay-c", relays.get(2).output(), now, now).assertPublishedOnlyHeldShares();
      assertTrue(events.get(1).batches() > 0, "the victim had published before it was killed");
      assertTrue(victimShares.size() >= 20, "the victim held its fair part: " + victimShares);

      System.out.printf(
          "failover: %d messages, %d duplicates, victim's %d shares covered again %d ms after the"
              + " kill%n",
          expected.size(), duplicates, victimShares.size(), takenOver - afterKill);

      // Graceful stop: both survivors give their shares back.
      relays.get(0).terminate();
      relays.get(2).terminate();
      assertEquals(0, advisoryLockSessions(db), "no session holds an advisory lock");
    } finally {
      relays.forEach(ChildJvm::close);
    }
  }

  @Test
  void frozenRelayKeepsItsSharesSoNoOtherPublishesThemAndCatchesUpWhenItResumes() {
    String topic = KafkaBroker.uniqueTopic("frozen");
    broker.createTopic(topic, 2);
    List<ChildJvm> relays = new ArrayList<>();
    try (TopicReader reader = new TopicReader(broker, topic)) {
      startTwoSplittingEvenly(relays, "frozen");
      ChildJvm frozen = relays.get(0);
      Set<Integer> frozenShares = holdings(relays).get(0);
      Set<Integer> liveShares = holdings(relays).get(1);

      // SIGSTOP: a long GC pause. Its session stays open, so its leases stay held (for its lease
      // timeout, 30 s by default, far longer than this freeze; the next test lets it expire).
      frozen.suspend();
      long frozenAt = System.currentTimeMillis();
      List<UUID> toFrozen = new ArrayList<>();
      List<UUID> toLive = new ArrayList<>();
      commitToBoth(topic, frozenShares, toFrozen, toLive);
      reader.awaitIds(WAIT, asStrings(toLive));
      OutboxFixtures.sleep(2_000);
      reader.poll(200);
      for (UUID id : toFrozen) {
        assertFalse(
            reader.distinctIds().contains(id.toString()),
            "no other relay publishes the frozen relay's shares");
      }
      assertEquals(liveShares, holdings(relays).get(1), "the live relay took nothing over");

      frozen.resume();
      long resumedAt = System.currentTimeMillis();
      reader.awaitIds(WAIT, asStrings(toFrozen));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      assertPerKeyOrderAfterDedup(reader.records());
      long now = System.currentTimeMillis();
      RelayEvents frozenEvents = new RelayEvents("frozen-a", frozen.output(), now, now);
      RelayEvents liveEvents = new RelayEvents("frozen-b", relays.get(1).output(), now, now);
      RelayEvents.assertNoShareHeldByTwoAtOnce(List.of(frozenEvents, liveEvents));
      frozenEvents.assertPublishedOnlyHeldShares();
      liveEvents.assertPublishedOnlyHeldShares();
      System.out.printf(
          "frozen: relay stopped for %d ms, its %d rows published after it resumed%n",
          resumedAt - frozenAt, toFrozen.size());
    } finally {
      relays.forEach(ChildJvm::close);
    }
  }

  /**
   * With a lease timeout, a frozen relay does not keep its shares for good: PostgreSQL ends its
   * session after the timeout (the frozen process sends no keepalive), its locks go, and the other
   * relay takes its shares and publishes their rows while it is still frozen. Woken, it finds its
   * session ended and gives its shares up; nothing is lost and every key stays in order once
   * duplicates (its rounds in flight) are removed.
   */
  @Test
  void frozenRelayLosesItsSharesAfterTheLeaseTimeoutAndTheOtherPublishesThem() {
    String topic = KafkaBroker.uniqueTopic("frozen-lease");
    broker.createTopic(topic, 2);
    List<ChildJvm> relays = new ArrayList<>();
    try (TopicReader reader = new TopicReader(broker, topic)) {
      startTwoSplittingEvenly(relays, "lease", "-DleaseTimeoutMillis=3000");
      ChildJvm frozen = relays.get(0);
      Set<Integer> frozenShares = holdings(relays).get(0);

      frozen.suspend();
      long frozenAt = System.currentTimeMillis();
      List<UUID> toFrozen = new ArrayList<>();
      List<UUID> toLive = new ArrayList<>();
      commitToBoth(topic, frozenShares, toFrozen, toLive);
      // While the frozen relay still stands still, the live one publishes everything.
      reader.awaitIds(WAIT, asStrings(toFrozen));
      long takenOverAt = System.currentTimeMillis();
      reader.awaitIds(WAIT, asStrings(toLive));
      await(WAIT, "outbox emptied while one relay is frozen", () -> pendingRows(db) == 0);
      assertEquals(
          Outbox.SHARE_COUNT, holdings(relays).get(1).size(), "the live relay holds every share");
      assertEquals(
          1L,
          advisoryLockSessions(db),
          "one session holds advisory locks: the frozen relay's was ended");

      frozen.resume();
      frozen.awaitLine(" LOST ", WAIT); // it noticed its ended session
      List<UUID> afterResume = new ArrayList<>();
      for (int i = 1000; afterResume.size() < 20; i++) {
        afterResume.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i, 1))));
      }
      List<UUID> all = new ArrayList<>(toFrozen);
      all.addAll(toLive);
      all.addAll(afterResume);
      reader.awaitIds(WAIT, asStrings(all));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      assertAllPresent(asStrings(all), reader.distinctIds());
      assertPerKeyOrderAfterDedup(reader.records());
      System.out.printf(
          "frozen with a 3 s lease timeout: its rows published %d ms after the freeze%n",
          takenOverAt - frozenAt);
    } finally {
      relays.forEach(ChildJvm::close);
    }
  }

  /**
   * The whole relay process freezes (SIGSTOP, as a long GC pause or a stopped container would)
   * inside the send of the first row of a round, its keepalive frozen with it, so the keepalive
   * neither pings nor withholds. PostgreSQL ends the idle lease session after the 3 s lease
   * timeout; another relay takes the share and publishes every row, and more. Woken, the frozen
   * relay must not send the rest of the round it read before: its last statement on the session
   * succeeded longer ago than half the lease timeout, so it confirms the session first, finds it
   * ended and gives the round up. Only the row that was inside the producer when it froze may
   * arrive a second time (the documented duplicate of a lost session, dropped by message id).
   * Woken, the keepalive's overdue ping also fails at once and asks for the same confirmation;
   * which of the two is seen first is a race (run here, the ping mostly won), so this test fails
   * only when both are gone: then every row of the round arrived twice.
   */
  @Test
  void relayFrozenWholeInsideASendSendsNoMoreOfItsRoundWhenItWakes() {
    String topic = KafkaBroker.uniqueTopic("frozen-send");
    broker.createTopic(topic, 1);
    List<OutboxMessage> first = new ArrayList<>();
    for (int i = 0; i < 20; i++) {
      first.add(numbered(topic, "k", i));
    }
    List<UUID> ids = new ArrayList<>(commit(db.dataSource(), first));
    ChildJvm frozen =
        OutboxFixtures.startRelayProcess(
            db, broker, "freeze-a", 50, "-DleaseTimeoutMillis=3000", "-DfreezeOnFirstSend=true");
    try (HikariDataSource otherPool = db.newDataSource(2);
        TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay other =
            OutboxFixtures.relay(otherPool, broker)
                .name("freeze-b")
                .leaseTimeout(Duration.ofSeconds(3))
                .build()) {
      frozen.awaitLine("FREEZING", WAIT);
      await(WAIT, "PostgreSQL ended the frozen relay's idle lease session",
          () -> advisoryLockSessions(db) == 0);
      other.start();
      List<OutboxMessage> more = new ArrayList<>();
      for (int i = 20; i < 25; i++) {
        more.add(numbered(topic, "k", i));
      }
      ids.addAll(commit(db.dataSource(), more));
      reader.awaitIds(WAIT, asStrings(ids));
      await(WAIT, "outbox emptied while the first relay is frozen", () -> pendingRows(db) == 0);

      frozen.resume();
      frozen.awaitLine(" LOST ", WAIT);
      OutboxFixtures.sleep(1_000); // a stale send, were there one, is acknowledged by now
      long onKafka = broker.endOffsetSum(topic);
      reader.pollUntil(WAIT, onKafka + " records", r -> r.records().size() >= onKafka);
      Map<String, Integer> copies = new HashMap<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        copies.merge(OutboxFixtures.text(record.value()), 1, Integer::sum);
      }
      assertTrue(copies.get("k|0") <= 2, "the row inside the producer: at most once more");
      for (int seq = 1; seq < 25; seq++) {
        assertEquals(1, copies.get("k|" + seq),
            "row " + seq + ": only the other relay's copy, none from the woken relay's round");
      }
      assertPerKeyOrderAfterDedup(reader.records());
    } finally {
      frozen.close();
    }
  }

  /**
   * A relay whose own thread is stuck (here: a listener that never returns; in production a bug or
   * a hung callback) while its process runs on does not keep its shares for good: the keepalive
   * goes on only while the relay thread shows progress, so PostgreSQL ends the idle lease session
   * after the lease timeout and the other relay publishes the rows. Released, the stuck relay
   * confirms its session before it sends the round it read before the stall, finds it ended and
   * sends none of it: every message is on Kafka exactly once, in per-key order.
   */
  @Test
  void relayThreadStuckBeforeSendingLosesItsSharesAndSendsNothingItReadBeforeWhenItResumes() {
    stuckRelayThread(Stall.BATCH_STARTING);
  }

  /**
   * The same stall after a round was acknowledged and removed, when the relay thread had just
   * declared the long bound of its wait for acknowledgements (the publish timeout, 2 min by
   * default): the stuck listener still gets only the lease timeout, so the rows committed during
   * the stall are published by the other relay within seconds, not minutes.
   */
  @Test
  void relayThreadStuckAfterARoundLosesItsSharesWithinTheLeaseTimeoutNotThePublishTimeout() {
    stuckRelayThread(Stall.BATCH_FINISHED);
  }

  private enum Stall {
    BATCH_STARTING,
    BATCH_FINISHED
  }

  /**
   * Stalls the relay thread once, in its listener at {@code where}, until {@link #release} is
   * counted down; counts the sessions the relay lost.
   */
  private static final class StallingListener implements OutboxRelay.Listener {
    final CountDownLatch release = new CountDownLatch(1);
    final AtomicBoolean stalled = new AtomicBoolean();
    final AtomicInteger rows = new AtomicInteger();
    final AtomicInteger lost = new AtomicInteger();
    private final Stall where;

    StallingListener(Stall where) {
      this.where = where;
    }

    @Override
    public void batchStarting(Set<Integer> shares, int rows) {
      if (where == Stall.BATCH_STARTING) {
        stall(rows);
      }
    }

    @Override
    public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
      if (where == Stall.BATCH_FINISHED) {
        stall(published);
      }
    }

    private void stall(int rowCount) {
      if (stalled.compareAndSet(false, true)) {
        rows.set(rowCount);
        try {
          release.await(3, TimeUnit.MINUTES);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      }
    }

    @Override
    public void sharesReleased(Set<Integer> shares, boolean wasLost) {
      if (wasLost) {
        lost.incrementAndGet();
      }
    }
  }

  private static void stuckRelayThread(Stall where) {
    String topic = KafkaBroker.uniqueTopic("stuck-" + where.name().toLowerCase());
    broker.createTopic(topic, 2);
    StallingListener stuckOnce = new StallingListener(where);
    try (HikariDataSource stuckPool = db.newDataSource(2);
        HikariDataSource otherPool = db.newDataSource(2);
        OutboxRelay stuckRelay =
            OutboxFixtures.relay(stuckPool, broker)
                .name("stuck-a")
                .leaseTimeout(Duration.ofSeconds(3))
                .listener(stuckOnce)
                .build();
        OutboxRelay other =
            OutboxFixtures.relay(otherPool, broker)
                .name("stuck-b")
                .leaseTimeout(Duration.ofSeconds(3))
                .build();
        TopicReader reader = new TopicReader(broker, topic)) {
      stuckRelay.start();
      await(WAIT, "all shares", () -> stuckRelay.ownedShares().size() == Outbox.SHARE_COUNT);
      List<UUID> before = new ArrayList<>();
      for (int i = 0; i < 40; i++) {
        before.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 8, i))));
      }
      await(WAIT, "the relay thread stuck in its listener", stuckOnce.stalled::get);
      long stuckAt = System.nanoTime();
      other.start();
      List<UUID> during = new ArrayList<>();
      for (int i = 40; i < 60; i++) {
        during.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 8, i))));
      }

      List<UUID> beforeAndDuring = new ArrayList<>(before);
      beforeAndDuring.addAll(during);
      reader.awaitIds(WAIT, asStrings(beforeAndDuring));
      long takenOverMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - stuckAt);
      await(WAIT, "outbox emptied while the relay thread is stuck", () -> pendingRows(db) == 0);
      assertEquals(1, stuckOnce.release.getCount(), "the relay thread was stuck all along");
      assertEquals(Outbox.SHARE_COUNT, other.ownedShares().size(), "the other relay holds all");
      assertEquals(
          1L,
          advisoryLockSessions(db),
          "one session holds advisory locks: the stuck relay's was ended");
      assertTrue(stuckOnce.rows.get() > 0, "the stuck relay had read (or published) a round");

      stuckOnce.release.countDown();
      await(WAIT, "the resumed relay noticed its ended session", () -> stuckOnce.lost.get() == 1);
      List<UUID> after = new ArrayList<>();
      for (int i = 60; i < 80; i++) {
        after.addAll(commit(db.dataSource(), List.of(numbered(topic, "key-" + i % 8, i))));
      }
      List<UUID> all = new ArrayList<>(beforeAndDuring);
      all.addAll(after);
      reader.awaitIds(WAIT, asStrings(all));
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      long onKafka = broker.endOffsetSum(topic);
      reader.pollUntil(WAIT, onKafka + " records", r -> r.records().size() >= onKafka);
      assertAllPresent(asStrings(all), reader.distinctIds());
      assertEquals(
          all.size(),
          reader.records().size(),
          "every message exactly once: the resumed relay sent nothing it read before the stall ("
              + stuckOnce.rows.get()
              + " rows)");
      assertPerKeyOrderAfterDedup(reader.records());
      System.out.printf(
          "relay thread stuck in %s, 3 s lease timeout: the other relay published its rows %d ms"
              + " after%n",
          where,
          takenOverMillis);
    }
  }

  /**
   * The relay thread pauses after reading a round (in its listener) while its keepalive goes on
   * pinging; its lease session is terminated right after a successful ping (as an operator's
   * pg_terminate_backend, a server restart or a reset connection would end it), another relay
   * takes the shares and publishes every row. The relay thread resumes about 7 s after the last
   * successful ping: less than half the 20 s lease timeout, so the age of that ping alone does not
   * make it confirm its session; the keepalive's failed ping since must. Without that, it sent the
   * round it read before, after the other relay's copies.
   */
  @Test
  void relayThreadPausedWhileItsLeaseSessionIsTerminatedSendsNothingItReadBefore() {
    String topic = KafkaBroker.uniqueTopic("ping-failed");
    broker.createTopic(topic, 1);
    List<OutboxMessage> messages = new ArrayList<>();
    for (int i = 0; i < 30; i++) {
      messages.add(numbered(topic, "k", i));
    }
    List<UUID> ids = commit(db.dataSource(), messages);
    StallingListener pauseOnce = new StallingListener(Stall.BATCH_STARTING);
    try (HikariDataSource pausedPool = db.newDataSource(2);
        HikariDataSource otherPool = db.newDataSource(2);
        TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay pausing =
            OutboxFixtures.relay(pausedPool, broker)
                .name("ping-a")
                .leaseTimeout(Duration.ofSeconds(20))
                .listener(pauseOnce)
                .build();
        OutboxRelay other =
            OutboxFixtures.relay(otherPool, broker)
                .name("ping-b")
                .leaseTimeout(Duration.ofSeconds(20))
                .build()) {
      pausing.start();
      await(WAIT, "the relay thread paused with a round read", pauseOnce.stalled::get);
      long leasePid =
          db.queryLong(
              "SELECT min(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                  + " WHERE l.locktype = 'advisory' AND d.datname = current_database()");
      String queryStart =
          "SELECT (extract(epoch FROM query_start) * 1000)::bigint FROM pg_stat_activity"
              + " WHERE pid = ?::int";
      long before = db.queryLong(queryStart, leasePid);
      await(WAIT, "a keepalive ping on the lease session", () -> db.queryLong(queryStart, leasePid) != before);
      long pingedAt = System.nanoTime();
      db.queryLong("SELECT count(*) FROM (SELECT pg_terminate_backend(?::int)) t", leasePid);

      other.start();
      reader.pollUntil(WAIT, "every row published by the other relay",
          r -> r.distinctIds().size() == ids.size());
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
      // The keepalive pings every 5 s: one has failed by now. Resume well before 10 s (half the
      // lease timeout) after the last successful ping.
      long resumeAt = pingedAt + TimeUnit.SECONDS.toNanos(7);
      OutboxFixtures.sleep(Math.max(0, TimeUnit.NANOSECONDS.toMillis(resumeAt - System.nanoTime())));
      long resumedAfterMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - pingedAt);
      assertTrue(resumedAfterMillis < 9_000, "resumed " + resumedAfterMillis + " ms after the ping");
      assertTrue(pauseOnce.rows.get() > 0, "the paused relay had read a round");

      pauseOnce.release.countDown();
      await(WAIT, "the resumed relay noticed its ended session", () -> pauseOnce.lost.get() == 1);
      OutboxFixtures.sleep(500); // a stale send, were there one, is acknowledged by now
      long onKafka = broker.endOffsetSum(topic);
      reader.pollUntil(WAIT, onKafka + " records", r -> r.records().size() >= onKafka);
      assertEquals(
          ids.size(),
          reader.records().size(),
          "every row once, by the other relay: the resumed relay sent nothing of the "
              + pauseOnce.rows.get() + " rows it had read");
      assertPerKeyOrderAfterDedup(reader.records());
    } finally {
      pauseOnce.release.countDown();
    }
  }

  /**
   * A round read ahead while the round before waits for Kafka is sent only if the lease still holds
   * after that wait. Here the wait is held open (an interceptor holds the first acknowledgement)
   * while the relay's lease session is terminated and another relay publishes every row; released,
   * the first relay must not send the round it had read ahead: its copies would land after the
   * other relay's. (The round that was in flight may still complete: the documented duplicates of a
   * lost session, dropped by message id.)
   */
  @Test
  void roundReadAheadIsNotSentAfterTheLeaseSessionEndedDuringTheWait() throws Exception {
    String topic = KafkaBroker.uniqueTopic("ahead-lost");
    broker.createTopic(topic, 1);
    List<OutboxMessage> messages = new ArrayList<>();
    for (int i = 0; i < 40; i++) {
      messages.add(numbered(topic, "k", i));
    }
    commit(db.dataSource(), messages);
    AtomicInteger lost = new AtomicInteger();
    OutboxRelay.Listener losses = OutboxFixtures.countingLostSessions(lost);
    HoldingInterceptor.hold();
    try (HikariDataSource firstPool = db.newDataSource(2);
        HikariDataSource otherPool = db.newDataSource(2);
        TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay first =
            OutboxFixtures.relay(firstPool, broker)
                .name("ahead-a")
                .batchSize(10)
                .producerProperty("interceptor.classes", HoldingInterceptor.class.getName())
                .listener(losses)
                .build();
        OutboxRelay other = OutboxFixtures.relay(otherPool, broker).name("ahead-b").build()) {
      first.start();
      await(WAIT, "the first round's acknowledgements held", HoldingInterceptor.holding::get);
      long leasePid =
          db.queryLong(
              "SELECT min(l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                  + " WHERE l.locktype = 'advisory' AND d.datname = current_database()");
      // The next round is read right after the first was sent, while its acknowledgements travel:
      // a second is ample for 10 rows.
      OutboxFixtures.sleep(1_000);
      assertEquals(1L, db.queryLong(
          "SELECT count(*) FROM pg_stat_activity WHERE pid = ?::int AND state = 'idle'", leasePid),
          "the relay thread waits for Kafka, its session idle");
      db.queryLong("SELECT count(*) FROM (SELECT pg_terminate_backend(?::int)) t", leasePid);

      other.start();
      reader.pollUntil(WAIT, "every row published by the other relay",
          r -> r.distinctIds().size() == 40);
      await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);

      HoldingInterceptor.release();
      await(WAIT, "the first relay noticed its ended session", () -> lost.get() == 1);
      OutboxFixtures.sleep(500); // a stale send, were there one, is acknowledged by now
      long onKafka = broker.endOffsetSum(topic);
      reader.pollUntil(WAIT, onKafka + " records", r -> r.records().size() >= onKafka);
      assertPerKeyOrderAfterDedup(reader.records());
      Map<String, Integer> copies = new HashMap<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        copies.merge(OutboxFixtures.text(record.value()), 1, Integer::sum);
      }
      for (int seq = 10; seq < 20; seq++) {
        assertEquals(1, copies.get("k|" + seq),
            "row " + seq + " of the round read ahead: only the other relay's copy");
      }
      // The first round was in flight when the session ended: it may complete (at most once more
      // each, the documented duplicates of a lost session), the rest is the other relay's.
      assertTrue(reader.records().size() <= 50, reader.records().size() + " records");
    } finally {
      HoldingInterceptor.release();
    }
  }

  /** Holds the producer's first acknowledgement (its network thread) until released. */
  public static final class HoldingInterceptor
      implements org.apache.kafka.clients.producer.ProducerInterceptor<byte[], byte[]> {
    static final AtomicBoolean holding = new AtomicBoolean();
    private static volatile CountDownLatch gate = new CountDownLatch(0);
    private static final AtomicBoolean armed = new AtomicBoolean();

    static void hold() {
      gate = new CountDownLatch(1);
      holding.set(false);
      armed.set(true);
    }

    static void release() {
      gate.countDown();
    }

    @Override
    public org.apache.kafka.clients.producer.ProducerRecord<byte[], byte[]> onSend(
        org.apache.kafka.clients.producer.ProducerRecord<byte[], byte[]> record) {
      return record;
    }

    @Override
    public void onAcknowledgement(
        org.apache.kafka.clients.producer.RecordMetadata metadata, Exception exception) {
      if (armed.compareAndSet(true, false)) {
        holding.set(true);
        try {
          gate.await(2, TimeUnit.MINUTES);
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
        }
      }
    }

    @Override
    public void close() {}

    @Override
    public void configure(java.util.Map<String, ?> configs) {}
  }

  /** Starts relays {@code <prefix>-a} and {@code -b} and waits until each holds half the shares. */
  private static void startTwoSplittingEvenly(
      List<ChildJvm> relays, String prefix, String... jvmOptions) {
    relays.add(OutboxFixtures.startRelayProcess(db, broker, prefix + "-a", 50, jvmOptions));
    relays.add(OutboxFixtures.startRelayProcess(db, broker, prefix + "-b", 50, jvmOptions));
    await(
        WAIT,
        () -> "even split, now " + holdings(relays),
        () -> holdings(relays).stream().allMatch(h -> h.size() == Outbox.SHARE_COUNT / 2));
  }

  /** Commits rows of distinct keys until 20 fell in {@code frozenShares} and 20 outside them. */
  private static void commitToBoth(
      String topic, Set<Integer> frozenShares, List<UUID> toFrozen, List<UUID> toLive) {
    for (int i = 0; toFrozen.size() < 20 || toLive.size() < 20; i++) {
      String key = "key-" + i;
      int share = Shares.shareOf(key.getBytes(StandardCharsets.UTF_8), null);
      (frozenShares.contains(share) ? toFrozen : toLive)
          .addAll(commit(db.dataSource(), List.of(numbered(topic, key, 0))));
    }
  }

  private static List<Set<Integer>> holdings(List<ChildJvm> relays) {
    List<Set<Integer>> holdings = new ArrayList<>();
    for (ChildJvm relay : relays) {
      holdings.add(new RelayEvents("relay", relay.output(), 0, 0).holding());
    }
    return holdings;
  }

  /**
   * An Error of a listener's own (an assertion) is logged and the relay goes on. An Error that is
   * the relay's (a stack overflow, out of memory on a batch of huge rows) stops it loudly: {@code
   * isRunning()} turns false and its shares are given back, so another relay publishes the rest.
   * Before, either Error ended the relay thread silently while {@code isRunning()} said true.
   */
  @Test
  void anErrorStopsTheRelayVisiblyWhileAListenersOwnErrorIsIgnored() throws Exception {
    String topic = KafkaBroker.uniqueTopic("relay-error");
    broker.createTopic(topic, 1);
    AtomicInteger listenerErrors = new AtomicInteger();
    AtomicBoolean overflow = new AtomicBoolean();
    OutboxRelay.Listener listener =
        new OutboxRelay.Listener() {
          @Override
          public void batchStarting(Set<Integer> shares, int rows) {
            if (overflow.get()) {
              throw new StackOverflowError("simulated");
            }
            listenerErrors.incrementAndGet();
            throw new AssertionError("the listener's own failure");
          }
        };
    List<OutboxMessage> first = new ArrayList<>();
    List<OutboxMessage> second = new ArrayList<>();
    for (int i = 0; i < 10; i++) {
      (i < 5 ? first : second).add(numbered(topic, "k", i));
    }
    try (HikariDataSource pool = db.newDataSource(4);
        TopicReader reader = new TopicReader(broker, topic);
        OutboxRelay failing =
            OutboxFixtures.relay(pool, broker).name("error-a").listener(listener).build()) {
      failing.start();
      Set<String> expected = new HashSet<>(asStrings(commit(db.dataSource(), first)));
      reader.awaitIds(WAIT, expected);
      assertTrue(listenerErrors.get() > 0, "the listener failed");
      assertTrue(failing.isRunning(), "a listener's Error does not stop the relay");

      overflow.set(true);
      expected.addAll(asStrings(commit(db.dataSource(), second)));
      await(WAIT, "the relay stopped by the Error", () -> !failing.isRunning());
      await(WAIT, "its shares given back", () -> failing.ownedShares().isEmpty());
      try (OutboxRelay takeover = OutboxFixtures.relay(pool, broker).name("error-b").build()) {
        takeover.start();
        reader.awaitIds(WAIT, expected);
      }
      assertAllPresent(expected, reader.distinctIds());
      assertPerKeyOrderAfterDedup(reader.records());
    }
  }
}
