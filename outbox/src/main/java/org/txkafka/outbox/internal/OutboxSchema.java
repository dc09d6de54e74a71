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
 * renumbered at commit could then take an id below a row of its key that committed first.
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
    String table = SqlIdentifiers.quoted("schema", schema) + ".txkafka_outbox";
    String query =
        "SELECT s.seqcache, s.seqcycle,"
            + " EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass(?)"
            + " AND a.attname = 'commit_seq' AND NOT a.attisdropped),"
            + " EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = to_regclass(?)"
            + " AND t.tgname = 'txkafka_outbox_order')"
            + " FROM pg_sequence s WHERE s.seqrelid = to_regclass(?)";
    try (PreparedStatement statement = connection.prepareStatement(query)) {
      statement.setString(1, table);
      statement.setString(2, table);
      statement.setString(3, table.replace(".txkafka_outbox", ".txkafka_outbox_id_seq"));
      try (ResultSet row = statement.executeQuery()) {
        if (!row.next()) {
          throw refuse(table + " or its id sequence does not exist: apply the txkafka migrations"
              + " (TxKafkaMigrations.migrate) to schema " + schema);
        }
        long cache = row.getLong(1);
        boolean cycle = row.getBoolean(2);
        boolean oldLayout = row.getBoolean(3);
        boolean orderTrigger = row.getBoolean(4);
        if (oldLayout || !orderTrigger) {
          throw refuse(table + " is older than txkafka migration 1.0.3 (no commit-time order"
              + " trigger): apply the txkafka migrations (TxKafkaMigrations.migrate) before"
              + " starting this relay");
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
