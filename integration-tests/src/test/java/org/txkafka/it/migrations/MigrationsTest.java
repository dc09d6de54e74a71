package org.txkafka.it.migrations;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.SQLFeatureNotSupportedException;
import java.sql.SQLTransientConnectionException;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Logger;
import javax.sql.DataSource;
import org.flywaydb.core.Flyway;
import org.flywaydb.core.api.FlywayException;
import org.flywaydb.core.api.output.MigrateResult;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.txkafka.migrations.TxKafkaMigrations;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** The Flyway migrations against a real PostgreSQL; each test gets a fresh database. */
@Timeout(value = 2, unit = TimeUnit.MINUTES)
class MigrationsTest {
  static final List<String> TABLES = List.of("txkafka_outbox", "txkafka_outbox_archive",
      "txkafka_inbox", "txkafka_inbox_dead_letter", "txkafka_inbox_offset");
  static final List<String> SQL_FILES =
      List.of(
          "V1_0_1__txkafka_outbox.sql",
          "V1_0_2__txkafka_inbox.sql",
          "V1_0_3__txkafka_outbox_order_by_id.sql",
          "V1_0_4__txkafka_inbox_start_guard.sql",
          "V1_0_5__txkafka_inbox_commit_seal.sql",
          "V1_0_6__txkafka_outbox_order_serializable.sql",
          "V1_0_7__txkafka_outbox_wake_setting.sql",
          "V1_0_8__txkafka_inbox_replay_seal.sql",
          "V1_0_9__txkafka_outbox_durable_commit.sql",
          "V1_0_10__txkafka_outbox_order_every_row.sql");

  private TestDatabase db;

  @BeforeEach
  void createDatabase() {
    db = TestPostgres.shared().createDatabase();
  }

  @AfterEach
  void dropDatabase() {
    db.close();
  }

  @Test
  void freshDatabaseGetsEveryTableAndItsOwnHistoryTable() {
    MigrateResult result = TxKafkaMigrations.migrate(db.dataSource());
    assertEquals(SQL_FILES.size(), result.migrationsExecuted);
    for (String table : TABLES) {
      assertEquals(1L, tableCount("public", table), table);
    }
    assertEquals(1L, tableCount("public", TxKafkaMigrations.HISTORY_TABLE));
    assertEquals(0L, tableCount("public", "flyway_schema_history"),
        "the service's default history table is not created");
  }

  @Test
  void runningTwiceIsANoOp() {
    TxKafkaMigrations.migrate(db.dataSource());
    long historyRows = db.queryLong("SELECT count(*) FROM txkafka_schema_history");
    MigrateResult second = TxKafkaMigrations.migrate(db.dataSource());
    assertEquals(0, second.migrationsExecuted);
    assertEquals(historyRows, db.queryLong("SELECT count(*) FROM txkafka_schema_history"));
  }

  @Test
  void customSchemaIsCreatedAndHoldsEveryTable() {
    TxKafkaMigrations.migrate(db.dataSource(), "payments_tx");
    for (String table : TABLES) {
      assertEquals(1L, tableCount("payments_tx", table), table);
      assertEquals(0L, tableCount("public", table), table + " must not be in public");
    }
    assertEquals(1L, tableCount("payments_tx", TxKafkaMigrations.HISTORY_TABLE));
  }

  @Test
  void coexistsWithTheServicesOwnFlywayHistoryInTheSameSchema(@TempDir Path serviceMigrations)
      throws IOException {
    Files.writeString(serviceMigrations.resolve("V1__orders.sql"),
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, total NUMERIC NOT NULL);");
    Flyway service = Flyway.configure().dataSource(db.dataSource())
        .locations("filesystem:" + serviceMigrations).load();
    assertEquals(1, service.migrate().migrationsExecuted);

    assertEquals(SQL_FILES.size(), TxKafkaMigrations.migrate(db.dataSource()).migrationsExecuted,
        "our migrations run in a schema that already has the service's tables and history");

    Files.writeString(serviceMigrations.resolve("V2__order_status.sql"),
        "ALTER TABLE orders ADD COLUMN status TEXT;");
    assertEquals(1, service.migrate().migrationsExecuted, "the service keeps migrating");
    service.validate();
    assertEquals(2L, db.queryLong("SELECT count(*) FROM flyway_schema_history WHERE success"));
    assertEquals(0L, db.queryLong(
        "SELECT count(*) FROM flyway_schema_history WHERE script LIKE '%txkafka%'"));
    assertEquals(0, TxKafkaMigrations.migrate(db.dataSource()).migrationsExecuted);
  }

  /**
   * Ours first, the service's Flyway second: Flyway refuses a schema that holds tables but not its
   * own history unless told to baseline. The README's advice (baselineOnMigrate with version 0) is
   * what makes the service's V1 still run.
   */
  @Test
  void servicesFlywayAfterOursNeedsABaselineBelowItsFirstVersion(@TempDir Path serviceMigrations)
      throws IOException {
    assertEquals(SQL_FILES.size(), TxKafkaMigrations.migrate(db.dataSource()).migrationsExecuted);
    Files.writeString(serviceMigrations.resolve("V1__orders.sql"),
        "CREATE TABLE orders (id BIGINT PRIMARY KEY, total NUMERIC NOT NULL);");

    FlywayException refused = assertThrows(FlywayException.class,
        () -> Flyway.configure().dataSource(db.dataSource())
            .locations("filesystem:" + serviceMigrations).load().migrate());
    assertTrue(refused.getMessage().contains("non-empty schema"), refused.getMessage());

    Flyway service = Flyway.configure().dataSource(db.dataSource())
        .locations("filesystem:" + serviceMigrations)
        .baselineOnMigrate(true).baselineVersion("0").load();
    assertEquals(1, service.migrate().migrationsExecuted, "the service's V1 runs above baseline 0");
    assertEquals(1L, tableCount("public", "orders"));
    assertEquals(0, TxKafkaMigrations.migrate(db.dataSource()).migrationsExecuted);
  }

  /** The README's sizing: Flyway holds two connections at once, so a pool of one cannot migrate. */
  @Test
  void migrationNeedsTwoConnectionsOfThePool() {
    try (HikariDataSource one = pool(1)) {
      FlywayException error =
          assertThrows(FlywayException.class, () -> TxKafkaMigrations.migrate(one));
      assertTrue(hasCause(error, SQLTransientConnectionException.class), error.toString());
    }
    try (HikariDataSource two = pool(2)) {
      assertEquals(SQL_FILES.size(), TxKafkaMigrations.migrate(two).migrationsExecuted);
    }
  }

  private HikariDataSource pool(int size) {
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(db.jdbcUrl());
    config.setUsername(db.user());
    config.setPassword(db.password());
    config.setMaximumPoolSize(size);
    config.setConnectionTimeout(1000);
    return new HikariDataSource(config);
  }

  private static boolean hasCause(Throwable error, Class<? extends Throwable> type) {
    for (Throwable t = error; t != null; t = t.getCause()) {
      if (type.isInstance(t)) {
        return true;
      }
    }
    return false;
  }

  @Test
  void tamperedMigrationFailsFlywaysValidation(@TempDir Path copy) throws IOException {
    for (String file : SQL_FILES) {
      try (InputStream in = getClass().getResourceAsStream("/db/txkafka/" + file)) {
        Files.write(copy.resolve(file), in.readAllBytes());
      }
    }
    TxKafkaMigrations.configure(db.dataSource(), "public")
        .locations("filesystem:" + copy).load().migrate();
    Path inbox = copy.resolve(SQL_FILES.get(1));
    Files.writeString(inbox, Files.readString(inbox) + "\n-- edited after it was applied\n");

    FlywayException error = assertThrows(FlywayException.class,
        () -> TxKafkaMigrations.configure(db.dataSource(), "public")
            .locations("filesystem:" + copy).load().migrate());
    assertTrue(error.getMessage().toLowerCase().contains("checksum mismatch"), error.getMessage());
  }

  @Test
  void invalidSchemaNameIsRefusedBeforeAnySqlRuns() {
    CountingDataSource counting = new CountingDataSource(db.dataSource());
    for (String bad : List.of("public; DROP TABLE orders", "Payments", "\"x\"", "", "1abc",
        "a".repeat(64), "sch ema", "a$$b", "$$")) {
      IllegalArgumentException error = assertThrows(IllegalArgumentException.class,
          () -> TxKafkaMigrations.migrate(counting, bad), bad);
      assertTrue(error.getMessage().startsWith("schema must be a lower-case unquoted PostgreSQL"
          + " identifier"), error.getMessage());
      assertTrue(error.getMessage().contains("'" + bad + "'"), "message names the value");
    }
    assertEquals(0, counting.connections.get(), "no connection was even opened");
  }

  private long tableCount(String schema, String table) {
    return db.queryLong("SELECT count(*) FROM information_schema.tables"
        + " WHERE table_schema = ? AND table_name = ?", schema, table);
  }

  /** Counts connections asked for; a hand-written wrapper around the real pool. */
  static final class CountingDataSource implements DataSource {
    final AtomicInteger connections = new AtomicInteger();
    private final DataSource delegate;

    CountingDataSource(DataSource delegate) {
      this.delegate = delegate;
    }

    @Override
    public Connection getConnection() throws SQLException {
      connections.incrementAndGet();
      return delegate.getConnection();
    }

    @Override
    public Connection getConnection(String username, String password) throws SQLException {
      connections.incrementAndGet();
      return delegate.getConnection(username, password);
    }

    @Override
    public PrintWriter getLogWriter() throws SQLException {
      return delegate.getLogWriter();
    }

    @Override
    public void setLogWriter(PrintWriter out) throws SQLException {
      delegate.setLogWriter(out);
    }

    @Override
    public void setLoginTimeout(int seconds) throws SQLException {
      delegate.setLoginTimeout(seconds);
    }

    @Override
    public int getLoginTimeout() throws SQLException {
      return delegate.getLoginTimeout();
    }

    @Override
    public Logger getParentLogger() throws SQLFeatureNotSupportedException {
      return delegate.getParentLogger();
    }

    @Override
    public <T> T unwrap(Class<T> type) throws SQLException {
      return delegate.unwrap(type);
    }

    @Override
    public boolean isWrapperFor(Class<?> type) throws SQLException {
      return delegate.isWrapperFor(type);
    }
  }

  static String utf8(byte[] bytes) {
    return new String(bytes, StandardCharsets.UTF_8);
  }
}
