package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Invariant: a transaction whose outbox rows a relay can see is on disk. With {@code
 * synchronous_commit = off}, PostgreSQL makes a commit visible before its commit record is
 * flushed; a relay could publish the rows and a crash then lose the transaction (a message for a
 * change that never happened). Migration 1.0.9's order trigger turns {@code synchronous_commit} on
 * for a transaction that sent outbox rows.
 *
 * <p>How it is seen without crashing the server: a deferred probe trigger, which fires at commit
 * after the order trigger (trigger names fire in alphabetical order), records the setting the
 * commit will run with and the WAL insert position just before the commit record. Right after the
 * commit returns, the flushed WAL position must have passed it. Without the fix the probe records
 * {@code off} and the flush position is usually behind (the WAL writer flushes every 200 ms).
 */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxDurableCommitTest {
  private static final int TRANSACTIONS = 5;

  @Test
  void transactionWithOutboxRowsIsFlushedAtCommitEvenWithSynchronousCommitOff() throws Exception {
    TestDatabase db = TestPostgres.shared().createDatabase().migrate();
    try {
      db.execute(
          "CREATE TABLE commit_probe (n BIGSERIAL PRIMARY KEY, lsn PG_LSN NOT NULL,"
              + " sync TEXT NOT NULL)",
          "CREATE FUNCTION commit_probe() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
              + " INSERT INTO commit_probe (lsn, sync)"
              + " VALUES (pg_current_wal_insert_lsn(), current_setting('synchronous_commit'));"
              + " RETURN NULL; END $$",
          "CREATE CONSTRAINT TRIGGER zz_commit_probe AFTER INSERT ON txkafka_outbox"
              + " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION commit_probe()");
      OutboxWriter writer = Outbox.writer();
      try (Connection connection = db.connect();
          Statement statement = connection.createStatement()) {
        statement.execute("SET synchronous_commit = off");
        connection.setAutoCommit(false);
        for (int i = 0; i < TRANSACTIONS; i++) {
          writer.send(
              connection,
              OutboxMessage.to("durable")
                  .key(("k" + i).getBytes(StandardCharsets.UTF_8))
                  .payload(("m" + i).getBytes(StandardCharsets.UTF_8))
                  .build());
          connection.commit();
          try (ResultSet flushed =
              statement.executeQuery(
                  "SELECT p.sync, pg_current_wal_flush_lsn() >= p.lsn,"
                      + " current_setting('synchronous_commit')"
                      + " FROM commit_probe p ORDER BY p.n DESC LIMIT 1")) {
            assertTrue(flushed.next(), "the probe fired at commit");
            assertEquals("on", flushed.getString(1), "the commit ran with synchronous_commit on");
            assertTrue(
                flushed.getBoolean(2),
                "transaction " + i + ": its commit record was flushed when the commit returned");
            assertEquals(
                "off", flushed.getString(3), "the session's own setting is back after the commit");
          }
          connection.commit();
        }
      }
      assertEquals(TRANSACTIONS, db.queryLong("SELECT count(*) FROM txkafka_outbox"));
    } finally {
      db.close();
    }
  }
}
