package org.txkafka.inbox.internal;

import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.Lock;
import java.util.concurrent.locks.ReadWriteLock;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.BooleanSupplier;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.txkafka.inbox.InboxBatchHandler;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.inbox.InboxRecord;
import org.txkafka.inbox.MalformedMessageIdException;
import org.txkafka.inbox.MessageIdExtractor;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;

/**
 * Applies a batch of one partition's records on a worker thread.
 *
 * <p>Invariants (what may never happen):
 *
 * <ul>
 *   <li>A transaction stores an offset without the inbox rows and handler effects of every record
 *       before it, or the other way round: the offset update, the inbox rows and the handler's
 *       writes are one transaction ({@link TransactionOwner}).
 *   <li>The offset and inbox rows of a batch commit with only part of its handler's effects (a
 *       handler that committed the transaction itself part-way and went on): the last statement
 *       before the commit seals the transaction ({@link InboxSql#seal}), PostgreSQL refuses a
 *       commit that comes before it, and a seal that finds itself in another transaction than the
 *       offset's fails the unit.
 *   <li>A fenced member commits, or a commit skips records: every transaction starts with
 *       {@link InboxSql#advance}, the compare-and-set on the owner epoch and on the stored offset,
 *       which must be exactly where this batch continues the fetch stream (the previous commit's
 *       next offset, threaded through {@code expected}); zero rows rolls back and the partition is
 *       claimed again from the stored offset. So a batch lost in memory (a worker that died, an
 *       interrupt) can never be jumped over.
 *   <li>The handler runs for a message id already in the inbox (the multi-row insert returns only
 *       new ids; a duplicate within one batch runs once). A batch handler gets exactly the new
 *       records of the unit, in offset order, and is not called when there are none.
 *   <li>A handler's failure counts against a record it may not concern: a failed call of a batch
 *       handler on several records counts nothing and makes the unit be applied one record at a
 *       time; a record's handler that fails after other records of its unit (an earlier handler
 *       may have ended the transaction or swallowed an SQL error) counts nothing either, the
 *       records before it are committed first and it runs again as the first of a unit. Only the
 *       failure of a unit's first record is that record's attempt.
 *   <li>Records are applied out of offset order, or a record is skipped: units are consecutive
 *       records from the front; a failed unit is retried from its first record; a record is only
 *       passed over after it was dead-lettered in a committed transaction.
 *   <li>A transient database error counts as a handler attempt or dead-letters anything: it is
 *       retried with backoff for as long as the partition is owned.
 *   <li>A record that ends the process every time it is handled blocks its partition for ever:
 *       every run of records as a batch is announced by a mark committed before it runs ({@link
 *       InboxSql#markBatch}), naming the stored offset it continues from (offsets have gaps); a
 *       claim that finds a marked batch never committed ({@link InboxSql#claim}) makes the new
 *       owner apply its records one per transaction, each after a start mark of its own ({@link
 *       InboxSql#markStarted}); a record whose mark shows {@code maxAttempts} earlier starts is
 *       dead-lettered without running the handler. No handler runs before its mark committed.
 *   <li>A death is charged to a record that did not cause it: a record applied one at a time runs
 *       alone in this process ({@link #isolation}), so the only record whose start can be counted
 *       at a death is the one that was running; and a start that ended with this process alive
 *       and the record not run to an outcome (revoked, closing, a database outage) is withdrawn
 *       ({@link #withdrawStart}) unless another member's claim fenced this one first.
 * </ul>
 */
final class BatchProcessor {
  private static final Logger LOG = LoggerFactory.getLogger(BatchProcessor.class);
  private static final long SLEEP_SLICE_MILLIS = 50;

  /** Headers a dead-letter topic record gets besides the record's own. */
  static final String DLT_MESSAGE_ID = "txkafka-dlt-message-id";

  static final String DLT_SOURCE = "txkafka-dlt-source";
  static final String DLT_ERROR = "txkafka-dlt-error";

  /** The name a blank Kafka header name is forwarded under (the outbox refuses blank names). */
  static final String DLT_BLANK_HEADER = "txkafka-dlt-blank-header-name";

  private final InboxSettings settings;
  private final TransactionOwner transactions;
  private final InboxSql sql;
  private final OutboxWriter writer;
  private final InboxMetrics metrics;
  private final BooleanSupplier closing;

  /**
   * Records applied one at a time after a lost batch hold it exclusively, batches hold it shared:
   * while such a record runs, nothing else of this process applies records.
   */
  private final ReadWriteLock isolation = new ReentrantReadWriteLock(true);

  BatchProcessor(
      InboxSettings settings,
      TransactionOwner transactions,
      InboxSql sql,
      OutboxWriter writer,
      InboxMetrics metrics,
      BooleanSupplier closing) {
    this.settings = settings;
    this.transactions = transactions;
    this.sql = sql;
    this.writer = writer;
    this.metrics = metrics;
    this.closing = closing;
  }

  /** A record with its resolved message id; {@code malformed} is the reason its id is unusable. */
  record Item(InboxRecord record, String malformed) {}

  private sealed interface Outcome permits Committed, Fenced, Inactive, HandlerFailed {}

  private record Committed() implements Outcome {}

  private record Fenced() implements Outcome {}

  private record Inactive() implements Outcome {}

  /** index -1: the failure happened at commit and cannot be tied to one record. */
  private record HandlerFailed(int index, Throwable cause) implements Outcome {}

  /** True while this batch may still commit: same claim, partition ready, inbox not closing. */
  private boolean active(PartitionState state, long epoch) {
    return state.isReady() && state.epoch == epoch && !closing.getAsBoolean();
  }

  /**
   * Applies {@code records} (consecutive records of the state's partition, in offset order) or
   * returns early when the partition is fenced, revoked or the inbox closes.
   */
  void process(
      PartitionState state, List<ConsumerRecord<byte[], byte[]>> records, Long expectedStart)
      throws InterruptedException {
    long epoch = state.epoch;
    // The stored offset each commit of this batch must find: where the previous commit left it.
    Long[] expected = {expectedStart};
    List<Item> items = new ArrayList<>(records.size());
    for (ConsumerRecord<byte[], byte[]> record : records) {
      items.add(resolve(record, settings.messageIdExtractor()));
    }
    Map<Long, Integer> attempts = new HashMap<>();
    Map<Long, Throwable> lastFailure = new HashMap<>();
    int limit = Integer.MAX_VALUE;
    int isolateUntil = 0;
    int position = 0;
    // Whether the records from position on are announced by a committed batch mark.
    boolean batchMarked = false;
    while (position < items.size()) {
      if (!active(state, epoch)) {
        return;
      }
      Item first = items.get(position);
      long firstOffset = first.record().offset();
      String deadReason = first.malformed();
      int tried = attempts.getOrDefault(firstOffset, 0);
      if (deadReason == null && tried >= settings.maxAttempts()) {
        deadReason = Failures.describe(lastFailure.get(firstOffset));
      }
      boolean guarded = state.guardedRecords > 0;
      // A record applied one at a time after a lost batch runs alone in this process (exclusive),
      // so that a death while it runs is charged to it only; batches run side by side (shared).
      Lock lock = guarded ? isolation.writeLock() : isolation.readLock();
      if (!acquire(state, epoch, lock)) {
        return;
      }
      Outcome outcome;
      boolean deadLettering;
      int end = position;
      String startToken = null;
      try {
        if (guarded && deadReason == null) {
          startToken = UUID.randomUUID().toString();
          int starts = markStarted(state, epoch, expected[0], startToken);
          if (starts < 0) {
            return;
          }
          if (starts - 1 >= settings.maxAttempts()) {
            tried = starts - 1;
            Throwable last = lastFailure.get(firstOffset);
            deadReason =
                "started "
                    + tried
                    + " times without completing ("
                    + (last == null
                        ? "the process ended, or the partition was lost, while handling it"
                        : "last handler error: " + Failures.describe(last))
                    + ")";
          }
        }
        deadLettering = deadReason != null;
        if (deadLettering) {
          outcome = deadLetter(state, epoch, expected, first, tried, deadReason);
        } else {
          if (!guarded && !batchMarked) {
            // The records from here on run as batches: announce them, so that a batch lost with
            // the process is known to the next claim.
            if (!markBatch(state, epoch, expected[0], items.size() - position, firstOffset)) {
              return;
            }
            batchMarked = true;
          }
          int unitLimit = guarded || position < isolateUntil ? 1 : limit;
          while (end < items.size()
              && end - position < unitLimit
              && items.get(end).malformed() == null) {
            end++;
          }
          outcome = apply(state, epoch, expected, items.subList(position, end));
        }
      } finally {
        lock.unlock();
      }
      if (startToken != null && (outcome instanceof Inactive || outcome instanceof Fenced)) {
        // This process lives and the record did not run to an outcome (the partition was revoked
        // or the inbox is closing before its handler ran, or a database outage cut it short): no
        // death to charge it with.
        withdrawStart(state, epoch, startToken);
      }
      if (outcome instanceof Committed) {
        long stored = expected[0];
        notifyListener(listener -> listener.onCommitted(state.partition, stored));
        if (guarded) {
          state.guardedRecords--;
        }
        position = deadLettering ? position + 1 : end;
        limit = Integer.MAX_VALUE;
        // The stored offset moved: the records left need a mark of their own.
        batchMarked = false;
        continue;
      }
      if (deadLettering || !(outcome instanceof HandlerFailed failed)) {
        return;
      }
      List<Item> unit = items.subList(position, end);
      if (failed.index() < 0 && unit.size() > 1) {
        // The culprit is unknown (failure at commit, or an aborted transaction): apply the
        // records of this unit one at a time.
        isolateUntil = end;
        continue;
      }
      int index = Math.max(0, failed.index());
      long failingOffset = unit.get(index).record().offset();
      lastFailure.put(failingOffset, failed.cause());
      if (index > 0) {
        // Commit the records before the failing one first; the loop then runs it again as the
        // first of a unit. Not counted yet: a record after others may fail because of them (an
        // earlier handler ended the transaction, or swallowed an SQL error), and only a failure
        // as the first of a unit is surely its own.
        limit = index;
        continue;
      }
      int count = attempts.merge(failingOffset, 1, Integer::sum);
      if (count >= settings.maxAttempts()) {
        continue;
      }
      LOG.warn(
          "handler failed on {} offset {} (message id {}), attempt {} of {}; retrying",
          state.partition,
          failingOffset,
          first.record().messageId(),
          count,
          settings.maxAttempts(),
          failed.cause());
      if (!sleep(state, epoch, backoff(count))) {
        return;
      }
      limit = 1;
    }
  }

  /**
   * Commits, in a transaction of its own, that a batch of {@code records} records continuing from
   * the stored offset {@code from} is being started (retried while the database fails).
   *
   * @return false if the batch must stop (fenced: then the partition is marked so; revoked;
   *     closing)
   */
  private boolean markBatch(
      PartitionState state, long epoch, Long from, int records, long firstOffset)
      throws InterruptedException {
    TopicPartition partition = state.partition;
    return mark(
            state,
            epoch,
            firstOffset,
            connection ->
                sql.markBatch(
                        connection,
                        settings.groupId(),
                        partition.topic(),
                        partition.partition(),
                        epoch,
                        from,
                        records)
                    ? 1
                    : -1)
        > 0;
  }

  /**
   * Commits, in a transaction of its own, that the record continuing from the stored offset {@code
   * from} is being started one at a time after a lost batch, so that a start that ends the process
   * is counted (retried while the database fails; {@code token} makes a retry count once).
   *
   * @return the starts of that record so far, this one included; -1 if the batch must stop
   *     (fenced: then the partition is marked so; revoked; closing)
   */
  private int markStarted(PartitionState state, long epoch, Long from, String token)
      throws InterruptedException {
    TopicPartition partition = state.partition;
    return mark(
        state,
        epoch,
        from == null ? -1 : from,
        connection ->
            sql.markStarted(
                connection,
                settings.groupId(),
                partition.topic(),
                partition.partition(),
                epoch,
                from,
                token));
  }

  /**
   * Withdraws a start counted by {@link #markStarted} that ended without a death. Only with this
   * owner's epoch: once another member claimed the partition (fencing this one), it has read the
   * count, and the start stays counted. Best effort: if the database fails, it stays counted too.
   */
  private void withdrawStart(PartitionState state, long epoch, String token) {
    TopicPartition partition = state.partition;
    try {
      transactions.inTransaction(
          scope ->
              sql.withdrawStart(
                  scope.connection(),
                  settings.groupId(),
                  partition.topic(),
                  partition.partition(),
                  epoch,
                  token));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } catch (Exception e) {
      LOG.info(
          "could not withdraw the start of the record after offset {} of {}, which did not run to"
              + " an outcome; it stays counted: {}",
          state.committedOffset,
          partition,
          e.toString());
    }
  }

  /**
   * Takes {@code lock}, giving up when the partition stops being active. An interrupt flag a
   * handler left set is cleared first, as in {@link #sleep}: whether to stop is decided by {@link
   * #active}.
   */
  private boolean acquire(PartitionState state, long epoch, Lock lock)
      throws InterruptedException {
    Thread.interrupted();
    while (active(state, epoch)) {
      if (lock.tryLock(SLEEP_SLICE_MILLIS, TimeUnit.MILLISECONDS)) {
        return true;
      }
    }
    return false;
  }

  /** A mark statement: a positive result, or -1 when the epoch is no longer the owner's. */
  private interface Mark {
    int run(Connection connection) throws SQLException;
  }

  private int mark(PartitionState state, long epoch, long offset, Mark mark)
      throws InterruptedException {
    int failures = 0;
    while (active(state, epoch)) {
      try {
        int result = transactions.inTransaction(scope -> mark.run(scope.connection()));
        if (result < 0) {
          fenced(state, epoch);
        }
        return result;
      } catch (InterruptedException e) {
        throw e;
      } catch (Exception e) {
        failures++;
        LOG.warn(
            "could not mark the start of work on {} at offset {} (failure {}), retrying: {}",
            state.partition,
            offset,
            failures,
            e.toString());
        if (!sleep(state, epoch, backoff(failures))) {
          return -1;
        }
      }
    }
    return -1;
  }

  /** One transaction for {@code unit}, retried while the database fails transiently. */
  private Outcome apply(PartitionState state, long epoch, Long[] expected, List<Item> unit)
      throws InterruptedException {
    TopicPartition partition = state.partition;
    long next = unit.get(unit.size() - 1).record().offset() + 1;
    int failures = 0;
    while (true) {
      if (!active(state, epoch)) {
        return new Inactive();
      }
      Thread.interrupted(); // a flag a handler left must not fail the next transaction
      boolean[] workDone = {false};
      boolean[] committedBefore = {false};
      int[] counts = new int[2];
      long start = System.nanoTime();
      try {
        Boolean committed =
            transactions.inTransaction(
                scope -> {
                  Connection connection = scope.connection();
                  Long xid = advance(connection, partition, epoch, expected[0], next);
                  if (xid == null) {
                    committedBefore[0] = alreadyStored(connection, partition, epoch, next);
                    scope.setRollbackOnly();
                    return Boolean.FALSE;
                  }
                  List<String> ids = new ArrayList<>(unit.size());
                  List<Long> offsets = new ArrayList<>(unit.size());
                  for (Item item : unit) {
                    ids.add(item.record().messageId());
                    offsets.add(item.record().offset());
                  }
                  Set<String> fresh =
                      sql.insertProcessed(
                          connection,
                          settings.groupId(),
                          partition.topic(),
                          partition.partition(),
                          ids,
                          offsets,
                          settings.clock().instant());
                  TransactionContext context =
                      new TransactionContext(scope, writer, settings.groupId());
                  InboxBatchHandler batchHandler = settings.batchHandler();
                  if (batchHandler != null) {
                    List<InboxRecord> freshRecords = new ArrayList<>(unit.size());
                    for (Item item : unit) {
                      if (fresh.remove(item.record().messageId())) {
                        freshRecords.add(item.record());
                      } else {
                        counts[1]++;
                      }
                    }
                    if (!freshRecords.isEmpty()) {
                      try {
                        batchHandler.handle(Collections.unmodifiableList(freshRecords), context);
                      } catch (OutOfMemoryError | InternalError | UnknownError e) {
                        throw e;
                      } catch (Throwable e) {
                        // Which record the batch handler failed on is unknown: process() then
                        // applies the unit one record at a time, and a single-record unit's
                        // failure is that record's attempt.
                        throw new HandlerException(unit.size() == 1 ? 0 : -1, e);
                      }
                      requireOpen(connection, unit.size() == 1 ? 0 : -1);
                      endOfWork(scope, unit.size() == 1 ? 0 : -1);
                      counts[0] += freshRecords.size();
                    }
                    seal(connection, xid);
                    workDone[0] = true;
                    return Boolean.TRUE;
                  }
                  InboxHandler handler = settings.handler();
                  for (int i = 0; i < unit.size(); i++) {
                    InboxRecord record = unit.get(i).record();
                    if (!fresh.remove(record.messageId())) {
                      counts[1]++;
                      continue;
                    }
                    try {
                      handler.handle(record, context);
                    } catch (OutOfMemoryError | InternalError | UnknownError e) {
                      throw e;
                    } catch (Throwable e) {
                      // Not necessarily this record's fault when it is not the unit's first (an
                      // earlier handler may have ended the transaction, or swallowed an SQL
                      // error): process() counts it only once it fails as a unit's first.
                      throw new HandlerException(i, e);
                    }
                    requireOpen(connection, i);
                    endOfWork(scope, i);
                    counts[0]++;
                  }
                  seal(connection, xid);
                  workDone[0] = true;
                  return Boolean.TRUE;
                });
        if (!committed && committedBefore[0]) {
          committedBefore(partition, expected[0], next);
          state.committedOffset = next;
          expected[0] = next;
          return new Committed();
        }
        if (!committed) {
          fenced(state, epoch);
          return new Fenced();
        }
        state.committedOffset = next;
        expected[0] = next;
        metrics.batchLatency(System.nanoTime() - start);
        if (counts[0] > 0) {
          metrics.processed(partition, counts[0]);
        }
        if (counts[1] > 0) {
          metrics.duplicates(partition, counts[1]);
        }
        return new Committed();
      } catch (HandlerException e) {
        if (TransientErrors.isIdleTimeout(e.getCause())) {
          // Not an outage: a handler of this unit left the transaction idle that long (which one
          // is unknown when it was not the one whose statement found the session ended).
          return new HandlerFailed(e.index, idleTimeout(e.getCause()));
        }
        if (!TransientErrors.isTransient(e.getCause())) {
          return new HandlerFailed(e.index, e.getCause());
        }
        failures++;
        LOG.warn(
            "transient database error in the handler on {}, retrying the batch (failure {})",
            partition,
            failures,
            e.getCause());
      } catch (InterruptedException e) {
        throw e;
      } catch (Exception e) {
        failures++;
        if (TransientErrors.isTransient(e)) {
          LOG.warn(
              "transient database error on {}, retrying the batch (failure {}): {}",
              partition,
              failures,
              e.toString());
        } else if (workDone[0]) {
          return new HandlerFailed(-1, e);
        } else {
          LOG.error(
              "inbox SQL failed on {}, retrying the batch (failure {})", partition, failures, e);
        }
      }
      if (!sleep(state, epoch, backoff(failures))) {
        return new Inactive();
      }
    }
  }

  /** See {@link InboxSql#alreadyStored}. */
  private boolean alreadyStored(
      Connection connection, TopicPartition partition, long epoch, long next) throws SQLException {
    return sql.alreadyStored(
        connection, settings.groupId(), partition.topic(), partition.partition(), epoch, next);
  }

  private static void committedBefore(TopicPartition partition, Long expected, long next) {
    LOG.warn(
        "{}: the offset is already at {}: the earlier try of the transaction for offsets {}..{}"
            + " committed although the database's answer was lost; going on without running it"
            + " again",
        partition,
        next,
        expected == null ? "start" : expected,
        next - 1);
  }

  /** The fencing compare-and-set that opens every batch transaction ({@link InboxSql#advance}). */
  private Long advance(
      Connection connection, TopicPartition partition, long epoch, Long expected, long next)
      throws SQLException {
    return sql.advance(
        connection,
        settings.groupId(),
        partition.topic(),
        partition.partition(),
        epoch,
        expected,
        next);
  }

  /**
   * Seals the batch transaction as its last statement ({@link InboxSql#seal}): PostgreSQL refuses
   * to commit it otherwise. A handler that committed the transaction itself part-way had that
   * commit refused, and so rolled back; this finds out whether the handler ended the transaction
   * (and went on in another, which must not commit either), or left it aborted after an SQL error
   * it caught (its commit would silently roll back the whole batch while this member moved on, and
   * the next batch's offset would skip it). Either counts as a handler failure.
   */
  private void seal(Connection connection, long xid) throws Exception {
    boolean sealed;
    try {
      sealed = sql.seal(connection, xid);
    } catch (SQLException e) {
      if (InboxSql.IN_FAILED_TRANSACTION.equals(e.getSQLState())) {
        throw new HandlerException(-1, abortedByHandler(e));
      }
      if (TransientErrors.isIdleTimeout(e)) {
        throw new HandlerException(-1, idleTimeout(e));
      }
      if (closed(connection)) {
        // A provider that saw its transaction end (a handler committed the session's own
        // transaction) releases the connection with it. Not the cause: the driver's "connection
        // closed" reads as a transient failure, and the batch would be retried for ever.
        IllegalStateException ended = endedByHandler("its connection was closed", null);
        ended.addSuppressed(e);
        throw new HandlerException(-1, ended);
      }
      throw e;
    }
    if (!sealed) {
      // The statements since the handler ended the inbox's transaction (ROLLBACK or COMMIT as SQL,
      // or through an unwrapped connection) run in another transaction: the batch's offset and
      // inbox rows are not in it.
      throw new HandlerException(
          -1,
          endedByHandler(
              "ROLLBACK or COMMIT sent as SQL, or through an unwrapped connection or session",
              null));
    }
  }

  private static IllegalStateException endedByHandler(String how, SQLException cause) {
    return new IllegalStateException(
        "the handler ended the inbox's transaction ("
            + how
            + "): the inbox owns the transaction, throw to roll back",
        cause);
  }

  /**
   * A handler that closed the connection (the driver's, unwrapped) fails where it did so: the
   * driver's "connection closed" error of the next statement would read as a transient database
   * failure, and the batch would be retried for ever.
   */
  private static void requireOpen(Connection connection, int index) throws HandlerException {
    if (closed(connection)) {
      throw new HandlerException(
          index, endedByHandler("the connection was closed when it returned", null));
    }
  }

  /**
   * {@link TransactionScope#endOfWork()} after a handler returned: what fails there (the
   * transaction marked rollback-only, the flush of the record's entity changes) is the record's.
   */
  static void endOfWork(TransactionScope scope, int index) throws HandlerException {
    try {
      scope.endOfWork();
    } catch (OutOfMemoryError | InternalError | UnknownError e) {
      throw e;
    } catch (Throwable e) {
      // A flush refused because the handler caught an SQL error and went on: say so, as seal does.
      for (Throwable cause = e; cause != null; cause = cause.getCause()) {
        if (cause instanceof SQLException sql
            && InboxSql.IN_FAILED_TRANSACTION.equals(sql.getSQLState())) {
          IllegalStateException aborted = abortedByHandler(sql);
          aborted.addSuppressed(e);
          throw new HandlerException(index, aborted);
        }
      }
      throw new HandlerException(index, e);
    }
  }

  /** The connection or the driver's connection under it is closed (or cannot tell). */
  private static boolean closed(Connection connection) {
    try {
      return connection.isClosed() || connection.unwrap(Connection.class).isClosed();
    } catch (SQLException e) {
      return true;
    }
  }

  static IllegalStateException idleTimeout(Throwable serverError) {
    return new IllegalStateException(
        "the transaction outlived transactionIdleTimeout (PostgreSQL ended the session while the"
            + " handler did not use the database): "
            + serverError.getMessage(),
        serverError);
  }

  static IllegalStateException abortedByHandler(SQLException serverError) {
    return new IllegalStateException(
        "the handler returned normally but left the transaction aborted (an SQL error was caught"
            + " and ignored): "
            + serverError.getMessage(),
        serverError);
  }

  /** Dead-letters {@code item} in one transaction, retried while the database fails. */
  private Outcome deadLetter(
      PartitionState state, long epoch, Long[] expected, Item item, int attempts, String reason)
      throws InterruptedException {
    TopicPartition partition = state.partition;
    InboxRecord record = item.record();
    long next = record.offset() + 1;
    int failures = 0;
    while (true) {
      if (!active(state, epoch)) {
        return new Inactive();
      }
      boolean[] committedBefore = {false};
      try {
        Boolean stored =
            transactions.inTransaction(
                scope -> {
                  Connection connection = scope.connection();
                  Long xid = advance(connection, partition, epoch, expected[0], next);
                  if (xid == null) {
                    committedBefore[0] = alreadyStored(connection, partition, epoch, next);
                    scope.setRollbackOnly();
                    return null;
                  }
                  boolean inserted =
                      sql.insertDeadLetter(
                          connection,
                          settings.groupId(),
                          record,
                          attempts,
                          reason,
                          settings.clock().instant());
                  if (inserted && settings.deadLetterTopic() != null) {
                    writer.send(connection, deadLetterMessage(record, reason));
                  }
                  if (!sql.seal(connection, xid)) {
                    throw new IllegalStateException("the dead-letter transaction was ended early");
                  }
                  return inserted;
                });
        if (stored == null && committedBefore[0]) {
          committedBefore(partition, expected[0], next);
          state.committedOffset = next;
          expected[0] = next;
          return new Committed();
        }
        if (stored == null) {
          fenced(state, epoch);
          return new Fenced();
        }
        state.committedOffset = next;
        expected[0] = next;
        if (stored) {
          metrics.deadLettered(partition);
          LOG.error(
              "dead-lettered {} offset {} (message id {}) after {} attempt(s): {}",
              partition,
              record.offset(),
              record.messageId(),
              attempts,
              reason);
          notifyListener(listener -> listener.onDeadLettered(record, reason));
        } else {
          metrics.duplicates(partition, 1);
        }
        return new Committed();
      } catch (InterruptedException e) {
        throw e;
      } catch (Exception e) {
        failures++;
        if (TransientErrors.isTransient(e)) {
          LOG.warn("transient database error dead-lettering on {}: {}", partition, e.toString());
        } else {
          LOG.error("could not dead-letter on {}, retrying (failure {})", partition, failures, e);
        }
      }
      if (!sleep(state, epoch, backoff(failures))) {
        return new Inactive();
      }
    }
  }

  private OutboxMessage deadLetterMessage(InboxRecord record, String reason) {
    OutboxMessage.Builder message =
        OutboxMessage.to(settings.deadLetterTopic()).key(record.key()).payload(record.value());
    for (Header header : record.headers()) {
      if (!Outbox.MESSAGE_ID_HEADER.equals(header.key())) {
        message.header(outboxHeaderName(header.key()), header.value());
      }
    }
    message.header(DLT_MESSAGE_ID, record.messageId());
    message.header(DLT_SOURCE, record.topic() + "/" + record.partition() + "/" + record.offset());
    message.header(DLT_ERROR, reason.getBytes(StandardCharsets.UTF_8));
    return message.build();
  }

  /**
   * A Kafka header name as an outbox header name, which PostgreSQL must store and the outbox
   * accepts: NUL becomes U+FFFD, and an empty or blank name (Kafka allows it) becomes {@value
   * #DLT_BLANK_HEADER}. Refused, the forward would fail on every try and block the partition.
   */
  static String outboxHeaderName(String kafkaName) {
    String name = Failures.textSafe(kafkaName);
    return name.isBlank() ? DLT_BLANK_HEADER : name;
  }

  private void fenced(PartitionState state, long epoch) {
    if (state.epoch != epoch || state.phase.get() != PartitionState.Phase.READY) {
      return;
    }
    // The time first, then the phase: the poll thread reads the time once it sees FENCED, and a
    // time left from before (0, or an earlier fencing) would re-claim at once instead of after
    // the delay, fencing the member that rightly claimed the partition.
    state.fencedAtNanos = System.nanoTime();
    if (state.phase.compareAndSet(PartitionState.Phase.READY, PartitionState.Phase.FENCED)) {
      LOG.warn(
          "fenced on {}: the database refused the commit of epoch {} (another member claimed the"
              + " partition, or the stored offset is not where this batch continues); its queued"
              + " records are dropped and it is claimed again if Kafka still assigns it here",
          state.partition,
          epoch);
      notifyListener(listener -> listener.onPartitionFenced(state.partition));
    }
  }

  void notifyListener(java.util.function.Consumer<InboxListener> call) {
    try {
      call.accept(settings.listener());
    } catch (VirtualMachineError e) {
      throw e;
    } catch (Throwable e) {
      // Whatever a listener throws (an assertion of a test, too) is logged: the work it reports
      // on is already done.
      LOG.warn("inbox listener failed", e);
    }
  }

  /** Exponential backoff: retryBackoff * 2^(failures - 1), at most maxRetryBackoff. */
  Duration backoff(int failures) {
    Duration backoff = settings.retryBackoff();
    for (int i = 1; i < failures && backoff.compareTo(settings.maxRetryBackoff()) < 0; i++) {
      backoff = backoff.multipliedBy(2);
    }
    return backoff.compareTo(settings.maxRetryBackoff()) > 0 ? settings.maxRetryBackoff() : backoff;
  }

  /**
   * Sleeps in slices; false if the partition stopped being active meanwhile. An interrupt flag
   * left set by a handler (restored before rethrowing, as is customary) is cleared first: whether
   * to stop is decided by {@link #active}, which sees closing, never by a handler's interrupt.
   */
  private boolean sleep(PartitionState state, long epoch, Duration duration)
      throws InterruptedException {
    Thread.interrupted();
    long deadline = System.nanoTime() + duration.toNanos();
    while (true) {
      if (!active(state, epoch)) {
        return false;
      }
      long left = deadline - System.nanoTime();
      if (left <= 0) {
        return true;
      }
      Thread.sleep(Math.min(SLEEP_SLICE_MILLIS, Math.max(1, left / 1_000_000)));
    }
  }

  /** Resolves the message id of {@code record}: extracted, validated, or derived. */
  static Item resolve(ConsumerRecord<byte[], byte[]> record, MessageIdExtractor extractor) {
    String id;
    String malformed = null;
    try {
      id = extractor.messageId(record);
    } catch (MalformedMessageIdException e) {
      id = null;
      malformed = "malformed message id: " + e.getMessage();
    } catch (RuntimeException e) {
      id = null;
      malformed = "malformed message id: the extractor failed: " + Failures.describe(e);
    }
    if (id != null) {
      if (id.isEmpty()) {
        malformed = "malformed message id: it is empty";
      } else if (id.length() > MessageIdExtractor.MAX_LENGTH) {
        malformed =
            "malformed message id: it has "
                + id.length()
                + " characters, at most "
                + MessageIdExtractor.MAX_LENGTH
                + " are allowed";
      } else if (id.indexOf('\u0000') >= 0) {
        malformed = "malformed message id: it contains a NUL character";
      }
    }
    if (id == null || malformed != null) {
      id = derivedId(record.topic(), record.partition(), record.offset());
    }
    if (record.headers() instanceof RecordHeaders headers) {
      headers.setReadOnly();
    }
    InboxRecord inboxRecord =
        new InboxRecord(
            record.topic(),
            record.partition(),
            record.offset(),
            record.key(),
            record.value(),
            record.headers(),
            id,
            Instant.ofEpochMilli(record.timestamp()));
    return new Item(inboxRecord, malformed);
  }

  /** The deterministic id of a record without one: {@code kafka:<topic>/<partition>/<offset>}. */
  static String derivedId(String topic, int partition, long offset) {
    return "kafka:" + topic + "/" + partition + "/" + offset;
  }
}
