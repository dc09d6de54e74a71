package org.txkafka.outbox.internal;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import org.txkafka.SqlIdentifiers;

/**
 * Checks, before a relay publishes anything, that the outbox it is about to read keeps per-key
 * order the way this relay reads it: in id order, which the commit-time order trigger of migration
 * 1.0.3 makes the order in which each key's rows became visible.
 *
 * <p>What may never happen: a relay reading an outbox in id order while ids do not follow commit
 * order for a key. That is the case when the migrations are older than 1.0.3 (rows were ordered by
 * a {@code commit_seq} column), when the order trigger is missing, and when the id sequence hands
 * out ids from per-session caches ({@code CACHE} above 1) or wraps around ({@code CYCLE}): a row
 * renumbered at commit could then take an id below a row of its key that committed first. Also when
 * a txkafka trigger of the outbox is disabled ({@code ALTER TABLE ... DISABLE TRIGGER}, as a bulk
 * load or {@code pg_restore --disable-triggers} leaves it), or migration 1.0.6's insert-time order
 * trigger is missing while its function is there: rows then commit unordered.
 */
public final class OutboxSchema {
  /** SQLState of the refusal: object not in prerequisite state. */
  public static final String NOT_READY = "55000";

  private OutboxSchema() {}

  /**
   * Returns normally if the outbox of {@code schema} can be relayed in id order.
   *
   * @throws SQLException with SQLState {@value #NOT_READY} and a message saying what to fix, or
   *     any error of the catalog query itself
   */
  public static void verify(Connection connection, String schema) throws SQLException {
    verify(connection, schema, false);
  }

  /**
   * Like {@link #verify(Connection, String)}, and checks that this session's role may remove
   * published rows: DELETE and UPDATE (parking) on the outbox, and INSERT on the archive when the
   * relay archives. Without them every round would be published and then fail to be removed, and
   * sent again, for ever (duplicates without bound, the shares stuck).
   */
  public static void verify(Connection connection, String schema, boolean archive)
      throws SQLException {
    String table = SqlIdentifiers.quoted("schema", schema) + ".txkafka_outbox";
    verifyOrder(connection, schema, table);
    String archiveTable = SqlIdentifiers.quoted("schema", schema) + ".txkafka_outbox_archive";
    try (PreparedStatement statement =
        connection.prepareStatement(
            "SELECT current_user, array(SELECT w.tbl || ': ' || w.privilege FROM (VALUES"
                + " (?, 'SELECT'), (?, 'UPDATE'), (?, 'DELETE'), (?, 'INSERT')) AS w(tbl,"
                + " privilege) WHERE (w.tbl <> ? OR ?) AND (to_regclass(w.tbl) IS NULL OR NOT"
                + " has_table_privilege(to_regclass(w.tbl), w.privilege)))")) {
      statement.setString(1, table);
      statement.setString(2, table);
      statement.setString(3, table);
      statement.setString(4, archiveTable);
      statement.setString(5, archiveTable);
      statement.setBoolean(6, archive);
      try (ResultSet row = statement.executeQuery()) {
        row.next();
        String[] missing = (String[]) row.getArray(2).getArray();
        if (missing.length > 0) {
          throw refuse("role " + row.getString(1) + " lacks " + String.join(", ", missing)
              + ": published rows could not be removed and would be sent again and again; grant"
              + " them (see the README's grants)");
        }
      }
    }
  }

  private static void verifyOrder(Connection connection, String schema, String table)
      throws SQLException {
    String query =
        "SELECT s.seqcache, s.seqcycle,"
            + " EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(?)"
            + " AND a.attname = 'commit_seq' AND NOT a.attisdropped),"
            + " EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = to_regclass(?)"
            + " AND t.tgname = 'txkafka_outbox_order'),"
            + " (SELECT string_agg(t.tgname, ', ' ORDER BY t.tgname) FROM pg_trigger t"
            + " WHERE t.tgrelid = to_regclass(?) AND t.tgname LIKE 'txkafka\\_outbox\\_%'"
            + " AND t.tgenabled IN ('D', 'R')),"
            + " to_regprocedure(? || '.txkafka_outbox_order_at_insert()') IS NOT NULL"
            + " AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = to_regclass(?)"
            + " AND t.tgname = 'txkafka_outbox_order_at_insert')"
            + " FROM pg_sequence s WHERE s.seqrelid = to_regclass(?)";
    try (PreparedStatement statement = connection.prepareStatement(query)) {
      statement.setString(1, table);
      statement.setString(2, table);
      statement.setString(3, table);
      statement.setString(4, SqlIdentifiers.quoted("schema", schema));
      statement.setString(5, table);
      statement.setString(6, table.replace(".txkafka_outbox", ".txkafka_outbox_id_seq"));
      try (ResultSet row = statement.executeQuery()) {
        if (!row.next()) {
          throw refuse(table + " or its id sequence does not exist: apply the txkafka migrations"
              + " (TxKafkaMigrations.migrate) to schema " + schema);
        }
        long cache = row.getLong(1);
        boolean cycle = row.getBoolean(2);
        boolean oldLayout = row.getBoolean(3);
        boolean orderTrigger = row.getBoolean(4);
        String disabled = row.getString(5);
        boolean insertTriggerMissing = row.getBoolean(6);
        if (oldLayout || !orderTrigger) {
          throw refuse(table + " is older than txkafka migration 1.0.3 (no commit-time order"
              + " trigger): apply the txkafka migrations (TxKafkaMigrations.migrate) before"
              + " starting this relay");
        }
        if (disabled != null) {
          throw refuse(table + " has disabled triggers (" + disabled + "; disabled, or enabled"
              + " for replica sessions only, which the application's writers are not): rows"
              + " written meanwhile commit without per-key order; enable them (ALTER TABLE "
              + table + " ENABLE TRIGGER ALL)");
        }
        if (insertTriggerMissing) {
          throw refuse(table + " has no trigger txkafka_outbox_order_at_insert although migration"
              + " 1.0.6 created its function: SERIALIZABLE writers would commit unordered; apply"
              + " the txkafka migrations again (repair) or restore the trigger");
        }
        if (cache != 1 || cycle) {
          throw refuse(table + "'s id sequence has CACHE " + cache + (cycle ? " and CYCLE" : "")
              + ": per-key order needs CACHE 1 NO CYCLE (ALTER SEQUENCE "
              + table.replace(".txkafka_outbox", ".txkafka_outbox_id_seq") + " CACHE 1 NO CYCLE)");
        }
      }
    }
  }

  private static SQLException refuse(String message) {
    return new SQLException("the relay will not publish: " + message, NOT_READY);
  }
}
