package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.WRITER;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.txkafka.migrations.TxKafkaMigrations;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxAdmin;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The commit-time order trigger of the migrations, on a real PostgreSQL: the relay publishes each
 * share in id order, so for one key the id order of pending rows must be the order in which they
 * became visible. A transaction that took its id first but committed after a later id of the same
 * key (under JPA: the outbox row is inserted at send(), the entity update blocks at the flush) must
 * come out of its commit with ids above that row's; a transaction nobody overtook keeps its ids
 * (the cheap path: no second write).
 *
 * <p>The relay's side of the same contract, through a real broker, is {@link
 * OutboxCommitOrderTest}.
 */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxOrderTriggerTest {
  private static final String TOPIC = "orders";
  private static TestDatabase db;

  private ExecutorService thread;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    db.execute("CREATE TABLE account (id TEXT PRIMARY KEY, version BIGINT NOT NULL)");
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @BeforeEach
  void freshRows() {
    db.execute("TRUNCATE txkafka_outbox", "DELETE FROM account",
        "INSERT INTO account VALUES ('acc-1', 0), ('acc-2', 0)");
    thread = Executors.newSingleThreadExecutor();
  }

  @AfterEach
  void stopThread() {
    thread.shutdownNow();
  }

  @Test
  void transactionOvertakenByALaterIdOfItsKeyIsRenumberedAboveIt() throws Exception {
    try (Connection first = transaction(); Connection second = transaction()) {
      lockAccount(second, "acc-1");
      UUID early = send(first, "acc-1");
      long earlyIdAtInsert = idOf(first, early);
      Future<?> firstCommit = commitAfterLock(first, "acc-1");
      UUID late = send(second, "acc-1");
      second.commit(); // the higher id of acc-1 becomes visible first
      firstCommit.get(30, TimeUnit.SECONDS);

      long lateId = idOf(late);
      long earlyId = idOf(early);
      assertTrue(earlyIdAtInsert < lateId, "setup: the first transaction took the lower id");
      assertTrue(earlyId > lateId,
          "the row that became visible last must sort last: " + earlyId + " vs " + lateId);
    }
  }

  @Test
  void transactionNobodyOvertookKeepsItsIds() throws Exception {
    try (Connection writer = transaction(); Connection other = transaction()) {
      UUID own = send(writer, "acc-1");
      UUID ownSecond = send(writer, "acc-1");
      long idAtInsert = idOf(writer, own);
      long secondAtInsert = idOf(writer, ownSecond);
      // Another key committed meanwhile with a higher id: no order between keys, no renumbering.
      send(other, "acc-2");
      other.commit();
      writer.commit();
      assertEquals(idAtInsert, idOf(own));
      assertEquals(secondAtInsert, idOf(ownSecond));
    }
  }

  @Test
  void replayedRowComesAfterTheRowsOfItsKeyPendingAtTheReplay() throws Exception {
    OutboxAdmin admin = Outbox.admin(db.dataSource());
    try (Connection first = transaction(); Connection second = transaction()) {
      UUID early = send(first, "acc-1");
      UUID late = send(second, "acc-1");
      second.commit();
      // The relay parked the later row (say, too large); the first commits while it is parked.
      db.execute("UPDATE txkafka_outbox SET parked_at = now() WHERE message_id = '" + late + "'");
      first.commit();
      UUID afterwards = sendAndCommit("acc-1");
      assertEquals(1, admin.replayAll());
      long replayed = idOf(late);
      assertTrue(replayed > idOf(early) && replayed > idOf(afterwards),
          "the replayed row sorts after every row of its key pending at the replay");
    }
  }

  @Test
  void commitNotifiesOnlyWhileARelayWaitsForWork() throws Exception {
    try (Connection listener = db.connect(); Connection waitingRelay = db.connect()) {
      try (Statement listen = listener.createStatement()) {
        listen.execute("LISTEN txkafka_outbox");
      }
      PGConnection notifications = listener.unwrap(PGConnection.class);
      sendAndCommit("acc-1");
      assertEquals(0, received(notifications),
          "no relay waits: no NOTIFY, whose commit lock would serialise every writer");

      wakeSlot(waitingRelay, 2, true);
      sendAndCommit("acc-2");
      assertEquals(1, received(notifications), "a waiting relay is woken by the commit");

      wakeSlot(waitingRelay, 2, false);
      sendAndCommit("acc-1");
      assertEquals(0, received(notifications), "the relay is busy again: no NOTIFY");
    }
  }

  @Test
  void rowWithAnExplicitIdIsRefusedAtCommit() throws Exception {
    try (Connection writer = transaction()) {
      send(writer, "acc-1");
      try (Statement statement = writer.createStatement()) {
        statement.executeUpdate("INSERT INTO txkafka_outbox (id, message_id, share, topic, record_key)"
            + " VALUES (currval('txkafka_outbox_id_seq') + 1000, gen_random_uuid(), 0, 'orders',"
            + " 'acc-1'::bytea)");
      }
      SQLException refused = assertThrows(SQLException.class, writer::commit);
      assertEquals("0A000", refused.getSQLState());
      assertTrue(refused.getMessage().contains("identity sequence"), refused.getMessage());
    }
    assertEquals(0L, db.queryLong("SELECT count(*) FROM txkafka_outbox"), "nothing committed");
  }

  /**
   * A row whose id is drawn before rows inserted ahead of it: a function in the INSERT's VALUES
   * sends two outbox rows of another key, so the outer row takes the lowest id but its commit-time
   * event fires last. Another transaction commits a row of the outer row's key meanwhile. The
   * outer row became visible after that row and must sort after it. Before migration 1.0.10, the
   * first firing ordered only the ids from its own upward, and the outer row's firing, with a lower
   * id, returned at once: it kept the lower id and was published first.
   */
  @Test
  void rowWhoseEventFiresAfterHigherIdsOfItsTransactionIsOrderedToo() throws Exception {
    db.execute("CREATE OR REPLACE FUNCTION send_two_side_messages() RETURNS bytea LANGUAGE sql AS $$"
        + " INSERT INTO txkafka_outbox (message_id, share, topic, record_key, payload) VALUES"
        + " (gen_random_uuid(), 0, 'orders', 'side'::bytea, 'side-1'::bytea),"
        + " (gen_random_uuid(), 0, 'orders', 'side'::bytea, 'side-2'::bytea);"
        + " SELECT 'outer'::bytea $$");
    UUID outer = UUID.randomUUID();
    try (Connection writer = transaction()) {
      try (PreparedStatement insert = writer.prepareStatement(
          "INSERT INTO txkafka_outbox (message_id, share, topic, record_key, payload)"
              + " VALUES (?, 0, 'orders', 'acc-1'::bytea, send_two_side_messages())")) {
        insert.setObject(1, outer);
        insert.executeUpdate();
      }
      long outerAtInsert = idOf(writer, outer);
      UUID other = sendRaw("acc-1");
      writer.commit();

      assertTrue(outerAtInsert < idOf(other), "setup: the outer row took the lower id");
      assertTrue(idOf(outer) > idOf(other),
          "the outer row became visible after the other row of its key and must sort after it: "
              + idOf(outer) + " vs " + idOf(other));
    }
  }

  /**
   * A row given an explicit id below the transaction's other rows (an import script) is ordered
   * like the others: another transaction's row of its key that committed first keeps the lower
   * id. Before migration 1.0.10 only an explicit id above the session's last one was refused; one
   * below returned at once from its firing and was published before the row that committed first.
   */
  @Test
  void rowWithAnExplicitIdBelowTheTransactionsOtherRowsIsOrderedToo() throws Exception {
    try (Connection writer = transaction()) {
      send(writer, "acc-2");
      send(writer, "acc-2");
      UUID other = sendRaw("acc-1");
      UUID explicit = UUID.randomUUID();
      try (PreparedStatement insert = writer.prepareStatement(
          "INSERT INTO txkafka_outbox (id, message_id, share, topic, record_key)"
              + " VALUES (?, ?, 0, 'orders', 'acc-1'::bytea)")) {
        insert.setLong(1, idOf(other) - 1_000_000);
        insert.setObject(2, explicit);
        insert.executeUpdate();
      }
      writer.commit();
      assertTrue(idOf(explicit) > idOf(other),
          "the row with the explicit id became visible last and must sort last: "
              + idOf(explicit) + " vs " + idOf(other));
    }
  }

  /**
   * A row cannot be given another key (or share) after its insert: the commit-time trigger orders
   * it by the key it was inserted with, so under another key it would sort below that key's rows
   * that committed first. Other updates (the relay's attempts and parking, the admin's replay) are
   * not affected.
   */
  @Test
  void rowCannotChangeItsKeyOrShareAfterItsInsert() throws Exception {
    try (Connection writer = transaction()) {
      UUID sent = send(writer, "acc-2");
      for (String change : List.of("record_key = 'acc-1'::bytea", "share = share + 1")) {
        try (Statement savepoint = writer.createStatement()) {
          savepoint.execute("SAVEPOINT s");
        }
        SQLException refused = assertThrows(SQLException.class, () -> {
          try (Statement update = writer.createStatement()) {
            update.executeUpdate("UPDATE txkafka_outbox SET " + change + " WHERE message_id = '" + sent + "'");
          }
        });
        assertEquals("0A000", refused.getSQLState(), change);
        assertTrue(refused.getMessage().contains("cannot change its record_key or share"), refused.getMessage());
        try (Statement rollback = writer.createStatement()) {
          rollback.execute("ROLLBACK TO SAVEPOINT s");
        }
      }
      try (Statement same = writer.createStatement()) {
        assertEquals(1, same.executeUpdate("UPDATE txkafka_outbox SET record_key = record_key, attempts = 1"
            + " WHERE message_id = '" + sent + "'"), "an update that keeps the key is allowed");
      }
      writer.commit();
    }
  }

  /** A row of another writer with a share no relay owns is refused, not left unpublished. */
  @Test
  void rowWithAShareAboveTheShareCountIsRefused() {
    IllegalStateException refused = assertThrows(IllegalStateException.class, () -> db.execute(
        "INSERT INTO txkafka_outbox (message_id, share, topic) VALUES (gen_random_uuid(), "
            + Outbox.SHARE_COUNT + ", 'orders')"));
    assertTrue(refused.getCause().getMessage().contains("txkafka_outbox_share_range"),
        refused.getCause().getMessage());
  }

  @Test
  void repeatableReadTransactionIsOrderedAfterRowsThatCommittedBeforeIt() throws Exception {
    try (Connection first = transaction(); Connection second = transaction()) {
      first.setTransactionIsolation(Connection.TRANSACTION_REPEATABLE_READ);
      UUID early = send(first, "acc-1"); // first's snapshot is taken here, before second commits
      UUID late = send(second, "acc-1");
      second.commit();
      first.commit();
      assertTrue(idOf(early) > idOf(late),
          "a repeatable-read transaction cannot see the row that overtook it, yet must sort after it");
    }
  }

  /**
   * A SERIALIZABLE transaction of several rows holds its keys from its inserts (migration 1.0.6):
   * a READ COMMITTED transaction of one of those keys, though its row took its id later, cannot
   * commit before it, and sorts after it; the serializable transaction's rows keep their order.
   */
  @Test
  void serializableTransactionOfSeveralRowsHoldsItsKeysAndKeepsItsOwnOrder() throws Exception {
    try (Connection first = transaction(); Connection second = transaction()) {
      first.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
      UUID a = send(first, "acc-1");
      UUID b = send(first, "acc-2");
      UUID c = send(first, "acc-1");
      UUID late = send(second, "acc-1");
      Future<?> secondCommit =
          thread.submit(
              () -> {
                second.commit();
                return null;
              });
      Thread.sleep(200);
      assertTrue(!secondCommit.isDone(), "the other commit waits for the key");
      first.commit();
      secondCommit.get(30, TimeUnit.SECONDS);
      assertTrue(idOf(late) > idOf(c), "committed after the serializable transaction");
      assertTrue(idOf(a) < idOf(b) && idOf(b) < idOf(c),
          "the transaction's own rows keep the order they were sent in");
    }
  }

  /**
   * A READ COMMITTED transaction of a key that a SERIALIZABLE one inserted first and commits first:
   * the serializable one holds the key from its insert, so the other's commit waits for it and
   * then sorts after it, although its row took its id before.
   */
  @Test
  void readCommittedRowOfAKeyASerializableTransactionHoldsSortsAfterItsCommit() throws Exception {
    try (Connection serializable = transaction(); Connection readCommitted = transaction()) {
      serializable.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
      UUID early = send(readCommitted, "acc-1");
      UUID held = send(serializable, "acc-1");
      Future<?> waiting =
          thread.submit(
              () -> {
                readCommitted.commit();
                return null;
              });
      Thread.sleep(200);
      assertTrue(!waiting.isDone(), "the read-committed commit waits for the key");
      serializable.commit();
      waiting.get(30, TimeUnit.SECONDS);
      assertTrue(
          idOf(early) > idOf(held),
          "committed after the serializable transaction, so it sorts after it");
    }
  }

  /**
   * Serializable writers that each send several messages, of keys no other writer sends, all commit
   * (migration 1.0.6: their rows are ordered at insert). The commit-time trigger of 1.0.3 read the
   * id range a transaction drew, which holds other transactions' rows too, and serializable
   * snapshot isolation failed 65 and 87 of these 200 commits with serialization failures (40001).
   */
  @Test
  void serializableWritersOfSeveralMessagesWithTheirOwnKeysDoNotFailEachOther() throws Exception {
    int writers = 8;
    int transactions = 25;
    ExecutorService pool = Executors.newFixedThreadPool(writers);
    List<String> failures = java.util.Collections.synchronizedList(new ArrayList<>());
    try {
      List<Future<?>> running = new ArrayList<>();
      for (int w = 0; w < writers; w++) {
        int writer = w;
        running.add(
            pool.submit(
                () -> {
                  for (int t = 0; t < transactions; t++) {
                    try (Connection connection = transaction()) {
                      connection.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
                      WRITER.sendAll(
                          connection,
                          List.of(
                              OutboxMessage.to(TOPIC).key("w" + writer + "-a").payload("x").build(),
                              OutboxMessage.to(TOPIC).key("w" + writer + "-b").payload("x").build()));
                      connection.commit();
                    } catch (SQLException e) {
                      failures.add(e.getSQLState() + " " + e.getMessage());
                    }
                  }
                  return null;
                }));
      }
      for (Future<?> writer : running) {
        writer.get(90, TimeUnit.SECONDS);
      }
    } finally {
      pool.shutdownNow();
    }
    assertEquals(List.of(), failures, "serializable commits refused");
    assertEquals(
        (long) writers * transactions * 2, db.queryLong("SELECT count(*) FROM txkafka_outbox"));
    // Each writer's rows keep its own order (a before b in every transaction).
    assertEquals(
        0,
        db.queryLong(
            "SELECT count(*) FROM (SELECT record_key, id, lag(id) OVER (PARTITION BY"
                + " substr(encode(record_key, 'escape'), 1, 2) ORDER BY id) AS before FROM"
                + " txkafka_outbox) o WHERE before IS NOT NULL AND before > id"),
        "ids grow within each writer");
  }

  @Test
  void severalRowsOfAnOvertakenTransactionKeepTheirOwnOrder() throws Exception {
    try (Connection first = transaction(); Connection second = transaction()) {
      lockAccount(second, "acc-1");
      UUID a = send(first, "acc-1");
      UUID b = send(first, "acc-2");
      UUID c = send(first, "acc-1");
      Future<?> firstCommit = commitAfterLock(first, "acc-1");
      UUID overtaker = send(second, "acc-1");
      second.commit();
      firstCommit.get(30, TimeUnit.SECONDS);

      long overtakerId = idOf(overtaker);
      assertTrue(idOf(a) > overtakerId && idOf(c) > overtakerId,
          "both acc-1 rows of the first transaction sort after the row that overtook them");
      assertTrue(idOf(a) < idOf(b) && idOf(b) < idOf(c),
          "the transaction's own rows keep the order they were sent in");
    }
  }

  @Test
  void rowsSentAfterAnEarlyConstraintCheckAreOrderedToo() throws Exception {
    try (Connection first = transaction(); Connection second = transaction()) {
      UUID a = send(first, "acc-1");
      UUID b = send(first, "acc-2");
      try (Statement statement = first.createStatement()) {
        // Fires the deferred trigger now: it takes the locks of acc-1 and acc-2 until commit.
        statement.execute("SET CONSTRAINTS ALL IMMEDIATE");
      }
      UUID secondRow = send(second, "acc-1");
      Future<?> secondCommit = thread.submit(() -> {
        second.commit(); // waits for the first transaction's lock of acc-1
        return null;
      });
      UUID c = send(first, "acc-1");
      first.commit();
      secondCommit.get(30, TimeUnit.SECONDS);

      assertTrue(idOf(a) < idOf(b) && idOf(b) < idOf(c), "the first transaction keeps its order");
      assertTrue(idOf(secondRow) > idOf(c),
          "the second transaction committed last, so its acc-1 row sorts after both of the first's");
      assertEquals(4L, db.queryLong("SELECT count(*) FROM txkafka_outbox"));
    }
  }

  @Test
  void transactionWritingTheOutboxesOfTwoSchemasOrdersEachOfThem() throws Exception {
    TxKafkaMigrations.migrate(db.dataSource(), "billing");
    OutboxWriter billing = Outbox.writer("billing");
    try (Connection first = transaction(); Connection second = transaction()) {
      lockAccount(second, "acc-1");
      send(first, "acc-1");
      send(first, "acc-2");
      send(first, "acc-1");
      List<UUID> firstBilling = new ArrayList<>();
      for (int i = 0; i < 3; i++) {
        firstBilling.add(
            billing.send(first, OutboxMessage.to(TOPIC).key("acc-1").payload("b" + i).build()));
      }
      Future<?> firstCommit = commitAfterLock(first, "acc-1");
      UUID overtaker =
          billing.send(second, OutboxMessage.to(TOPIC).key("acc-1").payload("late").build());
      second.commit();
      firstCommit.get(30, TimeUnit.SECONDS);

      long overtakerId = billingId(overtaker);
      for (UUID row : firstBilling) {
        assertTrue(billingId(row) > overtakerId,
            "every acc-1 row of the first transaction in billing's outbox sorts after the row"
                + " that overtook it, whatever the first transaction wrote to another schema");
      }
    } finally {
      db.execute("DROP SCHEMA billing CASCADE");
    }
  }

  @Test
  void upgradeFromTheSealedOutboxKeepsPendingRowsInCommitOrder() throws Exception {
    TestDatabase old = TestPostgres.shared().createDatabase();
    try {
      TxKafkaMigrations.configure(old.dataSource(), "public").target("1.0.2").load().migrate();
      old.execute("CREATE TABLE account (id TEXT PRIMARY KEY, version BIGINT NOT NULL)",
          "INSERT INTO account VALUES ('acc-1', 0)");
      UUID early;
      UUID late;
      try (Connection first = old.connect(); Connection second = old.connect()) {
        first.setAutoCommit(false);
        second.setAutoCommit(false);
        lockAccount(second, "acc-1");
        early = send(first, "acc-1");
        Future<?> firstCommit = commitAfterLock(first, "acc-1");
        late = send(second, "acc-1");
        second.commit();
        firstCommit.get(30, TimeUnit.SECONDS);
      }
      assertTrue(
          old.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", early)
              < old.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", late),
          "setup: before the upgrade, ids disagree with commit order");

      TxKafkaMigrations.migrate(old.dataSource(), "public");

      assertTrue(
          old.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", early)
              > old.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", late),
          "after the upgrade the relay's id order is the rows' commit order");
      assertEquals(2L, old.queryLong("SELECT count(*) FROM txkafka_outbox"));
    } finally {
      old.close();
    }
  }

  // ---------------------------------------------------------------- helpers

  private static Connection transaction() throws SQLException {
    Connection connection = db.connect();
    connection.setAutoCommit(false);
    return connection;
  }

  private static UUID send(Connection connection, String key) {
    return WRITER.send(connection, OutboxMessage.to(TOPIC).key(key).payload(key).build());
  }

  /**
   * One row of {@code key} in share 0 (as the SQL of these tests writes it) in its own committed
   * transaction.
   */
  private static UUID sendRaw(String key) throws SQLException {
    UUID id = UUID.randomUUID();
    try (Connection connection = db.connect();
        PreparedStatement insert = connection.prepareStatement(
            "INSERT INTO txkafka_outbox (message_id, share, topic, record_key) VALUES (?, 0, 'orders', ?)")) {
      insert.setObject(1, id);
      insert.setBytes(2, key.getBytes(java.nio.charset.StandardCharsets.UTF_8));
      insert.executeUpdate();
    }
    return id;
  }

  /** One message in its own committed transaction. */
  private static UUID sendAndCommit(String key) throws SQLException {
    try (Connection connection = transaction()) {
      UUID id = send(connection, key);
      connection.commit();
      return id;
    }
  }

  /** Locks the account row in another thread, then commits: the JPA flush at commit. */
  private Future<?> commitAfterLock(Connection connection, String account) throws Exception {
    Future<?> commit = thread.submit(() -> {
      lockAccount(connection, account);
      connection.commit();
      return null;
    });
    Thread.sleep(200); // it is now blocked on the row lock
    assertTrue(!commit.isDone(), "setup: the commit waits for the account row");
    return commit;
  }

  private static void lockAccount(Connection connection, String account) throws SQLException {
    try (PreparedStatement update =
        connection.prepareStatement("UPDATE account SET version = version + 1 WHERE id = ?")) {
      update.setString(1, account);
      update.executeUpdate();
    }
  }

  /** Holds or gives back wake-up slot {@code slot} of schema public, as a waiting relay does. */
  private static void wakeSlot(Connection session, int slot, boolean hold) throws SQLException {
    try (Statement statement = session.createStatement()) {
      statement.execute("SELECT pg_advisory_" + (hold ? "lock" : "unlock")
          + "(hashtextextended('public/wake/" + slot + "', 0))");
    }
  }

  /** Notifications of the outbox channel that arrive within half a second. */
  private static int received(PGConnection listener) throws SQLException {
    PGNotification[] arrived = listener.getNotifications(500);
    int count = 0;
    for (PGNotification notification : arrived == null ? new PGNotification[0] : arrived) {
      if ("txkafka_outbox".equals(notification.getName())) {
        count++;
      }
    }
    return count;
  }

  private static long billingId(UUID messageId) {
    return db.queryLong("SELECT id FROM billing.txkafka_outbox WHERE message_id = ?", messageId);
  }

  private static long idOf(UUID messageId) {
    return db.queryLong("SELECT id FROM txkafka_outbox WHERE message_id = ?", messageId);
  }

  private static long idOf(Connection connection, UUID messageId) throws SQLException {
    try (PreparedStatement query =
        connection.prepareStatement("SELECT id FROM txkafka_outbox WHERE message_id = ?")) {
      query.setObject(1, messageId);
      try (ResultSet rows = query.executeQuery()) {
        assertTrue(rows.next(), "row " + messageId + " not found");
        return rows.getLong(1);
      }
    }
  }
}
