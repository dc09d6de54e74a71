package org.txkafka.outbox.internal;

import org.txkafka.SqlIdentifiers;

/**
 * Every statement the relay and the admin API run, for one schema. The schema is validated and
 * quoted; all values are bound parameters.
 */
final class OutboxSql {
  /**
   * The channel of the notification the order trigger sends at commit while a relay waits
   * (payload: the schema).
   */
  static final String CHANNEL = "txkafka_outbox";

  private static final String COLUMNS =
      "id, message_id, share, topic, kafka_partition, record_key, payload, header_names,"
          + " header_values, attempts";

  /** NOT IN over a sub-select, which PostgreSQL hashes once even in a generic plan. */
  private static final String IN_FLIGHT_LEFT_OUT = " AND id NOT IN (SELECT unnest(?::bigint[]))";

  final String schema;
  final String table;
  final String archiveTable;
  final String idSequence;

  OutboxSql(String schema) {
    this.schema = SqlIdentifiers.requireIdentifier("schema", schema);
    String quoted = SqlIdentifiers.quoted("schema", schema);
    this.table = quoted + ".txkafka_outbox";
    this.archiveTable = quoted + ".txkafka_outbox_archive";
    this.idSequence = quoted + ".txkafka_outbox_id_seq";
  }

  /**
   * The rows pending now in the given shares, each share in id order. For one key, id order is the
   * order in which its rows became visible: the commit-time trigger of the migrations gives a
   * transaction's rows new ids if a row of one of its keys with a higher id committed first. No
   * cursor: a row that committed late is simply found by the next round. Shares are read in the
   * order of the array, each through its own range of txkafka_outbox_pending_idx (share, id), and
   * reading stops as soon as the batch is full, so a batch costs about the batch size in index
   * reads whatever the backlog. Order across shares does not matter (a key lives in one share).
   *
   * <p>There is deliberately no outer ORDER BY (it would sort every share's rows again): the
   * LATERAL with its own LIMIT is a nested loop that streams each share's rows in index order. The
   * relay checks that order on every row and falls back to {@link #selectPendingSorted()} if a
   * share's rows ever arrive out of order.
   * Parameters: shares in reading order (int[]), ids to leave out (bigint[]: the rows of a round
   * in flight, not yet removed; a hashed set, so a round's ids cost about one index read each),
   * limit per share, limit in all.
   */
  String selectPending() {
    return "SELECT "
        + COLUMNS
        + " FROM unnest(?::int[]) AS wanted(wanted_share) CROSS JOIN LATERAL (SELECT * FROM "
        + table
        + " WHERE share = wanted.wanted_share AND parked_at IS NULL"
        + IN_FLIGHT_LEFT_OUT
        + " ORDER BY id LIMIT ?) pending LIMIT ?";
  }

  /**
   * Like {@link #selectPending()}, with the order spelled out in SQL: slower with a large backlog
   * (every share's first rows are sorted), used only if the streamed order was ever not kept.
   * Parameters: shares (int[]), ids to leave out (bigint[]), limit per share, limit in all.
   */
  String selectPendingSorted() {
    return "SELECT "
        + COLUMNS
        + " FROM unnest(?::int[]) AS wanted(wanted_share) CROSS JOIN LATERAL (SELECT * FROM "
        + table
        + " WHERE share = wanted.wanted_share AND parked_at IS NULL"
        + IN_FLIGHT_LEFT_OUT
        + " ORDER BY id LIMIT ?) pending ORDER BY id LIMIT ?";
  }

  /** Removes published rows (ids as a bigint array). */
  String deletePublished() {
    return "DELETE FROM " + table + " WHERE id = ANY(?)";
  }

  /**
   * Moves published rows to the archive in one statement, with the partition and offset Kafka
   * gave them (three parallel arrays: id, partition, offset).
   */
  String archivePublished() {
    return "WITH acked AS (SELECT * FROM unnest(?::bigint[], ?::int[], ?::bigint[])"
        + " AS a(id, published_partition, published_offset)),"
        + " moved AS (DELETE FROM "
        + table
        + " o USING acked WHERE o.id = acked.id RETURNING o.*, acked.published_partition,"
        + " acked.published_offset)"
        + " INSERT INTO "
        + archiveTable
        + " (id, message_id, share, topic, kafka_partition, record_key, payload, header_names,"
        + " header_values, created_at, attempts, published_partition, published_offset)"
        + " SELECT id, message_id, share, topic, kafka_partition, record_key, payload,"
        + " header_names, header_values, created_at, attempts + 1, published_partition,"
        + " published_offset FROM moved";
  }

  /** Parks one row with its error (id, parked_at, error). */
  String park() {
    return "UPDATE "
        + table
        + " SET parked_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?";
  }

  /** Counts a failed attempt on a row that stays pending (error, id). */
  String countFailure() {
    return "UPDATE " + table + " SET attempts = attempts + 1, last_error = ? WHERE id = ?";
  }

  /** Pending rows, their oldest creation time and parked rows of the given shares. */
  String stats() {
    return "SELECT count(*) FILTER (WHERE parked_at IS NULL),"
        + " min(created_at) FILTER (WHERE parked_at IS NULL),"
        + " count(*) FILTER (WHERE parked_at IS NOT NULL) FROM "
        + table
        + " WHERE share = ANY(?)";
  }

  String listParked() {
    return "SELECT id, message_id, share, topic, kafka_partition, record_key,"
        + " octet_length(payload), attempts, last_error, created_at, parked_at FROM "
        + table
        + " WHERE parked_at IS NOT NULL ORDER BY id LIMIT ?";
  }

  /**
   * The ids of the rows to replay: one parked row (parameter: id), or every parked row (parameter
   * null). A replay locks for these rows and renumbers only them: a row parked by a relay after
   * this read is not replayed by this call (it would get a new id without its key's lock).
   */
  String parkedIds() {
    return "SELECT id FROM "
        + table
        + " WHERE parked_at IS NOT NULL AND (?::bigint IS NULL OR id = ?) ORDER BY id";
  }

  /**
   * Makes the given parked rows pending again (parameter: their ids) with new ids from the
   * identity sequence, in the order of the old ones: a parked row has left its key's order, and the
   * relay publishes each share in id order, so a replayed row comes after every row of its key
   * pending at the replay. A writer transaction of that key that took a lower id and commits later
   * is renumbered behind it by the commit-time order trigger. A row another replay made pending
   * meanwhile is skipped.
   */
  String replayIds() {
    return "UPDATE "
        + table
        + " o SET parked_at = NULL, id = replayed.new_id FROM (SELECT ordered.id, nextval('"
        + idSequence
        + "') AS new_id FROM (SELECT id FROM "
        + table
        + " WHERE id = ANY(?) AND parked_at IS NOT NULL ORDER BY id) ordered) replayed"
        + " WHERE o.id = replayed.id AND o.parked_at IS NOT NULL";
  }

  /**
   * The distinct keys of the rows to replay (parameter: their ids), to choose how a replay locks,
   * at most 257 counted.
   */
  String countReplayKeys() {
    return "SELECT count(*) FROM (SELECT DISTINCT share, record_key FROM "
        + table
        + " WHERE id = ANY(?) AND record_key IS NOT NULL LIMIT 257) k";
  }

  /**
   * The share locks of the rows to replay, in share order: shared, or (exclusive) above 256 keys,
   * as the commit-time order trigger takes them, before their new ids are drawn, and held until
   * the replay commits: a writer of one of their keys commits either before the replay drew its
   * ids or after the replayed rows are visible (then behind them, renumbered if needed), so a
   * replayed row is published after every row of its key that committed before it. Parameters:
   * exclusive (boolean), schema (the trigger's TG_TABLE_SCHEMA), schema, ids.
   */
  String lockSharesForReplay() {
    return "SELECT count(CASE WHEN ? THEN pg_advisory_xact_lock(hashtextextended(? || '/share/' ||"
        + " s.share, 0))::text ELSE pg_advisory_xact_lock_shared(hashtextextended(? || '/share/'"
        + " || s.share, 0))::text END) FROM (SELECT DISTINCT share FROM "
        + table
        + " WHERE id = ANY(?) AND record_key IS NOT NULL ORDER BY 1) s";
  }

  /**
   * The key locks of the rows to replay (256 keys at most), exclusive, in hash order, after their
   * shares' (shared). Parameters: schema, ids.
   */
  String lockKeysForReplay() {
    return "SELECT count(pg_advisory_xact_lock(k.lock_key)::text) FROM (SELECT DISTINCT"
        + " hashtextextended(? || '/key/' || encode(record_key, 'hex'), 0) AS lock_key FROM "
        + table
        + " WHERE id = ANY(?) AND record_key IS NOT NULL ORDER BY 1) k";
  }

  String discardOne() {
    return "DELETE FROM " + table + " WHERE id = ? AND parked_at IS NOT NULL";
  }

  String countPending() {
    return "SELECT count(*) FROM " + table + " WHERE parked_at IS NULL";
  }

  /**
   * Takes a wake-up slot (session advisory lock, exclusive) without waiting; parameter: the slot's
   * key text, {@code schema/wake/n}, hashed as the order trigger of the migrations hashes it.
   */
  String takeWakeSlot() {
    return "SELECT pg_try_advisory_lock(hashtextextended(?, 0))";
  }

  /** Gives a wake-up slot back (parameter as for {@link #takeWakeSlot()}). */
  String releaseWakeSlot() {
    return "SELECT pg_advisory_unlock(hashtextextended(?, 0))";
  }

  /** Wakes the relays after a replay, as the order trigger does at commit while one waits. */
  String notifyRelays() {
    return "SELECT pg_notify('" + CHANNEL + "', ?)";
  }
}
