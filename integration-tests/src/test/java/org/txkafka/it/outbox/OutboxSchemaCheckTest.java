package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.migrations.TxKafkaMigrations;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.outbox.internal.OutboxSchema;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A relay reads each share in id order, which is per-key commit order only with the order trigger
 * of migration 1.0.3 and an id sequence without per-session caches. A relay facing an outbox that
 * does not give that guarantee publishes nothing (and says what to fix), then goes on by itself
 * once it is fixed.
 */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class OutboxSchemaCheckTest {
  private static final Duration WAIT = Duration.ofSeconds(60);

  @Test
  void relayPublishesNothingWhileTheIdSequenceHasACacheAndEverythingOnceItIsFixed()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("schema-check");
    broker.createTopic(topic, 1);
    TestDatabase db = TestPostgres.shared().createDatabase().migrate();
    try (HikariDataSource relayPool = db.newDataSource(2);
        TopicReader reader = new TopicReader(broker, topic)) {
      db.execute("ALTER SEQUENCE txkafka_outbox_id_seq CACHE 20");
      commit(db.dataSource(), List.of(numbered(topic, "k", 0), numbered(topic, "k", 1)));
      try (OutboxRelay relay = relay(relayPool, broker).build()) {
        relay.start();
        // Long enough for several session attempts (backoff from 100 ms).
        reader.poll(3000);
        assertEquals(0, reader.records().size(), "nothing is published from a cached sequence");
        assertEquals(2L, pendingRows(db));
        assertTrue(relay.ownedShares().isEmpty(), "no share is taken either");

        db.execute("ALTER SEQUENCE txkafka_outbox_id_seq CACHE 1");
        reader.pollUntil(WAIT, "both rows published after the fix", r -> r.records().size() >= 2);
      }
    } finally {
      db.close();
    }
  }

  @Test
  void checkNamesWhatToFixForAnOutboxOlderThanTheOrderTriggerOrMissing() throws Exception {
    TestDatabase db = TestPostgres.shared().createDatabase();
    try {
      try (Connection connection = db.connect()) {
        SQLException missing =
            assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
        assertEquals(OutboxSchema.NOT_READY, missing.getSQLState());
        assertTrue(missing.getMessage().contains("does not exist"), missing.getMessage());
      }
      TxKafkaMigrations.configure(db.dataSource(), "public").target("1.0.2").load().migrate();
      try (Connection connection = db.connect()) {
        SQLException old =
            assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
        assertEquals(OutboxSchema.NOT_READY, old.getSQLState());
        assertTrue(old.getMessage().contains("1.0.3"), old.getMessage());
      }
      TxKafkaMigrations.migrate(db.dataSource(), "public");
      try (Connection connection = db.connect()) {
        OutboxSchema.verify(connection, "public"); // does not throw once migrated
      }
    } finally {
      db.close();
    }
  }

  /**
   * Triggers disabled by a bulk load ({@code ALTER TABLE ... DISABLE TRIGGER ALL}, {@code pg_restore
   * --disable-triggers}), enabled for replica sessions only, or migration 1.0.6's insert-time
   * trigger dropped: rows written meanwhile
   * commit without per-key order, so the relay refuses to publish, naming what to fix.
   */
  @Test
  void checkRefusesDisabledOrMissingOrderTriggers() throws Exception {
    TestDatabase db = TestPostgres.shared().createDatabase().migrate();
    try (Connection connection = db.connect()) {
      OutboxSchema.verify(connection, "public");

      db.execute("ALTER TABLE txkafka_outbox DISABLE TRIGGER txkafka_outbox_order");
      SQLException disabled =
          assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
      assertEquals(OutboxSchema.NOT_READY, disabled.getSQLState());
      assertTrue(
          disabled.getMessage().contains("has disabled triggers (txkafka_outbox_order;"),
          disabled.getMessage());
      assertTrue(disabled.getMessage().contains("ENABLE TRIGGER ALL"), disabled.getMessage());

      db.execute("ALTER TABLE txkafka_outbox ENABLE TRIGGER ALL");
      OutboxSchema.verify(connection, "public");

      // Enabled for replica sessions only: it no longer fires for the application's writers.
      db.execute("ALTER TABLE txkafka_outbox ENABLE REPLICA TRIGGER txkafka_outbox_order");
      SQLException replicaOnly =
          assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
      assertEquals(OutboxSchema.NOT_READY, replicaOnly.getSQLState());
      assertTrue(
          replicaOnly.getMessage().contains("has disabled triggers (txkafka_outbox_order;"),
          replicaOnly.getMessage());
      db.execute("ALTER TABLE txkafka_outbox ENABLE TRIGGER ALL");
      OutboxSchema.verify(connection, "public");

      db.execute("DROP TRIGGER txkafka_outbox_order_at_insert ON txkafka_outbox");
      SQLException missing =
          assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
      assertEquals(OutboxSchema.NOT_READY, missing.getSQLState());
      assertTrue(
          missing.getMessage().contains("no trigger txkafka_outbox_order_at_insert"),
          missing.getMessage());
    } finally {
      db.close();
    }
  }

  /**
   * A relay whose role may read the outbox but not remove published rows (DELETE missing, or INSERT
   * on the archive when it archives) would publish every round, fail to remove it and publish it
   * again, for ever. It publishes nothing and names the missing privileges; once granted, it
   * publishes every row once.
   */
  @Test
  void relayWhoseRoleCannotRemovePublishedRowsPublishesNothingUntilGranted() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("schema-check-grants");
    broker.createTopic(topic, 1);
    TestDatabase db = TestPostgres.shared().createDatabase().migrate();
    String role = "txk_nodel_" + java.util.UUID.randomUUID().toString().substring(0, 8);
    try {
      db.execute(
          "CREATE ROLE " + role + " LOGIN PASSWORD 'no-delete'",
          "GRANT USAGE ON SCHEMA public TO " + role,
          "GRANT SELECT, UPDATE ON txkafka_outbox TO " + role,
          "GRANT SELECT ON txkafka_outbox_archive TO " + role);
      try (Connection connection = db.connectAs(role, "no-delete")) {
        SQLException refused =
            assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public", true));
        assertEquals(OutboxSchema.NOT_READY, refused.getSQLState());
        assertTrue(
            refused.getMessage().contains(".txkafka_outbox: DELETE")
                && refused.getMessage().contains(".txkafka_outbox_archive: INSERT"),
            refused.getMessage());
        SQLException notArchiving =
            assertThrows(SQLException.class, () -> OutboxSchema.verify(connection, "public"));
        assertTrue(
            !notArchiving.getMessage().contains("archive"), "no archive, no INSERT needed");
      }
      commit(db.dataSource(), List.of(numbered(topic, "k", 0), numbered(topic, "k", 1),
          numbered(topic, "k", 2)));
      try (HikariDataSource relayPool = db.newDataSource(2, role, "no-delete");
          TopicReader reader = new TopicReader(broker, topic);
          OutboxRelay relay = relay(relayPool, broker).build()) {
        relay.start();
        reader.poll(3000);
        assertEquals(0, reader.records().size(), "nothing published it cannot remove");
        assertEquals(3L, pendingRows(db));

        db.execute("GRANT DELETE ON txkafka_outbox TO " + role);
        reader.pollUntil(WAIT, "all rows published once granted", r -> r.records().size() >= 3);
        OutboxFixtures.await(WAIT, "the rows removed", () -> pendingRows(db) == 0);
        reader.poll(1000);
        assertEquals(3, reader.records().size(), "each row once");
      }
    } finally {
      db.close();
      try (TestDatabase other = TestPostgres.shared().createDatabase()) {
        other.execute("DROP ROLE IF EXISTS " + role);
      }
    }
  }
}
