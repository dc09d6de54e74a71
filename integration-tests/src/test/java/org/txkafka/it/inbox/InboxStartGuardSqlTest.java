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
    // The very first batch is lost: nothing stored yet, so it continues from null.
    assertTrue(markBatch(topic, first.epoch(), null, 40));
    InboxSql.Claim second = claim(topic);
    assertEquals(null, second.nextOffset());
    assertEquals(40, second.guardedRecords(), "the lost first batch, before any commit");

    // A batch that commits leaves nothing to guard, however often the partition is claimed again.
    assertTrue(markBatch(topic, second.epoch(), null, 40));
    assertTrue(advance(topic, second.epoch(), null, 40));
    assertEquals(0, claim(topic).guardedRecords());
    InboxSql.Claim idle = claim(topic);
    assertEquals(0, idle.guardedRecords(), "an idle partition claimed again is not guarded");

    // A batch continuing from a stored offset, lost.
    assertTrue(markBatch(topic, idle.epoch(), 40L, 25));
    InboxSql.Claim afterLoss = claim(topic);
    assertEquals(40L, afterLoss.nextOffset());
    assertEquals(25, afterLoss.guardedRecords());
  }

  /**
   * A start that ended without a death is withdrawn, by its own token and only with the owner's
   * epoch: a later start's token, or a member fenced since, withdraws nothing; the count never goes
   * below zero.
   */
  @Test
  void aStartIsWithdrawnOnlyByItsTokenAndItsOwnersEpoch() throws Exception {
    String topic = "withdrawn";
    InboxSql.Claim claim = claim(topic);
    assertTrue(markBatch(topic, claim.epoch(), null, 3));
    claim = claim(topic);
    assertEquals(3, claim.guardedRecords());
    assertEquals(1, markStarted(topic, claim.epoch(), null, "first"));
    assertFalse(withdraw(topic, claim.epoch(), "another"), "another token withdraws nothing");
    assertTrue(withdraw(topic, claim.epoch(), "first"));
    assertFalse(withdraw(topic, claim.epoch(), "first"), "never below zero");
    assertEquals(1, markStarted(topic, claim.epoch(), null, "second"), "counted afresh");

    InboxSql.Claim next = claim(topic);
    assertFalse(withdraw(topic, claim.epoch(), "second"), "a fenced member withdraws nothing");
    assertEquals(2, markStarted(topic, next.epoch(), null, "third"), "the earlier start counts");
  }

  private static boolean withdraw(String topic, long epoch, String token) throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.withdrawStart(connection, GROUP, topic, 0, epoch, token);
    }
  }

  /**
   * Offsets have gaps (a transaction marker after each record of a transactional producer,
   * compaction): the stored offset after a record can be one no record has. Marks name the stored
   * offset the work continues from, so a batch whose first record lies beyond a gap is still found.
   */
  @Test
  void aBatchLostAfterAnOffsetGapIsFound() throws Exception {
    String topic = "gap";
    InboxSql.Claim claim = claim(topic);
    // Records at 0, 2, 4 (markers at 1, 3, 5): the batch commits next_offset 5.
    assertTrue(markBatch(topic, claim.epoch(), null, 3));
    assertTrue(advance(topic, claim.epoch(), null, 5));
    // The next batch starts with the record at 6 and is lost.
    assertTrue(markBatch(topic, claim.epoch(), 5L, 3));
    claim = claim(topic);
    assertEquals(5L, claim.nextOffset());
    assertEquals(3, claim.guardedRecords());
    // Its first record (offset 6) is started one at a time and lost too.
    assertEquals(1, markStarted(topic, claim.epoch(), 5L, "start-a"));
    claim = claim(topic);
    assertEquals(3, claim.guardedRecords(), "still the lost batch: nothing of it committed");
    assertEquals(2, markStarted(topic, claim.epoch(), 5L, "start-b"));
    // It completes (next_offset 7, past its marker); the record at 8 is started and lost.
    assertTrue(advance(topic, claim.epoch(), 5L, 7));
    assertEquals(1, markStarted(topic, claim.epoch(), 7L, "start-c"));
    claim = claim(topic);
    assertEquals(1, claim.guardedRecords(), "the record started after the gap, never completed");
  }

  @Test
  void startsOfOneRecordAreCountedAcrossClaimsAndARetriedMarkCountsOnce() throws Exception {
    String topic = "lost-record";
    InboxSql.Claim claim = claim(topic);
    assertTrue(markBatch(topic, claim.epoch(), null, 10));
    assertTrue(advance(topic, claim.epoch(), null, 10));
    assertTrue(markBatch(topic, claim.epoch(), 10L, 10));
    claim = claim(topic);
    assertEquals(10, claim.guardedRecords());
    // Records 10 .. 12 go one at a time; 13 kills the process, twice.
    for (long offset = 10; offset < 13; offset++) {
      assertEquals(1, markStarted(topic, claim.epoch(), offset, "t" + offset));
      assertTrue(advance(topic, claim.epoch(), offset, offset + 1));
    }
    assertEquals(1, markStarted(topic, claim.epoch(), 13L, "t13-1"));
    claim = claim(topic);
    assertEquals(13L, claim.nextOffset());
    assertEquals(1, claim.guardedRecords(), "the record started and never completed");
    assertEquals(2, markStarted(topic, claim.epoch(), 13L, "t13-2"));
    assertEquals(
        2,
        markStarted(topic, claim.epoch(), 13L, "t13-2"),
        "the same start retried (its acknowledgement was lost) counts once");
    claim = claim(topic);
    assertEquals(1, claim.guardedRecords());
    assertEquals(3, markStarted(topic, claim.epoch(), 13L, "t13-3"), "starts of one record add up");

    // Once it completes (applied or dead-lettered), the next record counts from 1 and nothing is
    // guarded any more.
    assertTrue(advance(topic, claim.epoch(), 13L, 14));
    assertEquals(1, markStarted(topic, claim.epoch(), 14L, "t14"));
    assertTrue(advance(topic, claim.epoch(), 14L, 15));
    assertEquals(0, claim(topic).guardedRecords());
  }

  @Test
  void aFencedOwnerCanLeaveNoMark() throws Exception {
    String topic = "fenced-marks";
    InboxSql.Claim old = claim(topic);
    InboxSql.Claim current = claim(topic);
    assertTrue(current.epoch() > old.epoch());
    assertFalse(markBatch(topic, old.epoch(), null, 5), "a batch mark of an old epoch");
    assertEquals(-1, markStarted(topic, old.epoch(), null, "zombie"), "a start mark of an old epoch");
    assertEquals(0, claim(topic).guardedRecords(), "so nothing of the old owner is guarded");
  }

  private static InboxSql.Claim claim(String topic) throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(false);
      InboxSql.Claim claim = SQL.claim(connection, GROUP, topic, 0, "owner");
      connection.commit();
      return claim;
    }
  }

  private static boolean markBatch(String topic, long epoch, Long from, int records)
      throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.markBatch(connection, GROUP, topic, 0, epoch, from, records);
    }
  }

  private static int markStarted(String topic, long epoch, Long from, String token)
      throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      return SQL.markStarted(connection, GROUP, topic, 0, epoch, from, token);
    }
  }

  private static boolean advance(String topic, long epoch, Long expected, long next)
      throws SQLException {
    try (Connection connection = db.dataSource().getConnection()) {
      connection.setAutoCommit(false);
      Long xid = SQL.advance(connection, GROUP, topic, 0, epoch, expected, next);
      if (xid != null) {
        assertTrue(SQL.seal(connection, xid));
      }
      connection.commit();
      return xid != null;
    }
  }
}
