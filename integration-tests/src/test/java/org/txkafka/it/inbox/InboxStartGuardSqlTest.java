package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.sql.Connection;
import java.sql.SQLException;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.internal.InboxSql;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The marks that let a claim find a batch or a record whose owner died applying it (migration
 * 1.0.4), statement by statement against the real PostgreSQL: when a claim asks for records to be
 * applied one at a time, how starts are counted, and that a fenced owner can leave no mark.
 */
@Timeout(value = 1, unit = TimeUnit.MINUTES)
class InboxStartGuardSqlTest {
  private static final String GROUP = "guard-group";

  private static TestDatabase db;
  private static final InboxSql SQL = new InboxSql("public");

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void aClaimGuardsTheRecordsOfABatchMarkedAndNeverCommitted() throws Exception {
    String topic = "lost-batch";
    InboxSql.Claim first = claim(topic);
    assertEquals(0, first.guardedRecords(), "a first claim finds nothing lost");
    // The very first batch is lost: nothing stored yet.
    assertTrue(markBatch(topic, first.epoch(), 0, 40));
    InboxSql.Claim second = claim(topic);
    assertEquals(null, second.nextOffset());
    assertEquals(40, second.guardedRecords(), "the lost first batch, before any commit");

    // A batch that commits leaves nothing to guard, however often the partition is claimed again.
    assertTrue(markBatch(topic, second.epoch(), 0, 40));
    assertTrue(advance(topic, second.epoch(), null, 40));
    assertEquals(0, claim(topic).guardedRecords());
    InboxSql.Claim idle = claim(topic);
    assertEquals(0, idle.guardedRecords(), "an idle partition claimed again is not guarded");

    // A batch from a stored offset, lost.
    assertTrue(markBatch(topic, idle.epoch(), 40, 25));
    InboxSql.Claim afterLoss = claim(topic);
    assertEquals(40L, afterLoss.nextOffset());
    assertEquals(25, afterLoss.guardedRecords());
  }

  @Test
  void startsOfOneRecordAreCountedAcrossClaimsAndARecordThatCompletedIsNotGuardedAgain()
      throws Exception {
    String topic = "lost-record";
    InboxSql.Claim claim = claim(topic);
    assertTrue(markBatch(topic, claim.epoch(), 0, 10));
    assertTrue(advance(topic, claim.epoch(), null, 10));
    assertTrue(markBatch(topic, claim.epoch(), 10, 10));
    claim = claim(topic);
    assertEquals(10, claim.guardedRecords());
    // Records 10 .. 12 go one at a time; 13 kills the process, twice.
    for (long offset = 10; offset < 13; offset++) {
      assertEquals(1, markStarted(topic, claim.epoch(), offset));
      assertTrue(advance(topic, claim.epoch(), offset, offset + 1));
    }
    assertEquals(1, markStarted(topic, claim.epoch(), 13));
    claim = claim(topic);
    assertEquals(13L, claim.nextOffset());
    assertEquals(1, claim.guardedRecords(), "the record started and never completed");
    assertEquals(2, markStarted(topic, claim.epoch(), 13));
    claim = claim(topic);
    assertEquals(1, claim.guardedRecords());
    assertEquals(3, markStarted(topic, claim.epoch(), 13), "starts of one record add up");

    // Once it completes (applied or dead-lettered), the next record counts from 1 and nothing is
    // guarded any more.
    assertTrue(advance(topic, claim.epoch(), 13L, 14));
    assertEquals(1, markStarted(topic, claim.epoch(), 14));
    assertTrue(advance(topic, claim.epoch(), 14L, 15));
    assertEquals(0, claim(topic).guardedRecords());
  }

  @Test
  void aFencedOwnerCanLeaveNoMark() throws Exception {
    String topic = "fenced-marks";
    InboxSql.Claim old = claim(topic);
    InboxSql.Claim current = claim(topic);
    assertFalse(markBatch(topic, old.epoch(), 0, 5), "a batch mark of an old epoch");
    assertEquals(-1, markStarted(topic, old.epoch(), 0), "a start mark of an old epoch");
    assertEquals(0, claim(topic).guardedRecords(), "so nothing of the old owner is guarded");
    assertTrue(current.epoch() > old.epoch());
  }

  private static InboxSql.Claim claim(String topic) throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(false);
      InboxSql.Claim claim = SQL.claim(connection, GROUP, topic, 0, "owner");
      connection.commit();
      return claim;
    }
  }

  private static boolean markBatch(String topic, long epoch, long offset, int records)
      throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.markBatch(connection, GROUP, topic, 0, epoch, offset, records);
    }
  }

  private static int markStarted(String topic, long epoch, long offset) throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.markStarted(connection, GROUP, topic, 0, epoch, offset);
    }
  }

  private static boolean advance(String topic, long epoch, Long expected, long next)
      throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.advance(connection, GROUP, topic, 0, epoch, expected, next);
    }
  }
}
