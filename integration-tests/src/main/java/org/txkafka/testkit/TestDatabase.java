package org.txkafka.testkit;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import javax.sql.DataSource;
import org.txkafka.migrations.TxKafkaMigrations;

/**
 * One fresh database of a {@link TestPostgres} server, for one test class; {@link #close()} drops
 * it. Thread-safe.
 */
public final class TestDatabase implements AutoCloseable {
  private final TestPostgres server;
  private final String name;
  private final String jdbcUrl;
  private final String user;
  private final String password;
  private final List<HikariDataSource> pools = new ArrayList<>();
  private HikariDataSource dataSource;
  private boolean closed;

  TestDatabase(TestPostgres server, String name, String jdbcUrl, String user, String password) {
    this.server = server;
    this.name = name;
    this.jdbcUrl = jdbcUrl;
    this.user = user;
    this.password = password;
  }

  /** The database's name. */
  public String name() {
    return name;
  }

  /** Its JDBC URL (credentials, if any, from {@link #user()} and {@link #password()}). */
  public String jdbcUrl() {
    return jdbcUrl;
  }

  /** The user, or null when the URL carries it. */
  public String user() {
    return user;
  }

  /** The password, or null. */
  public String password() {
    return password;
  }

  /** A shared HikariCP pool of at most 8 connections, closed by {@link #close()}. */
  public synchronized DataSource dataSource() {
    if (dataSource == null) {
      dataSource = newDataSource(8);
    }
    return dataSource;
  }

  /** A new HikariCP pool; the caller closes it (or {@link #close()} does). */
  public synchronized HikariDataSource newDataSource(int maxPoolSize) {
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(jdbcUrl);
    if (user != null) {
      config.setUsername(user);
    }
    if (password != null) {
      config.setPassword(password);
    }
    config.setMaximumPoolSize(maxPoolSize);
    config.setMinimumIdle(0);
    config.setPoolName(name + "-" + pools.size());
    config.setConnectionTimeout(30_000);
    config.addDataSourceProperty("reWriteBatchedInserts", "true");
    HikariDataSource pool = new HikariDataSource(config);
    pools.add(pool);
    return pool;
  }

  /** A new HikariCP pool that logs in as another role; the caller closes it (or close() does). */
  public synchronized HikariDataSource newDataSource(int maxPoolSize, String role,
      String rolePassword) {
    HikariConfig config = new HikariConfig();
    int query = jdbcUrl.indexOf('?');
    config.setJdbcUrl(query < 0 ? jdbcUrl : jdbcUrl.substring(0, query));
    config.setUsername(role);
    config.setPassword(rolePassword);
    config.setMaximumPoolSize(maxPoolSize);
    config.setMinimumIdle(0);
    config.setPoolName(name + "-" + role + "-" + pools.size());
    HikariDataSource pool = new HikariDataSource(config);
    pools.add(pool);
    return pool;
  }

  /** A plain new connection; the caller closes it. */
  public Connection connect() throws SQLException {
    return DriverManager.getConnection(jdbcUrl, server.credentials());
  }

  /** A plain new connection as another role (e.g. a DML-only runtime role); the caller closes it. */
  public Connection connectAs(String role, String rolePassword) throws SQLException {
    int query = jdbcUrl.indexOf('?');
    String url = query < 0 ? jdbcUrl : jdbcUrl.substring(0, query);
    java.util.Properties props = new java.util.Properties();
    props.setProperty("user", role);
    props.setProperty("password", rolePassword);
    return DriverManager.getConnection(url, props);
  }

  /** Applies the txkafka migrations to the public schema. Returns this. */
  public TestDatabase migrate() {
    TxKafkaMigrations.migrate(dataSource(), "public");
    return this;
  }

  /** Runs SQL statements (DDL for a test's business tables) in auto-commit mode. */
  public void execute(String... statements) {
    try (Connection connection = connect(); Statement statement = connection.createStatement()) {
      for (String sql : statements) {
        statement.execute(sql);
      }
    } catch (SQLException e) {
      throw new IllegalStateException("could not execute SQL on " + name, e);
    }
  }

  /** The first column of the first row of a query, as a long (counts, sums). */
  public long queryLong(String sql, Object... params) {
    try (Connection connection = connect();
        PreparedStatement statement = connection.prepareStatement(sql)) {
      for (int i = 0; i < params.length; i++) {
        statement.setObject(i + 1, params[i]);
      }
      try (ResultSet rows = statement.executeQuery()) {
        if (!rows.next()) {
          throw new IllegalStateException("no row from " + sql);
        }
        return rows.getLong(1);
      }
    } catch (SQLException e) {
      throw new IllegalStateException("could not query " + name + ": " + sql, e);
    }
  }

  /**
   * Terminates every session of this database (pg_terminate_backend), as when the server restarts
   * or a network cut drops connections. Returns how many were terminated.
   */
  public int terminateConnections() {
    try (Connection admin = server.connectAdmin();
        PreparedStatement statement = admin.prepareStatement(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                + " WHERE datname = ? AND pid <> pg_backend_pid()")) {
      statement.setString(1, name);
      try (ResultSet rows = statement.executeQuery()) {
        rows.next();
        return rows.getInt(1);
      }
    } catch (SQLException e) {
      throw new IllegalStateException("could not terminate sessions of " + name, e);
    }
  }

  /** Closes the pools, ends every session and drops the database. */
  @Override
  public synchronized void close() {
    if (closed) {
      return;
    }
    closed = true;
    pools.forEach(HikariDataSource::close);
    try (Connection admin = server.connectAdmin(); Statement statement = admin.createStatement()) {
      statement.execute("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
    } catch (SQLException e) {
      throw new IllegalStateException("could not drop test database " + name, e);
    }
  }
}
