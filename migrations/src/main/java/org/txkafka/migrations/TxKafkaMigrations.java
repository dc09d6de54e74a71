package org.txkafka.migrations;

import java.util.Map;
import java.util.Objects;
import java.util.regex.Pattern;
import javax.sql.DataSource;
import org.flywaydb.core.Flyway;
import org.flywaydb.core.api.configuration.FluentConfiguration;
import org.flywaydb.core.api.output.MigrateResult;

/**
 * Applies the txkafka tables (outbox, inbox, inbox offsets) with Flyway.
 *
 * <p>The SQL ships as classpath resources under {@value #LOCATION}; the target schema is the Flyway
 * placeholder {@code ${schema}}. {@link #migrate(DataSource, String)} applies them with their own
 * history table, {@value #HISTORY_TABLE}, so that a service's own Flyway history in the same schema
 * is never touched. Runtime modules never run DDL: run this at deployment or start-up with a role
 * that may create tables, and run the service with a role that only has DML rights.
 *
 * <p>Example:
 * <pre>{@code
 * TxKafkaMigrations.migrate(dataSource, "public");
 * }</pre>
 *
 * <p>This class is thread-safe (it has no state); Flyway itself serialises concurrent migrations
 * of one schema with a database lock.
 */
public final class TxKafkaMigrations {

  /** Classpath location of the SQL migrations. */
  public static final String LOCATION = "classpath:db/txkafka";

  /** Name of the Flyway history table used by {@link #migrate}. */
  public static final String HISTORY_TABLE = "txkafka_schema_history";

  /** Name of the Flyway placeholder that holds the (quoted) schema. */
  public static final String SCHEMA_PLACEHOLDER = "schema";

  /** The schema used when none is given. */
  public static final String DEFAULT_SCHEMA = "public";

  /**
   * Unquoted PostgreSQL identifiers in lower case, at most 63 bytes: what a schema name may be.
   * Anything else (quotes, spaces, semicolons, upper case) is refused before any SQL runs, and so is
   * {@code $$}, which would end the dollar-quoted function bodies the schema is substituted into.
   */
  private static final Pattern IDENTIFIER = Pattern.compile("(?!.*[$][$])[a-z_][a-z0-9_$]{0,62}");

  private TxKafkaMigrations() {}

  /**
   * Applies the migrations to the {@value #DEFAULT_SCHEMA} schema. Same as {@code
   * migrate(dataSource, "public")}.
   *
   * @throws IllegalArgumentException if the data source is null
   * @throws org.flywaydb.core.api.FlywayException if Flyway fails (validation, SQL error)
   */
  public static MigrateResult migrate(DataSource dataSource) {
    return migrate(dataSource, DEFAULT_SCHEMA);
  }

  /**
   * Applies the migrations to {@code schema}, creating the schema if it does not exist, with the
   * history table {@value #HISTORY_TABLE} in that schema. The schema may already hold other tables
   * and the service's own Flyway history: ours starts with a baseline at version 0 and never touches
   * theirs. Running it again is a no-op. A migration
   * that was changed after it was applied fails Flyway's validation with its checksum error.
   *
   * @param dataSource where to apply them; a connection needs rights to create tables
   * @param schema a lower-case unquoted PostgreSQL identifier, e.g. {@code "payments"}
   * @throws IllegalArgumentException if the schema is not a valid identifier (nothing is run)
   * @throws org.flywaydb.core.api.FlywayException if Flyway fails (validation, SQL error)
   */
  public static MigrateResult migrate(DataSource dataSource, String schema) {
    return configure(dataSource, schema).load().migrate();
  }

  /**
   * A Flyway configuration for the txkafka migrations, for callers who want to change more (for
   * example {@code baselineOnMigrate}) before {@code load().migrate()}.
   *
   * @throws IllegalArgumentException if the data source is null or the schema is not a valid
   *     identifier
   */
  public static FluentConfiguration configure(DataSource dataSource, String schema) {
    if (dataSource == null) {
      throw new IllegalArgumentException("dataSource must not be null");
    }
    String validSchema = requireSchemaName(schema);
    return Flyway.configure(TxKafkaMigrations.class.getClassLoader())
        .dataSource(dataSource)
        .locations(LOCATION)
        .schemas(validSchema)
        .defaultSchema(validSchema)
        .table(HISTORY_TABLE)
        .placeholders(placeholders(validSchema))
        // A service's schema is usually not empty (its own tables, its own Flyway history): our
        // history starts at a baseline below our first version, so every migration still runs.
        .baselineOnMigrate(true)
        .baselineVersion("0")
        .baselineDescription("txkafka baseline")
        .failOnMissingLocations(true);
  }

  /**
   * The placeholders the migrations need, for a service that adds {@value #LOCATION} to its own
   * Flyway configuration instead of calling {@link #migrate}.
   *
   * @throws IllegalArgumentException if the schema is not a valid identifier
   */
  public static Map<String, String> placeholders(String schema) {
    return Map.of(SCHEMA_PLACEHOLDER, '"' + requireSchemaName(schema) + '"');
  }

  /**
   * Checks that {@code schema} is a lower-case unquoted PostgreSQL identifier of at most 63
   * characters and returns it.
   *
   * @throws IllegalArgumentException naming the value and the rule, if it is not
   */
  public static String requireSchemaName(String schema) {
    Objects.requireNonNull(schema, "schema must not be null");
    if (!IDENTIFIER.matcher(schema).matches()) {
      throw new IllegalArgumentException(
          "schema must be a lower-case unquoted PostgreSQL identifier "
              + "([a-z_][a-z0-9_$]*, no $$, at most 63 characters), was '"
              + schema
              + "'");
    }
    return schema;
  }
}
