package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import javax.sql.DataSource;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.TxKafkaException;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxBuilder;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A database the inbox can never work with is refused at {@code start()}, naming the fix: before,
 * the inbox started, held its partitions and retried its claims for ever, applying nothing, with
 * {@code isRunning()} true, no {@code failure()} and a lag metric of 0 (its partitions were never
 * ready). A database that cannot be reached at start is an outage, not a refusal (covered by
 * InboxDatabaseOutageTest and the demo's chaos runs).
 */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class InboxSetupCheckTest {
  private static TestDatabase migrated;
  private static TestDatabase empty;
  private static final String ROLE = "txk_ro_" + UUID.randomUUID().toString().substring(0, 8);

  @BeforeAll
  static void setUp() {
    migrated = TestPostgres.shared().createDatabase().migrate();
    empty = TestPostgres.shared().createDatabase();
    migrated.execute(
        "CREATE ROLE " + ROLE + " LOGIN PASSWORD 'select-only'",
        "GRANT USAGE ON SCHEMA public TO " + ROLE,
        "GRANT SELECT ON txkafka_inbox, txkafka_inbox_dead_letter, txkafka_inbox_offset TO "
            + ROLE,
        // All the inbox does to its offset rows: no DELETE needed there.
        "GRANT INSERT, UPDATE ON txkafka_inbox_offset TO " + ROLE);
  }

  @AfterAll
  static void tearDown() {
    migrated.close();
    empty.close();
    try (TestDatabase other = TestPostgres.shared().createDatabase()) {
      other.execute("DROP ROLE IF EXISTS " + ROLE);
    }
  }

  private static InboxBuilder inbox(DataSource dataSource) {
    return Inbox.builder()
        .kafkaProperties(InboxTestSupport.consumerProperties(KafkaBroker.shared()))
        .groupId("setup-check")
        .topics(KafkaBroker.uniqueTopic("setup-check"))
        .dataSource(dataSource)
        .handler((record, context) -> {});
  }

  private static String refusal(InboxBuilder builder) {
    try (Inbox inbox = builder.build()) {
      TxKafkaException refused = assertThrows(TxKafkaException.class, inbox::start);
      assertFalse(inbox.isRunning(), "a refused inbox does not run");
      assertThrows(IllegalStateException.class, inbox::start, "and cannot be started again");
      return refused.getMessage();
    }
  }

  @Test
  void readOnlyTransactionsAreRefusedAtStart() {
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(migrated.jdbcUrl());
    config.setMaximumPoolSize(2);
    config.addDataSourceProperty("options", "-c default_transaction_read_only=on");
    try (HikariDataSource readOnly = new HikariDataSource(config)) {
      String message = refusal(inbox(readOnly));
      assertTrue(message.contains("read-only"), message);
      assertTrue(message.contains("default_transaction_read_only"), message);
    }
  }

  @Test
  void aDatabaseNeverMigratedOrAnotherSchemaIsRefusedAtStart() {
    try (HikariDataSource pool = empty.newDataSource(2)) {
      String message = refusal(inbox(pool));
      assertTrue(message.contains("table public.txkafka_inbox_offset does not exist"), message);
      assertTrue(message.contains("run the txkafka migrations"), message);
    }
    try (HikariDataSource pool = migrated.newDataSource(2)) {
      String message = refusal(inbox(pool).schema("billing"));
      assertTrue(message.contains("table billing.txkafka_inbox_offset does not exist"), message);
    }
  }

  @Test
  void missingPrivilegesAreRefusedAtStartNamingThem() {
    try (HikariDataSource pool = migrated.newDataSource(2, ROLE, "select-only")) {
      String message = refusal(inbox(pool));
      assertTrue(
          message.contains("lacks INSERT, UPDATE, DELETE on public.txkafka_inbox "), message);
      assertTrue(
          message.contains("lacks INSERT, UPDATE, DELETE on public.txkafka_inbox_dead_letter"),
          message);
      assertFalse(message.contains("on public.txkafka_inbox_offset"), message);
    }
  }

  @Test
  void aWellSetUpDatabaseStarts() {
    try (HikariDataSource pool = migrated.newDataSource(3);
        Inbox inbox = inbox(pool).build()) {
      inbox.start();
      assertTrue(inbox.isRunning());
    }
  }
}
