package org.txkafka.it.migrations;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.postgresql.PGConnection;
import org.txkafka.inbox.Inbox;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A service runs with a role that has only DML rights on the txkafka tables (the grants in the
 * README); every statement kind the outbox and inbox issue at run time works with it, and DDL is
 * refused.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class RuntimeRoleTest {
  /** The grants the README documents for a service's runtime role. */
  static final String[] GRANTS = {
    "GRANT USAGE ON SCHEMA public TO %s",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON txkafka_outbox, txkafka_outbox_archive, txkafka_inbox,"
        + " txkafka_inbox_dead_letter, txkafka_inbox_offset TO %s",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO %s",
  };

  private static TestDatabase db;
  private static final String ROLE = "txk_rt_" + UUID.randomUUID().toString().substring(0, 8);
  private static final String PASSWORD = "runtime-" + UUID.randomUUID();

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    db.execute("CREATE ROLE " + ROLE + " LOGIN PASSWORD '" + PASSWORD + "'",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC");
    for (String grant : GRANTS) {
      db.execute(String.format(grant, ROLE));
    }
  }

  @AfterAll
  static void tearDown() {
    db.close();
    // Roles are cluster-wide: once the database with its grants is gone, drop ours from another.
    try (TestDatabase other = TestPostgres.shared().createDatabase()) {
      other.execute("DROP ROLE IF EXISTS " + ROLE);
    }
  }

  @Test
  void realRelayAndInboxRunWithTheDmlOnlyRole() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("runtime-role");
    broker.createTopic(topic, 2);
    db.execute("CREATE TABLE received (message_id TEXT NOT NULL)",
        "GRANT INSERT, SELECT ON received TO " + ROLE);
    DataSource runtime = db.newDataSource(4, ROLE, PASSWORD);
    int count = 40;
    try (Connection connection = runtime.getConnection()) {
      connection.setAutoCommit(false);
      for (int i = 0; i < count; i++) {
        Outbox.writer().send(connection, OutboxMessage.to(topic).key("k" + i).payload("p").build());
      }
      connection.commit();
    }
    try (OutboxRelay relay = Outbox.relay().dataSource(runtime)
            .producerProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
            .archive(true).build();
        Inbox inbox = Inbox.builder()
            .kafkaProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
            .kafkaProperty(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest")
            .groupId("runtime-role").topics(topic).dataSource(runtime)
            .handler((record, context) -> {
              try (PreparedStatement insert = context.connection()
                  .prepareStatement("INSERT INTO received VALUES (?)")) {
                insert.setString(1, record.messageId());
                insert.executeUpdate();
              }
            }).build()) {
      relay.start();
      inbox.start();
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(90);
      while (db.queryLong("SELECT count(*) FROM received") < count
          && System.nanoTime() < deadline) {
        Thread.sleep(100);
      }
      assertTrue(inbox.isRunning(), "inbox failed: " + inbox.failure());
    }
    assertEquals(count, db.queryLong("SELECT count(DISTINCT message_id) FROM received"));
    assertEquals(count, db.queryLong("SELECT count(*) FROM received"));
    assertEquals(count, db.queryLong("SELECT count(*) FROM txkafka_outbox_archive"
        + " WHERE topic = ?", topic), "archived by the relay under the runtime role");
    assertEquals(2L, db.queryLong("SELECT count(*) FROM txkafka_inbox_offset"
        + " WHERE consumer_group = 'runtime-role' AND next_offset IS NOT NULL"));
  }

  @Test
  void dmlOnlyRoleCanRunEveryRuntimeStatementKindButNotCreateTables() throws SQLException {
    try (Connection runtime = db.connectAs(ROLE, PASSWORD);
        Statement statement = runtime.createStatement();
        Connection waitingRelay = db.connectAs(ROLE, PASSWORD);
        Statement relayStatement = waitingRelay.createStatement()) {
      runtime.setAutoCommit(false);
      // A relay waiting for work holds a wake-up slot, so the writer's commit notifies.
      relayStatement.executeQuery("SELECT pg_advisory_lock(hashtextextended('public/wake/0', 0))")
          .close();
      // Writer: the real outbox writer (its commit runs the order trigger, which notifies).
      statement.execute("LISTEN txkafka_outbox");
      UUID id = Outbox.writer().send(runtime,
          OutboxMessage.to("orders").key("o-1").payload("{}").header("h", "v").build());
      runtime.commit();
      assertTrue(runtime.unwrap(PGConnection.class).getNotifications(5_000).length > 0,
          "the order trigger notified the waiting relay at commit");

      // Relay: read pending in a share, lease by advisory lock, park, archive, delete.
      statement.executeQuery("SELECT pg_try_advisory_lock(1, 2)").close();
      statement.executeUpdate("UPDATE txkafka_outbox SET attempts = attempts + 1, last_error = 'x',"
          + " parked_at = now() WHERE message_id = '" + id + "'");
      statement.executeUpdate("UPDATE txkafka_outbox SET parked_at = NULL WHERE message_id = '"
          + id + "'");
      assertEquals(1, statement.executeUpdate(
          "WITH d AS (DELETE FROM txkafka_outbox WHERE message_id = '" + id + "' RETURNING *)"
              + " INSERT INTO txkafka_outbox_archive (id, message_id, share, topic,"
              + " kafka_partition, record_key, payload, header_names, header_values, created_at,"
              + " attempts) SELECT id, message_id, share, topic, kafka_partition, record_key,"
              + " payload, header_names, header_values, created_at, attempts FROM d"));
      statement.executeUpdate("DELETE FROM txkafka_outbox_archive WHERE published_at < now()"
          + " - interval '1 day'");
      runtime.commit();

      // Inbox: offsets with epoch, inbox rows, dead letters, retention.
      try (PreparedStatement claim = runtime.prepareStatement(
          "INSERT INTO txkafka_inbox_offset (consumer_group, topic, kafka_partition, owner_id)"
              + " VALUES ('g', 't', 0, 'me') ON CONFLICT (consumer_group, topic, kafka_partition)"
              + " DO UPDATE SET owner_epoch = txkafka_inbox_offset.owner_epoch + 1"
              + " RETURNING next_offset, owner_epoch");
          ResultSet claimed = claim.executeQuery()) {
        assertTrue(claimed.next());
      }
      assertEquals(1, statement.executeUpdate("UPDATE txkafka_inbox_offset SET next_offset = 5"
          + " WHERE consumer_group = 'g' AND owner_epoch = 0"));
      statement.executeUpdate("INSERT INTO txkafka_inbox (consumer_group, message_id, topic,"
          + " kafka_partition, kafka_offset) VALUES ('g', 'm1', 't', 0, 4) ON CONFLICT DO NOTHING");
      statement.executeUpdate("INSERT INTO txkafka_inbox_dead_letter (consumer_group, message_id,"
          + " topic, kafka_partition, kafka_offset, attempts, last_error) VALUES ('g', 'm2', 't',"
          + " 0, 3, 5, 'boom')");
      statement.executeUpdate("UPDATE txkafka_inbox_dead_letter SET replayed_at = now()");
      statement.executeUpdate("DELETE FROM txkafka_inbox WHERE received_at < now() - interval"
          + " '7 days'");
      runtime.commit();

      SQLException ddl = assertThrows(SQLException.class,
          () -> statement.execute("CREATE TABLE sneaky (id INT)"));
      assertEquals("42501", ddl.getSQLState(), "insufficient privilege");
      runtime.rollback();
    }
    assertEquals(1L, db.queryLong("SELECT count(*) FROM txkafka_outbox_archive"));
    assertEquals(1L, db.queryLong("SELECT count(*) FROM txkafka_inbox"));
  }
}
