package org.txkafka.inbox.internal;

import java.sql.Array;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Timestamp;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.txkafka.SqlIdentifiers;
import org.txkafka.inbox.DeadLetter;
import org.txkafka.inbox.InboxRecord;

/**
 * Every SQL statement of the inbox, on a connection the caller's transaction owns. Never commits,
 * rolls back or changes auto-commit. Thread-safe (no state besides the statement texts).
 *
 * <p>Invariants it carries: {@link #advance} is the fencing compare-and-set. The owner epoch must
 * be the current one, and the stored offset must be exactly where this batch continues the fetch
 * stream (the offset after the previous record fetched, or the position the consumer seeked to;
 * null when nothing was stored yet): so no commit can ever skip records, whatever happened to
 * in-memory batches, and none can move the offset backwards. The one other accepted case is the
 * stored offset already equal to the batch's next offset: a retry of a batch whose commit did
 * succeed although the client saw an error (its inbox rows are all duplicates then). It takes the
 * offset row's lock, so a concurrent {@link #claim} is serialised behind a committing batch. A
 * transaction that stored an offset commits only after {@link #seal} ran in it (a deferred trigger,
 * migration 1.0.5): a commit before that, a handler's, is refused and rolls the offset back.
 */
public final class InboxSql {

  /** SQLState of a unique violation: a message id already in the inbox. */
  static final String UNIQUE_VIOLATION = "23505";

  /** SQLState of a statement sent after an error in the same transaction. */
  public static final String IN_FAILED_TRANSACTION = "25P02";

  /** How long a claim waits for the offset row's lock before it retries. */
  static final long CLAIM_LOCK_TIMEOUT_MILLIS = 5000;

  /** A claim of a partition: the stored next offset (null if none yet) and the new epoch. */
  /**
   * A claim's result: the stored offset (null: none), the new owner epoch, and how many records
   * the new owner must apply one at a time (see {@link #claim}).
   */
  public record Claim(Long nextOffset, long epoch, int guardedRecords) {}

  private final String claim;
  private final String markBatch;
  private final String markStarted;
  private final String withdrawStart;
  private final String advance;
  private final String seal;
  private final String insertProcessed;
  private final String insertProcessedAllNew;
  private final String insertDeadLettered;
  private final String insertDeadLetter;
  private final String dropReplayedDeadLetter;
  private final String pendingDeadLetters;
  private final String lockDeadLetter;
  private final String markDeadLetterReplayed;
  private final String markInboxReplayed;
  private final String deleteExpired;
  private final String storedOffset;
  private final String alreadyStored;
  private final String claimSettings;
  private final String schema;

  /**
   * What keeps this session from ever running the inbox, each as a sentence naming the fix; empty
   * when nothing does. Read-only transactions (a hot standby, {@code default_transaction_read_only}
   * on the role or database), no txkafka inbox tables in the schema (never migrated, or the inbox's
   * schema setting names another one) and missing privileges on them are not outages: the inbox
   * would retry its claims for ever and apply nothing. (Columns of a later migration missing are
   * waited out instead: a rolling upgrade migrates while members run.)
   */
  public java.util.List<String> setupProblems(Connection connection) throws SQLException {
    java.util.List<String> problems = new java.util.ArrayList<>();
    try (java.sql.Statement statement = connection.createStatement();
        ResultSet rows =
            statement.executeQuery(
                "SELECT current_setting('transaction_read_only') = 'on', pg_is_in_recovery(),"
                    + " current_user")) {
      rows.next();
      if (rows.getBoolean(2)) {
        problems.add(
            "the server is a standby in recovery (read-only): point the inbox's data source at the"
                + " primary");
      } else if (rows.getBoolean(1)) {
        problems.add(
            "transactions of this data source are read-only (default_transaction_read_only is on"
                + " for role "
                + rows.getString(3)
                + " or its database): the inbox writes in every transaction");
      }
    }
    try (PreparedStatement statement =
        connection.prepareStatement(
            "SELECT t.name, to_regclass(quote_ident(?) || '.' || t.name) IS NOT NULL,"
                + " array(SELECT p.privilege FROM unnest(ARRAY['SELECT', 'INSERT', 'UPDATE',"
                + " 'DELETE']) AS p(privilege) WHERE to_regclass(quote_ident(?) || '.' || t.name)"
                + " IS NOT NULL AND NOT has_table_privilege(to_regclass(quote_ident(?) || '.' ||"
                + " t.name), p.privilege) AND NOT (t.name = 'txkafka_inbox_offset' AND p.privilege"
                + " = 'DELETE')), current_user FROM unnest(ARRAY['txkafka_inbox_offset',"
                + " 'txkafka_inbox', 'txkafka_inbox_dead_letter']) WITH ORDINALITY AS t(name, n)"
                + " ORDER BY t.n")) {
      statement.setString(1, schema);
      statement.setString(2, schema);
      statement.setString(3, schema);
      try (ResultSet rows = statement.executeQuery()) {
        while (rows.next()) {
          String table = schema + "." + rows.getString(1);
          if (!rows.getBoolean(2)) {
            problems.add(
                "table "
                    + table
                    + " does not exist: run the txkafka migrations on schema "
                    + schema
                    + " (TxKafkaMigrations.migrate), or set the inbox's schema to the one they ran"
                    + " on");
            break;
          }
          String[] missing = (String[]) rows.getArray(3).getArray();
          if (missing.length > 0) {
            problems.add(
                "role "
                    + rows.getString(4)
                    + " lacks "
                    + String.join(", ", missing)
                    + " on "
                    + table
                    + " (see the README's grants)");
          }
        }
      }
    }
    return problems;
  }

  /** Statements for the tables in {@code schema}. */
  public InboxSql(String schema) {
    this(schema, java.time.Duration.ZERO);
  }

  /**
   * Statements for the tables in {@code schema}; each transaction that locks a partition's offset
   * row (a batch, a mark, a claim) sets {@code idle_in_transaction_session_timeout} to {@code
   * transactionIdleTimeout} (zero: not at all).
   */
  public InboxSql(String schema, java.time.Duration transactionIdleTimeout) {
    this.schema = schema;
    String s = SqlIdentifiers.quoted("schema", schema);
    String offsets = s + ".txkafka_inbox_offset";
    String inbox = s + ".txkafka_inbox";
    String deadLetters = s + ".txkafka_inbox_dead_letter";
    claim =
        "INSERT INTO "
            + offsets
            + " AS o (consumer_group, topic, kafka_partition, next_offset, owner_epoch, owner_id,"
            + " updated_at) VALUES (?, ?, ?, NULL, 1, ?, now())"
            + " ON CONFLICT (consumer_group, topic, kafka_partition) DO UPDATE"
            + " SET owner_epoch = o.owner_epoch + 1, owner_id = EXCLUDED.owner_id,"
            + " updated_at = now()"
            // How many records the new owner applies one at a time (migration 1.0.4): those of a
            // batch started from the stored offset (null: none yet) that never committed, else the
            // record started that way from the stored offset that never completed, else none.
            + " RETURNING next_offset, owner_epoch,"
            + " CASE WHEN batch_records IS NOT NULL"
            + " AND batch_offset IS NOT DISTINCT FROM next_offset THEN batch_records"
            + " WHEN started_count > 0"
            + " AND started_offset IS NOT DISTINCT FROM next_offset THEN 1 ELSE 0 END,"
            // Migration 1.0.5's column, read for no other reason than to make a claim fail (and be
            // retried) until that migration ran: a member that claimed without it would leave
            // batch and start marks for work whose offset it cannot store (every commit refused),
            // and enough ownership changes would dead-letter a record that never ran.
            + " commit_xid";
    // Marks are committed before the work they announce, asynchronously: they must outlive the
    // consumer process, not a crash of PostgreSQL. Like every statement that locks a partition's
    // row, a mark also bounds how long its transaction may then sit idle: a member frozen before
    // the mark's COMMIT must not keep the next owner's claim waiting for as long as it is frozen.
    // One FROM item that sets it, for the first statement of each such transaction: no extra
    // round trip.
    String idleGuardItem =
        transactionIdleTimeout.isZero()
            ? null
            : "(SELECT set_config('idle_in_transaction_session_timeout', '"
                + transactionIdleTimeout.toMillis()
                + "', true)) AS idle_guard";
    String asyncCommit =
        " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async"
            + (idleGuardItem == null ? "" : ", " + idleGuardItem);
    claimSettings =
        "SET LOCAL lock_timeout = '"
            + CLAIM_LOCK_TIMEOUT_MILLIS
            + "ms'"
            + (transactionIdleTimeout.isZero()
                ? ""
                : "; SET LOCAL idle_in_transaction_session_timeout = '"
                    + transactionIdleTimeout.toMillis()
                    + "ms'");
    markBatch =
        "UPDATE "
            + offsets
            + " SET batch_offset = ?, batch_records = ?"
            + asyncCommit
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND owner_epoch = ?";
    markStarted =
        "UPDATE "
            + offsets
            + " SET started_count = CASE WHEN started_token = ? THEN started_count"
            + " WHEN started_count > 0 AND started_offset IS NOT DISTINCT FROM ?"
            + " THEN started_count + 1 ELSE 1 END,"
            + " started_offset = ?, started_token = ?"
            + asyncCommit
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND owner_epoch = ?"
            + " RETURNING started_count";
    withdrawStart =
        "UPDATE "
            + offsets
            + " SET started_count = started_count - 1"
            + asyncCommit
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND owner_epoch = ?"
            + " AND started_token = ? AND started_count > 0";
    // The first statement of every batch transaction also bounds how long the transaction may sit
    // idle (a frozen member holding this row's lock), in the same round trip.
    String idleGuard = idleGuardItem == null ? "" : " FROM " + idleGuardItem;
    advance =
        "UPDATE "
            + offsets
            + " SET next_offset = ?, updated_at = now(), commit_xid = txid_current()"
            + idleGuard
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND owner_epoch = ?"
            + " AND next_offset IS NOT DISTINCT FROM ?"
            + " RETURNING commit_xid";
    alreadyStored =
        "SELECT 1 FROM "
            + offsets
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ? AND owner_epoch = ?"
            + " AND next_offset = ?";
    seal = "SELECT set_config('txkafka.inbox_sealed_xid', txid_current()::text, true)";
    insertProcessed =
        "INSERT INTO "
            + inbox
            + " (consumer_group, message_id, topic, kafka_partition, kafka_offset, received_at)"
            + " SELECT ?, u.message_id, ?, ?, u.kafka_offset, ?"
            + " FROM unnest(?::text[], ?::bigint[]) AS u(message_id, kafka_offset)"
            + " ON CONFLICT (consumer_group, message_id) DO NOTHING RETURNING message_id";
    insertProcessedAllNew =
        insertProcessed.substring(0, insertProcessed.indexOf(" ON CONFLICT"));
    insertDeadLettered =
        "INSERT INTO "
            + inbox
            + " (consumer_group, message_id, topic, kafka_partition, kafka_offset, status,"
            + " attempts, last_error, received_at) VALUES (?, ?, ?, ?, ?, 'DEAD_LETTERED', ?, ?, ?)"
            + " ON CONFLICT (consumer_group, message_id) DO NOTHING";
    insertDeadLetter =
        "INSERT INTO "
            + deadLetters
            + " (consumer_group, message_id, topic, kafka_partition, kafka_offset, record_key,"
            + " payload, header_names, header_values, attempts, last_error, dead_at)"
            + " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    dropReplayedDeadLetter =
        "DELETE FROM "
            + deadLetters
            + " WHERE consumer_group = ? AND message_id = ? AND replayed_at IS NOT NULL";
    String columns =
        "SELECT id, message_id, topic, kafka_partition, kafka_offset, record_key, payload,"
            + " header_names, header_values, attempts, last_error, dead_at, replayed_at FROM "
            + deadLetters;
    pendingDeadLetters =
        columns
            + " WHERE consumer_group = ? AND replayed_at IS NULL AND id > ? ORDER BY id LIMIT ?";
    lockDeadLetter =
        columns + " WHERE consumer_group = ? AND id = ? AND replayed_at IS NULL FOR UPDATE";
    markDeadLetterReplayed =
        "UPDATE "
            + deadLetters
            + " SET replayed_at = ?, replay_xid = txid_current() WHERE id = ? RETURNING replay_xid";
    markInboxReplayed =
        "UPDATE "
            + inbox
            + " SET status = 'REPLAYED', received_at = ?"
            + " WHERE consumer_group = ? AND message_id = ?";
    deleteExpired =
        "DELETE FROM "
            + inbox
            + " WHERE (consumer_group, message_id) IN ("
            + "SELECT consumer_group, message_id FROM "
            + inbox
            + " WHERE consumer_group = ? AND received_at < ? AND status <> 'DEAD_LETTERED'"
            + " LIMIT ? FOR UPDATE SKIP LOCKED)";
    storedOffset =
        "SELECT next_offset FROM "
            + offsets
            + " WHERE consumer_group = ? AND topic = ? AND kafka_partition = ?";
  }

  /**
   * Bumps the owner epoch of a partition (creating its row) and returns the stored offset. Waits at
   * most {@value #CLAIM_LOCK_TIMEOUT_MILLIS} ms for the row lock (then SQLState 55P03). If a batch
   * was marked ({@link #markBatch}) from the stored offset and never committed, its previous owner
   * died or lost the partition while applying it: the claim returns that batch's number of records,
   * which the new owner applies one at a time, each after {@link #markStarted}; if a record so
   * started from the stored offset never completed, it returns 1.
   */
  public Claim claim(
      Connection connection, String group, String topic, int partition, String ownerId)
      throws SQLException {
    try (java.sql.Statement statement = connection.createStatement()) {
      // A batch of the previous owner holds the row lock until it commits (then this claim sees
      // its offset). Give up after a while, so that the caller can notice a revocation meanwhile
      // and retry (55P03 is transient).
      // The claim's transaction holds the row lock until it commits: bounded like a batch's.
      statement.execute(claimSettings);
    }
    try (PreparedStatement statement = connection.prepareStatement(claim)) {
      statement.setString(1, group);
      statement.setString(2, topic);
      statement.setInt(3, partition);
      statement.setString(4, ownerId);
      try (ResultSet rows = statement.executeQuery()) {
        rows.next();
        long next = rows.getLong(1);
        Long nextOffset = rows.wasNull() ? null : next;
        return new Claim(nextOffset, rows.getLong(2), rows.getInt(3));
      }
    }
  }

  /**
   * Records, in the caller's transaction (which must commit before the batch runs), that a batch
   * of {@code records} records continuing from the stored offset {@code from} (null: none stored
   * yet) is being started.
   *
   * @return false if {@code epoch} is no longer the owner epoch (fenced)
   */
  public boolean markBatch(
      Connection connection,
      String group,
      String topic,
      int partition,
      long epoch,
      Long from,
      int records)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(markBatch)) {
      setNullableLong(statement, 1, from);
      statement.setInt(2, records);
      statement.setString(3, group);
      statement.setString(4, topic);
      statement.setInt(5, partition);
      statement.setLong(6, epoch);
      return statement.executeUpdate() == 1;
    }
  }

  private static void setNullableLong(PreparedStatement statement, int index, Long value)
      throws SQLException {
    if (value == null) {
      statement.setNull(index, java.sql.Types.BIGINT);
    } else {
      statement.setLong(index, value);
    }
  }

  /**
   * Records, in the caller's transaction (which must commit before the handler runs), that the
   * record continuing from the stored offset {@code from} (null: none stored yet) is being started
   * one at a time, after a lost batch. A retry with the same {@code token} (its first try may have
   * committed without the caller seeing it) does not count again.
   *
   * @return how many times that record has now been started so, this start included; -1
   *     if {@code epoch} is no longer the owner epoch (fenced)
   */
  public int markStarted(
      Connection connection,
      String group,
      String topic,
      int partition,
      long epoch,
      Long from,
      String token)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(markStarted)) {
      statement.setString(1, token);
      setNullableLong(statement, 2, from);
      setNullableLong(statement, 3, from);
      statement.setString(4, token);
      statement.setString(5, group);
      statement.setString(6, topic);
      statement.setInt(7, partition);
      statement.setLong(8, epoch);
      try (ResultSet rows = statement.executeQuery()) {
        return rows.next() ? rows.getInt(1) : -1;
      }
    }
  }

  /**
   * Takes back the start {@link #markStarted} counted with {@code token}, when that start ended
   * without the process dying (the handler did not run to an outcome). A no-op once {@code epoch}
   * is no longer the owner epoch or another start was marked since.
   *
   * @return whether the start was withdrawn
   */
  public boolean withdrawStart(
      Connection connection, String group, String topic, int partition, long epoch, String token)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(withdrawStart)) {
      statement.setString(1, group);
      statement.setString(2, topic);
      statement.setInt(3, partition);
      statement.setLong(4, epoch);
      statement.setString(5, token);
      return statement.executeUpdate() == 1;
    }
  }

  /**
   * Stores {@code nextOffset} if {@code epoch} is still the owner epoch and the stored offset is
   * exactly {@code expected} (where this batch continues); takes the row lock. The transaction must
   * then be {@link #seal sealed} before it commits (migration 1.0.5): its commit is refused
   * otherwise.
   *
   * @return the transaction's id, to {@link #seal} it with; null if not: fenced (another owner
   *     claimed the partition, or the stored offset is elsewhere), or this very batch already
   *     committed (see {@link #alreadyStored})
   */
  public Long advance(
      Connection connection,
      String group,
      String topic,
      int partition,
      long epoch,
      Long expected,
      long next)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(advance)) {
      statement.setLong(1, next);
      statement.setString(2, group);
      statement.setString(3, topic);
      statement.setInt(4, partition);
      statement.setLong(5, epoch);
      if (expected == null) {
        statement.setNull(6, java.sql.Types.BIGINT);
      } else {
        statement.setLong(6, expected);
      }
      try (ResultSet rows = statement.executeQuery()) {
        return rows.next() ? rows.getLong(1) : null;
      }
    }
  }

  /**
   * Seals the transaction that {@link #advance} returned {@code xid} for, as its last statement
   * before the commit: the commit is refused without it (the deferred trigger of migration 1.0.5),
   * so that a commit before this point (a handler's) rolls back the offset and the inbox rows.
   *
   * @return false if this is no longer that transaction: it was ended (committed or rolled back)
   *     since the offset was stored, and these statements run in another one
   * @throws SQLException with SQLState {@value #IN_FAILED_TRANSACTION} if the transaction aborted
   */
  /**
   * The commit status of transaction {@code xid} (a {@code txid_current()} value): {@code
   * committed}, {@code aborted}, {@code in progress}, or null when it is too old to be known.
   */
  public String transactionStatus(Connection connection, long xid) throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement("SELECT txid_status(?)")) {
      statement.setLong(1, xid);
      try (ResultSet rows = statement.executeQuery()) {
        rows.next();
        return rows.getString(1);
      }
    }
  }

  public boolean seal(Connection connection, long xid) throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(seal);
        ResultSet rows = statement.executeQuery()) {
      rows.next();
      return Long.toString(xid).equals(rows.getString(1));
    }
  }

  /**
   * Inserts PROCESSED inbox rows for the given message ids.
   *
   * <p>The common case, no duplicate, is one plain multi-row INSERT under a savepoint: an INSERT
   * ... ON CONFLICT DO NOTHING RETURNING costs about twice as much per row (speculative insertion,
   * every id sent back). A unique violation (SQLState {@value #UNIQUE_VIOLATION}: a message id
   * already in the inbox, or repeated within the list) rolls back to the savepoint, which undoes
   * only that INSERT, and the rows are inserted again with ON CONFLICT DO NOTHING, which returns
   * the new ids. The savepoint is left open: it ends with the transaction.
   *
   * @return the ids that were new; the others are duplicates (already in the inbox, or repeated
   *     within the list)
   */
  public Set<String> insertProcessed(
      Connection connection,
      String group,
      String topic,
      int partition,
      List<String> messageIds,
      List<Long> offsets,
      Instant receivedAt)
      throws SQLException {
    Savepoint beforeInsert = connection.setSavepoint();
    try (PreparedStatement statement = connection.prepareStatement(insertProcessedAllNew)) {
      bindProcessed(connection, statement, group, topic, partition, messageIds, offsets, receivedAt);
      statement.executeUpdate();
      return new HashSet<>(messageIds);
    } catch (SQLException e) {
      if (!UNIQUE_VIOLATION.equals(e.getSQLState())) {
        throw e;
      }
      connection.rollback(beforeInsert);
    }
    Set<String> fresh = new HashSet<>();
    try (PreparedStatement statement = connection.prepareStatement(insertProcessed)) {
      bindProcessed(connection, statement, group, topic, partition, messageIds, offsets, receivedAt);
      try (ResultSet rows = statement.executeQuery()) {
        while (rows.next()) {
          fresh.add(rows.getString(1));
        }
      }
    }
    return fresh;
  }

  private static void bindProcessed(
      Connection connection,
      PreparedStatement statement,
      String group,
      String topic,
      int partition,
      List<String> messageIds,
      List<Long> offsets,
      Instant receivedAt)
      throws SQLException {
    statement.setString(1, group);
    statement.setString(2, topic);
    statement.setInt(3, partition);
    statement.setTimestamp(4, Timestamp.from(receivedAt));
    Array ids = connection.createArrayOf("text", messageIds.toArray(new String[0]));
    Array offsetArray = connection.createArrayOf("bigint", offsets.toArray(new Long[0]));
    statement.setArray(5, ids);
    statement.setArray(6, offsetArray);
  }

  /**
   * Inserts a DEAD_LETTERED inbox row and the dead letter with the whole record. A dead letter of
   * the same message id that was replayed earlier (its inbox row since removed by retention, so the
   * id counts as new again) is replaced: left there, it made the new one a silent no-op, and the
   * record was reported dead-lettered while stored nowhere. A pending one cannot exist here (its
   * inbox row is kept until it is replayed); if it did, the unique constraint fails the
   * transaction rather than lose the record.
   *
   * @return false if the message id was already in the inbox (a duplicate: nothing inserted)
   */
  public boolean insertDeadLetter(
      Connection connection,
      String group,
      InboxRecord record,
      int attempts,
      String error,
      Instant at)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(insertDeadLettered)) {
      statement.setString(1, group);
      statement.setString(2, record.messageId());
      statement.setString(3, record.topic());
      statement.setInt(4, record.partition());
      statement.setLong(5, record.offset());
      statement.setInt(6, attempts);
      statement.setString(7, Failures.truncate(error));
      statement.setTimestamp(8, Timestamp.from(at));
      if (statement.executeUpdate() == 0) {
        return false;
      }
    }
    try (PreparedStatement statement = connection.prepareStatement(dropReplayedDeadLetter)) {
      statement.setString(1, group);
      statement.setString(2, record.messageId());
      statement.executeUpdate();
    }
    try (PreparedStatement statement = connection.prepareStatement(insertDeadLetter)) {
      statement.setString(1, group);
      statement.setString(2, record.messageId());
      statement.setString(3, record.topic());
      statement.setInt(4, record.partition());
      statement.setLong(5, record.offset());
      statement.setBytes(6, record.key());
      statement.setBytes(7, record.value());
      List<String> names = new ArrayList<>();
      List<byte[]> values = new ArrayList<>();
      for (Header header : record.headers()) {
        names.add(Failures.textSafe(header.key()));
        values.add(header.value());
      }
      statement.setArray(8, connection.createArrayOf("text", names.toArray(new String[0])));
      statement.setArray(9, connection.createArrayOf("bytea", values.toArray(new byte[0][])));
      statement.setInt(10, attempts);
      statement.setString(11, Failures.truncate(error));
      statement.setTimestamp(12, Timestamp.from(at));
      statement.executeUpdate();
    }
    return true;
  }

  /** Pending dead letters of {@code group} with an id above {@code afterId}, oldest first. */
  public List<DeadLetter> pendingDeadLetters(
      Connection connection, String group, long afterId, int limit) throws SQLException {
    List<DeadLetter> result = new ArrayList<>();
    try (PreparedStatement statement = connection.prepareStatement(pendingDeadLetters)) {
      statement.setString(1, group);
      statement.setLong(2, afterId);
      statement.setInt(3, limit);
      try (ResultSet rows = statement.executeQuery()) {
        while (rows.next()) {
          result.add(deadLetter(rows));
        }
      }
    }
    return result;
  }

  /** Locks pending dead letter {@code id} of {@code group}; null if there is none. */
  public DeadLetter lockPendingDeadLetter(Connection connection, String group, long id)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(lockDeadLetter)) {
      statement.setString(1, group);
      statement.setLong(2, id);
      try (ResultSet rows = statement.executeQuery()) {
        return rows.next() ? deadLetter(rows) : null;
      }
    }
  }

  /**
   * Marks a dead letter and its inbox row replayed; the row's dedup window starts again at {@code
   * at}. Runs before the handler: the transaction must then be {@link #seal sealed} with the
   * returned id before it commits (migration 1.0.8), so that a handler's own commit is refused.
   *
   * @return the transaction's id, to {@link #seal} it with
   */
  public long markReplayed(Connection connection, String group, DeadLetter deadLetter, Instant at)
      throws SQLException {
    long xid;
    try (PreparedStatement statement = connection.prepareStatement(markDeadLetterReplayed)) {
      statement.setTimestamp(1, Timestamp.from(at));
      statement.setLong(2, deadLetter.id());
      try (ResultSet rows = statement.executeQuery()) {
        if (!rows.next()) {
          throw new IllegalStateException("dead letter " + deadLetter.id() + " is gone");
        }
        xid = rows.getLong(1);
      }
    }
    try (PreparedStatement statement = connection.prepareStatement(markInboxReplayed)) {
      statement.setTimestamp(1, Timestamp.from(at));
      statement.setString(2, group);
      statement.setString(3, deadLetter.record().messageId());
      statement.executeUpdate();
    }
    return xid;
  }

  /**
   * Deletes at most {@code limit} inbox rows of {@code group} received before {@code cutoff}, never
   * rows of pending dead letters; skips rows locked by running transactions.
   *
   * @return how many were deleted
   */
  public int deleteExpired(Connection connection, String group, Instant cutoff, int limit)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(deleteExpired)) {
      statement.setString(1, group);
      statement.setTimestamp(2, Timestamp.from(cutoff));
      statement.setInt(3, limit);
      return statement.executeUpdate();
    }
  }

  /**
   * Whether {@code epoch} is still the owner epoch and the stored offset is already {@code next}:
   * after {@link #advance} refused a batch ending at {@code next}, this says the batch committed
   * before (a retry after a commit whose outcome the client did not learn, such as a connection
   * lost during COMMIT), rather than that the member was fenced. Within one epoch only this member
   * commits, each batch continuing the last, so the records up to {@code next} were applied. The
   * retry must not run them again: their inbox rows may have expired meanwhile (retention), and
   * then they would not be recognised as duplicates.
   */
  public boolean alreadyStored(
      Connection connection, String group, String topic, int partition, long epoch, long next)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(alreadyStored)) {
      statement.setString(1, group);
      statement.setString(2, topic);
      statement.setInt(3, partition);
      statement.setLong(4, epoch);
      statement.setLong(5, next);
      try (ResultSet rows = statement.executeQuery()) {
        return rows.next();
      }
    }
  }

  /** The stored next offset of a partition, or null. */
  public Long storedOffset(Connection connection, String group, String topic, int partition)
      throws SQLException {
    try (PreparedStatement statement = connection.prepareStatement(storedOffset)) {
      statement.setString(1, group);
      statement.setString(2, topic);
      statement.setInt(3, partition);
      try (ResultSet rows = statement.executeQuery()) {
        if (!rows.next()) {
          return null;
        }
        long next = rows.getLong(1);
        return rows.wasNull() ? null : next;
      }
    }
  }

  private static DeadLetter deadLetter(ResultSet rows) throws SQLException {
    Headers headers = new RecordHeaders();
    Array names = rows.getArray(8);
    Array values = rows.getArray(9);
    if (names != null && values != null) {
      String[] headerNames = (String[]) names.getArray();
      byte[][] headerValues = (byte[][]) values.getArray();
      for (int i = 0; i < headerNames.length; i++) {
        headers.add(headerNames[i], headerValues[i]);
      }
    }
    ((RecordHeaders) headers).setReadOnly();
    Timestamp deadAt = rows.getTimestamp(12);
    Timestamp replayedAt = rows.getTimestamp(13);
    InboxRecord record =
        new InboxRecord(
            rows.getString(3),
            rows.getInt(4),
            rows.getLong(5),
            rows.getBytes(6),
            rows.getBytes(7),
            headers,
            rows.getString(2),
            deadAt.toInstant());
    return new DeadLetter(
        rows.getLong(1),
        record,
        rows.getInt(10),
        rows.getString(11),
        deadAt.toInstant(),
        replayedAt == null ? null : replayedAt.toInstant());
  }
}
