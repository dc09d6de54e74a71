package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.WRITER;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;
import static org.txkafka.it.outbox.OutboxFixtures.text;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Two-phase commit (XA: {@code PREPARE TRANSACTION}, then {@code COMMIT PREPARED}) of a business
 * transaction that sends outbox messages. Deferred triggers fire at PREPARE, and PostgreSQL refuses
 * to prepare a transaction that ran NOTIFY, which the order trigger sends while a relay waits for
 * work. Migration 1.0.7 lets such writers turn the wake-up off ({@code txkafka.wake_relays = off}).
 *
 * <p>What may never happen: a prepared writer transaction that is refused because a relay waits
 * (with the setting off); a prepared transaction's rows published before COMMIT PREPARED; a later
 * transaction of the same key published before the prepared one it committed after (the prepared
 * transaction holds its key lock until COMMIT PREPARED); a prepared transaction holding a wake-up
 * slot (relays could not take it back while it stays in doubt).
 *
 * <p>The shared server may not allow prepared transactions ({@code max_prepared_transactions} is 0
 * by default and changes only with a restart), so this test runs on an embedded PostgreSQL of its
 * own with {@code max_prepared_transactions = 10}.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class OutboxTwoPhaseCommitTest {
  private static final Duration WAIT = Duration.ofSeconds(60);
  private static final String KEY = "acc-2pc";
  private static TestDatabase db;
  private static KafkaBroker broker;

  @BeforeAll
  static void setUp() {
    db =
        TestPostgres.startEmbedded(Map.of("max_prepared_transactions", "10"))
            .createDatabase()
            .migrate();
    broker = KafkaBroker.shared();
  }

  @AfterAll
  static void tearDown() {
    if (db != null) {
      // A failed test may leave a transaction in doubt, which would keep DROP DATABASE waiting.
      try (Connection admin = db.connect(); Statement statement = admin.createStatement()) {
        List<String> gids = new ArrayList<>();
        try (var prepared =
            statement.executeQuery(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()")) {
          while (prepared.next()) {
            gids.add(prepared.getString(1));
          }
        }
        for (String gid : gids) {
          statement.execute("ROLLBACK PREPARED '" + gid + "'");
        }
      } catch (SQLException e) {
        throw new IllegalStateException(e);
      }
      db.close();
    }
  }

  @Test
  void preparedWritersWithTheWakeUpOffCommitInOrderAndArePublished() throws Exception {
    String topic = KafkaBroker.uniqueTopic("two-phase");
    broker.createTopic(topic, 1);
    ExecutorService thread = Executors.newSingleThreadExecutor();
    try (HikariDataSource pool = db.newDataSource(3);
        OutboxRelay relay = relay(pool, broker).pollInterval(Duration.ofMillis(500)).build();
        TopicReader reader = new TopicReader(broker, topic);
        Connection xa = db.connect();
        Connection coordinator = db.connect()) {
      relay.start();

      // The failure this migration removes: with the wake-up on, PREPARE is refused while a
      // relay waits for work (and the refused transaction is rolled back).
      SQLException refused = prepareUntilRefused(xa, coordinator, topic);
      assertTrue(
          refused.getMessage().contains("NOTIFY"),
          "refused for its NOTIFY: " + refused.getMessage());

      // The session turns the wake-up off (a role or the JDBC URL's options can do the same).
      try (Statement set = xa.createStatement()) {
        set.execute("SET txkafka.wake_relays = off");
      }
      xa.setAutoCommit(false);
      WRITER.send(xa, OutboxMessage.to(topic).key(KEY).payload("prepared").build());
      prepare(xa, "txk-a");
      assertEquals(0, wakeSlotLocksOfPreparedTransactions(), "no wake-up slot in doubt");
      assertEquals(1, keyLocksOfPreparedTransactions(KEY), "the key stays locked until commit");

      // Another writer of the key (wake-up on) waits at its commit for the prepared one.
      Future<?> later =
          thread.submit(
              () ->
                  commit(pool, List.of(OutboxMessage.to(topic).key(KEY).payload("after").build())));
      reader.poll(1000);
      assertFalse(later.isDone(), "the later writer of the key waits for the prepared one");
      assertEquals(0, reader.records().size(), "nothing of a prepared transaction is published");

      try (Statement commitPrepared = coordinator.createStatement()) {
        commitPrepared.execute("COMMIT PREPARED 'txk-a'");
      }
      later.get(30, TimeUnit.SECONDS);
      reader.pollUntil(WAIT, "both published", r -> r.records().size() >= 2);

      // Nothing wakes the relay for this one: it is found by the relay's poll.
      WRITER.send(xa, OutboxMessage.to(topic).key(KEY).payload("polled").build());
      prepare(xa, "txk-b");
      assertEquals(0, wakeSlotLocksOfPreparedTransactions(), "no wake-up slot in doubt");
      try (Statement commitPrepared = coordinator.createStatement()) {
        commitPrepared.execute("COMMIT PREPARED 'txk-b'");
      }
      reader.pollUntil(WAIT, "the polled one published", r -> r.records().size() >= 3);
      await(WAIT, "the outbox drained", () -> pendingRows(db) == 0);
      reader.poll(500);

      List<String> payloads = new ArrayList<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        payloads.add(text(record.value()));
      }
      assertEquals(
          List.of("prepared", "after", "polled"),
          payloads,
          "commit order, once each, and nothing of the refused transactions");
    } finally {
      thread.shutdownNow();
    }
  }

  /**
   * Sends one message and prepares its transaction, again and again, until PostgreSQL refuses the
   * PREPARE (a relay holds a wake-up slot: it waits for work). A PREPARE that went through (the
   * relay was reading at that moment) is rolled back by the coordinator's session. Returns the
   * refusal.
   */
  private static SQLException prepareUntilRefused(
      Connection connection, Connection coordinator, String topic) throws Exception {
    connection.setAutoCommit(false);
    long deadline = System.nanoTime() + WAIT.toNanos();
    for (int attempt = 0; System.nanoTime() < deadline; attempt++) {
      WRITER.send(connection, OutboxMessage.to(topic).key("control").payload("refused").build());
      try {
        prepare(connection, "txk-control-" + attempt);
      } catch (SQLException refused) {
        connection.rollback();
        connection.setAutoCommit(true);
        assertEquals(0, pendingRows(db), "a refused PREPARE rolls the transaction back");
        return refused;
      }
      try (Statement rollback = coordinator.createStatement()) {
        rollback.execute("ROLLBACK PREPARED 'txk-control-" + attempt + "'");
      }
      Thread.sleep(100);
    }
    throw new AssertionError("PREPARE was never refused: no relay waited for work");
  }

  /** What an XA resource does at prepare: the transaction leaves the session, in doubt. */
  private static void prepare(Connection connection, String gid) throws SQLException {
    try (Statement prepare = connection.createStatement()) {
      prepare.execute("PREPARE TRANSACTION '" + gid + "'");
    }
  }

  /** Advisory locks on the wake-up slots held by prepared transactions. */
  private static long wakeSlotLocksOfPreparedTransactions() {
    return db.queryLong(
        "SELECT count(*) FROM pg_locks l CROSS JOIN generate_series(0, 3) AS slot(n)"
            + " WHERE l.locktype = 'advisory' AND l.pid IS NULL AND l.objsubid = 1"
            + " AND ((l.classid::bigint << 32) | l.objid::bigint)"
            + " = hashtextextended('public/wake/' || slot.n, 0)");
  }

  /** Advisory locks on one key's order lock held by prepared transactions. */
  private static long keyLocksOfPreparedTransactions(String key) {
    return db.queryLong(
            "SELECT count(*) FROM pg_locks l WHERE l.locktype = 'advisory' AND l.pid IS NULL"
                + " AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint)"
                + " = hashtextextended('public/key/' || encode(convert_to(?, 'UTF8'), 'hex'), 0)",
            key);
  }
}
