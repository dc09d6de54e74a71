package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.internal.InboxSql;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Every transaction that locks a partition's offset row bounds how long it may then sit idle
 * ({@code transactionIdleTimeout}), not only the batch transaction: a member frozen (GC pause,
 * SIGSTOP; its kernel keeps the TCP connection alive, so PostgreSQL never notices) between a mark
 * or a claim and its COMMIT must not keep the next owner's claim waiting for as long as it stays
 * frozen. Against the real PostgreSQL: an uncommitted mark or claim, left idle past the timeout,
 * loses its session; the next claim gets the row at once. Without the guard, that claim waited out
 * its lock timeout and failed (55P03), again and again.
 */
@Timeout(value = 1, unit = TimeUnit.MINUTES)
class InboxIdleGuardSqlTest {
  private static final String GROUP = "idle-guard";
  private static final InboxSql SQL = new InboxSql("public", Duration.ofMillis(500));

  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  private interface Frozen {
    void lockTheRow(Connection connection, long epoch) throws SQLException;
  }

  @Test
  void batchMarkLeftUncommittedLosesItsSessionAndTheNextClaimGetsTheRow() throws Exception {
    assertNextClaimGetsTheRow("mark-batch",
        (connection, epoch) -> assertTrue(SQL.markBatch(connection, GROUP, "mark-batch", 0, epoch, null, 10)));
  }

  @Test
  void startMarkLeftUncommittedLosesItsSessionAndTheNextClaimGetsTheRow() throws Exception {
    assertNextClaimGetsTheRow("mark-started",
        (connection, epoch) -> assertEquals(1, SQL.markStarted(connection, GROUP, "mark-started", 0, epoch, null, "t")));
  }

  @Test
  void claimLeftUncommittedLosesItsSessionAndTheNextClaimGetsTheRow() throws Exception {
    assertNextClaimGetsTheRow("claim",
        (connection, epoch) -> SQL.claim(connection, GROUP, "claim", 0, "frozen-owner"));
  }

  private static void assertNextClaimGetsTheRow(String topic, Frozen frozen) throws Exception {
    long epoch = claim(topic).epoch();
    try (Connection frozenMember = db.connect()) {
      frozenMember.setAutoCommit(false);
      frozen.lockTheRow(frozenMember, epoch);
      Thread.sleep(1_500); // frozen before its COMMIT, three times the idle timeout

      long started = System.nanoTime();
      InboxSql.Claim next = claim(topic);
      long waitedMillis = TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - started);
      assertTrue(next.epoch() > epoch, "the next owner's claim bumped the epoch");
      assertTrue(waitedMillis < 2_000, "the claim waited " + waitedMillis + " ms for the row");
      SQLException ended = assertThrows(SQLException.class, frozenMember::commit);
      assertTrue(ended.getSQLState() == null || ended.getSQLState().startsWith("08")
              || ended.getSQLState().equals("25P03"),
          "the frozen member's session was ended: " + ended.getSQLState() + " " + ended.getMessage());
    }
    assertEquals(0, claim(topic).guardedRecords(), "nothing of the frozen member's mark was kept");
  }

  private static InboxSql.Claim claim(String topic) throws SQLException {
    try (Connection connection = db.connect()) {
      connection.setAutoCommit(false);
      InboxSql.Claim claim = SQL.claim(connection, GROUP, topic, 0, "owner");
      connection.commit();
      return claim;
    }
  }
}
