package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManagerFactory;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ThreadFactory;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.errors.GroupMaxSizeReachedException;
import org.apache.kafka.common.errors.UnreleasedInstanceIdException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.txkafka.TxKafkaException;
import org.txkafka.inbox.DeadLetter;
import org.txkafka.inbox.DeadLetterReplayException;
import org.txkafka.inbox.Inbox;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxWriter;

/**
 * The {@link Inbox} behind {@code Inbox.builder()}: wires the poll thread, the worker pool, the
 * partition claims, the retention job and the dead-letter API together.
 *
 * <p>Invariants: a consumer is used and closed only on the poll thread (the first is made by
 * start(), so that Kafka's refusal of a setting reaches the caller); a partition is claimed (owner
 * epoch bumped) before any of its records is processed; close() never returns while a batch it
 * waited for is half-committed (transactions are atomic; what is still running after closeTimeout
 * commits or rolls back as a whole).
 *
 * <p>Joining again: with Kafka's consumer group protocol (KIP-848) and static membership
 * ({@code group.instance.id}), a member restarted after its process was killed is refused ({@link
 * UnreleasedInstanceIdException}) until the broker times out the session of the killed one, which
 * never left the group. That is a wait, not an error: the poll thread closes the refused consumer
 * and joins again with a new one, with backoff, until it is let in, the inbox is closed, or the
 * refusals went on for longer than {@code rejoinTimeout} (then a live member holds the id: the
 * inbox stops, saying so). A new consumer that cannot be made (bootstrap servers not resolvable for
 * a moment) is tried again within the same timeout. Meanwhile it is running and has no failure. The
 * new consumer is a new member: every partition it gets is claimed again (new owner epoch), so
 * nothing the old one had in flight can commit after it.
 */
public final class InboxRuntime implements Inbox {
  /** At most this many dead letters per listing, as the outbox admin lists parked rows. */
  static final int MAX_LIST_LIMIT = 10_000;

  private static final Logger LOG = LoggerFactory.getLogger(InboxRuntime.class);
  private static final int NEW = 0;
  private static final int STARTED = 1;
  private static final int CLOSED = 2;
  private static final int RETENTION_BATCH = 1000;
  private static final int REPLAY_PAGE = 100;

  private final InboxSettings settings;
  private final TransactionOwner transactions;
  private final InboxSql sql;
  private final OutboxWriter writer;
  private final InboxMetrics metrics;
  private final String ownerId;
  private final Object startStop = new Object();
  private final AtomicInteger lifecycle = new AtomicInteger(NEW);
  private volatile boolean closing;
  private volatile PollLoop loop;
  /** True while the poll thread waits to join the group again ({@link #pollUntilClosed}). */
  private volatile boolean rejoining;
  /** Why the poll thread stopped joining again (refused too long, no new consumer), or null. */
  private volatile Throwable gaveUp;

  /** A refused loop that had run longer than this ends a streak of refusals (they come at once). */
  private static final long REFUSAL_STREAK_BREAK_NANOS = TimeUnit.SECONDS.toNanos(60);
  private BatchProcessor processor;
  private Thread pollThread;
  private ExecutorService workers;
  private ScheduledExecutorService retention;

  /** An inbox for validated {@code settings}; nothing is started or connected yet. */
  public InboxRuntime(InboxSettings settings) {
    this.settings = settings;
    this.transactions =
        settings.dataSource() != null
            ? new DataSourceTransactionOwner(settings.dataSource())
            : new JpaTransactionOwner((EntityManagerFactory) settings.entityManagerFactory());
    this.sql = new InboxSql(settings.schema(), settings.transactionIdleTimeout());
    this.writer = Outbox.writer(settings.schema());
    this.metrics = InboxMetrics.create(settings.meterRegistry(), settings.groupId());
    this.ownerId = ProcessHandle.current().pid() + "/" + UUID.randomUUID();
  }

  /**
   * {@code start()} and {@code close()} run one at a time: a close() while start() is still making
   * the consumer or checking the database (a shutdown hook during startup) waits for it, and then
   * finds everything it stops. Before, it found the loop not made yet and failed, and the inbox
   * then ran on with nothing left to stop it.
   */
  @Override
  public void start() {
    synchronized (startStop) {
      startLocked();
    }
  }

  private void startLocked() {
    if (!lifecycle.compareAndSet(NEW, STARTED)) {
      throw new IllegalStateException(
          "an inbox can be started once; this one is "
              + (lifecycle.get() == STARTED ? "running" : "closed"));
    }
    String group = settings.groupId();
    KafkaConsumer<byte[], byte[]> consumer;
    try {
      checkSetup();
      consumer = new KafkaConsumer<>(settings.consumerProperties());
    } catch (RuntimeException e) {
      lifecycle.set(CLOSED);
      throw e;
    }
    workers =
        Executors.newFixedThreadPool(
            settings.concurrency(), threads("txkafka-inbox-worker-" + group, true));
    processor = new BatchProcessor(settings, transactions, sql, writer, metrics, () -> closing);
    loop = new PollLoop(settings, consumer, workers, processor, this::claim, metrics);
    pollThread = threads("txkafka-inbox-poll-" + group, false).newThread(this::pollUntilClosed);
    pollThread.start();
    retention =
        Executors.newSingleThreadScheduledExecutor(
            threads("txkafka-inbox-retention-" + group, true));
    long interval = settings.retentionInterval().toMillis();
    retention.scheduleWithFixedDelay(
        this::removeExpired, interval, interval, TimeUnit.MILLISECONDS);
    LOG.info("inbox of group {} started as owner {}", group, ownerId);
  }

  /**
   * Refuses to start on a database this inbox can never work with ({@link InboxSql#setupProblems}:
   * read-only, never migrated, privileges missing), or through a transaction owner that cannot run
   * a transaction at all (a JTA EntityManagerFactory): otherwise the inbox would hold its partitions
   * and retry its claims for ever, applying nothing. A database that cannot be reached now is not
   * refused: that is an outage, which claims retry.
   */
  private void checkSetup() {
    List<String> problems;
    try {
      problems = transactions.inTransaction(scope -> sql.setupProblems(scope.connection()));
    } catch (Exception e) {
      if (TransientErrors.isTransient(e)) {
        LOG.warn(
            "inbox of group {}: could not check its database at start ({}); starting, claims are"
                + " retried while it is unreachable",
            settings.groupId(),
            e.toString());
        return;
      }
      throw new TxKafkaException(
          "inbox of group "
              + settings.groupId()
              + " cannot run a transaction on its database: "
              + Failures.describe(e),
          e);
    }
    if (!problems.isEmpty()) {
      throw new TxKafkaException(
          "inbox of group "
              + settings.groupId()
              + " cannot work with its database: "
              + String.join("; ", problems));
    }
  }

  /**
   * The poll thread: runs the poll loop, and when its member was refused because its static
   * instance id is still held, joins again with a new consumer after a backoff (see the class
   * comment), for at most {@code rejoinTimeout} of refusals in a row. Any other failure ends the
   * inbox, as before.
   */
  private void pollUntilClosed() {
    int refusals = 0;
    long refusedSince = 0;
    while (true) {
      PollLoop current = loop;
      long started = System.nanoTime();
      current.run();
      Throwable failure = current.failure();
      if (closing || !waitsToJoin(failure)) {
        return;
      }
      long now = System.nanoTime();
      if (refusals == 0 || now - started > REFUSAL_STREAK_BREAK_NANOS) {
        refusals = 0; // the loop before ran a while: a new streak of refusals
        refusedSince = started;
      }
      refusals++;
      if (now - refusedSince > settings.rejoinTimeout().toNanos()) {
        gaveUp =
            new IllegalStateException(
                "the broker refused this member of group "
                    + settings.groupId()
                    + " for longer than rejoinTimeout ("
                    + settings.rejoinTimeout()
                    + "): "
                    + (failure instanceof GroupMaxSizeReachedException
                        ? "the group is full (the broker's group.consumer.max.size) with live"
                            + " members; more members than it allows?"
                        : "its static instance id (group.instance.id "
                            + settings.consumerProperties().get("group.instance.id")
                            + ") is held by a live member; is it set the same on two processes?"),
                failure);
        LOG.error("{}", gaveUp.getMessage());
        return;
      }
      rejoining = true;
      try {
        long waitMillis = backoffMillis(refusals);
        LOG.warn(
            "group {}: the broker refused this member ({}): {}. Joining again with a new consumer"
                + " in {} ms (refusal {})",
            settings.groupId(),
            failure.getMessage(),
            refusal(failure),
            waitMillis,
            refusals);
        if (!pauseUnlessClosing(waitMillis)) {
          return;
        }
        KafkaConsumer<byte[], byte[]> consumer = null;
        while (consumer == null) {
          try {
            consumer = new KafkaConsumer<>(settings.consumerProperties());
          } catch (RuntimeException e) {
            // Unresolvable bootstrap servers (a DNS hiccup) fail here: retried like a refusal,
            // within the same rejoinTimeout, rather than ending the inbox at the first one.
            if (System.nanoTime() - refusedSince > settings.rejoinTimeout().toNanos()) {
              gaveUp = e;
              LOG.error(
                  "group {}: no new consumer could be made within rejoinTimeout ({}); the inbox"
                      + " stops",
                  settings.groupId(),
                  settings.rejoinTimeout(),
                  e);
              return;
            }
            refusals++;
            long retryMillis = backoffMillis(refusals);
            LOG.warn(
                "group {}: a new consumer could not be made ({}); trying again in {} ms",
                settings.groupId(),
                e.toString(),
                retryMillis);
            if (!pauseUnlessClosing(retryMillis)) {
              return;
            }
          }
        }
        loop = new PollLoop(settings, consumer, workers, processor, this::claim, metrics);
        if (closing) {
          loop.stop(); // close() may have stopped the loop before this one: it then closes at once
        }
      } finally {
        rejoining = false;
      }
    }
  }

  /** Poll thread: waits {@code millis} unless the inbox closes first; false if it does. */
  private boolean pauseUnlessClosing(long millis) {
    long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(millis);
    while (!closing && System.nanoTime() < deadline) {
      try {
        Thread.sleep(Math.min(50, Math.max(1, (deadline - System.nanoTime()) / 1_000_000)));
      } catch (InterruptedException e) {
        // only close() stops this thread, through the closing flag
      }
    }
    return !closing;
  }

  /**
   * A failure after which the member joins again instead of stopping ({@link #pollUntilClosed}):
   * its static instance id still held, or the group full ({@code group.consumer.max.size}); after
   * a kill -9 both last until the broker times out the killed member's session.
   */
  private static boolean waitsToJoin(Throwable failure) {
    return failure instanceof UnreleasedInstanceIdException
        || failure instanceof GroupMaxSizeReachedException;
  }

  /** Why the broker refused this member, for the logs and the failure of giving up. */
  private String refusal(Throwable failure) {
    return failure instanceof GroupMaxSizeReachedException
        ? "the group is full (the broker's group.consumer.max.size): a member killed without"
            + " leaving keeps its place until its session times out"
        : "its static instance id (group.instance.id "
            + settings.consumerProperties().get("group.instance.id")
            + ") is still held: a member killed without leaving keeps it until its session times"
            + " out";
  }

  @Override
  public boolean isRunning() {
    boolean waiting = rejoining;
    PollLoop current = loop;
    // By the failure's type, not only the flag: a refused loop shuts its consumer down (seconds)
    // before the poll thread waits to join again, and the inbox is not stopped meanwhile.
    return lifecycle.get() == STARTED
        && current != null
        && failure() == null
        && (waiting || current.isRunning() || waitsToJoin(current.failure()));
  }

  @Override
  public Throwable failure() {
    Throwable given = gaveUp;
    if (given != null) {
      return given;
    }
    PollLoop current = loop;
    Throwable failure = current == null ? null : current.failure();
    return waitsToJoin(failure) ? null : failure; // a refusal is a wait, also when closed during it
  }

  /** Claims a partition in the database (bumps the epoch), retrying while the database fails. */
  private void claim(PartitionState state) {
    int failures = 0;
    while (state.phase.get() == PartitionState.Phase.CLAIMING && !closing) {
      try {
        InboxSql.Claim claim =
            transactions.inTransaction(
                scope ->
                    sql.claim(
                        scope.connection(),
                        settings.groupId(),
                        state.partition.topic(),
                        state.partition.partition(),
                        ownerId));
        state.epoch = claim.epoch();
        state.claimedOffset = claim.nextOffset();
        state.guardedRecords = claim.guardedRecords();
        if (claim.guardedRecords() > 0) {
          LOG.warn(
              "claimed {}: a batch (or record) started at offset {} was never committed, its owner"
                  + " died or lost the partition; applying the next {} records one at a time, each"
                  + " after a committed start mark",
              state.partition,
              claim.nextOffset() == null ? "(first)" : claim.nextOffset(),
              claim.guardedRecords());
        }
        if (claim.nextOffset() != null) {
          state.committedOffset = claim.nextOffset();
        }
        state.phase.compareAndSet(PartitionState.Phase.CLAIMING, PartitionState.Phase.CLAIMED);
        return;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        return;
      } catch (Exception e) {
        failures++;
        if (TransientErrors.hasSqlState(e, "55P03")) {
          LOG.info(
              "claiming {}: a transaction of the previous owner still holds the offset row,"
                  + " waiting for it to end",
              state.partition);
          continue;
        }
        if (TransientErrors.hasSqlState(e, "42703") || TransientErrors.hasSqlState(e, "42P01")) {
          LOG.error(
              "claiming {} failed (failure {}): the txkafka tables are older than this inbox"
                  + " (run the txkafka migrations, 1.0.5 and all before it); no work starts until"
                  + " then, retrying: {}",
              state.partition,
              failures,
              e.toString());
        } else {
          LOG.warn(
              "claiming {} failed (failure {}), retrying: {}",
              state.partition,
              failures,
              e.toString());
        }
        // In slices: a revocation or close() must not wait for a long backoff.
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(backoffMillis(failures));
        try {
          while (state.phase.get() == PartitionState.Phase.CLAIMING
              && !closing
              && System.nanoTime() - deadline < 0) {
            long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            Thread.sleep(Math.max(1, Math.min(50, left)));
          }
        } catch (InterruptedException interrupted) {
          Thread.currentThread().interrupt();
          return;
        }
      }
    }
  }

  private long backoffMillis(int failures) {
    long millis = settings.retryBackoff().toMillis();
    for (int i = 1; i < failures && millis < settings.maxRetryBackoff().toMillis(); i++) {
      millis *= 2;
    }
    return Math.max(1, Math.min(millis, settings.maxRetryBackoff().toMillis()));
  }

  private void removeExpired() {
    try {
      var cutoff = settings.clock().instant().minus(settings.dedupRetention());
      int deleted;
      int total = 0;
      do {
        deleted =
            transactions.inTransaction(
                scope ->
                    sql.deleteExpired(
                        scope.connection(), settings.groupId(), cutoff, RETENTION_BATCH));
        total += deleted;
      } while (deleted == RETENTION_BATCH && !closing);
      if (total > 0) {
        LOG.debug(
            "removed {} inbox rows of group {} received before {}",
            total,
            settings.groupId(),
            cutoff);
      }
    } catch (Exception e) {
      LOG.warn(
          "inbox retention of group {} failed; retrying at the next interval",
          settings.groupId(),
          e);
    }
  }

  @Override
  public List<DeadLetter> deadLetters(int limit) {
    if (limit < 1 || limit > MAX_LIST_LIMIT) {
      throw new IllegalArgumentException(
          "limit must be between 1 and " + MAX_LIST_LIMIT + ", was " + limit);
    }
    return pending(0, limit);
  }

  private List<DeadLetter> pending(long afterId, int limit) {
    try {
      return transactions.inTransaction(
          scope -> sql.pendingDeadLetters(scope.connection(), settings.groupId(), afterId, limit));
    } catch (RuntimeException e) {
      throw e;
    } catch (Exception e) {
      throw new TxKafkaException(
          "could not list the dead letters of group " + settings.groupId(), e);
    }
  }

  @Override
  public boolean replay(long deadLetterId) {
    // Set once the handler ran and the replay was sealed: what fails after it is the commit.
    java.util.concurrent.atomic.AtomicBoolean sealedForCommit =
        new java.util.concurrent.atomic.AtomicBoolean();
    // The replay transaction's id: after a failure at commit, its status says what happened.
    java.util.concurrent.atomic.AtomicLong replayXid = new java.util.concurrent.atomic.AtomicLong();
    try {
      return transactions.inTransaction(
          scope -> {
            DeadLetter deadLetter =
                sql.lockPendingDeadLetter(scope.connection(), settings.groupId(), deadLetterId);
            if (deadLetter == null) {
              return false;
            }
            // Marked first, sealed last (see InboxSql#markReplayed): a commit in between, the
            // handler's, is refused by PostgreSQL, and a seal in another transaction than the
            // mark's means the handler ended it (rolled back: the mark with it).
            long xid =
                sql.markReplayed(
                    scope.connection(), settings.groupId(), deadLetter, settings.clock().instant());
            replayXid.set(xid);
            try {
              TransactionContext context = new TransactionContext(scope, writer, settings.groupId());
              if (settings.batchHandler() != null) {
                settings.batchHandler().handle(List.of(deadLetter.record()), context);
              } else {
                settings.handler().handle(deadLetter.record(), context);
              }
            } catch (OutOfMemoryError | InternalError | UnknownError e) {
              throw e; // as BatchProcessor: a StackOverflowError is the record's own failure
            } catch (Throwable e) {
              throw new HandlerException(0, e);
            }
            BatchProcessor.endOfWork(scope, 0);
            boolean sealed;
            try {
              sealed = sql.seal(scope.connection(), xid);
            } catch (java.sql.SQLException e) {
              if (InboxSql.IN_FAILED_TRANSACTION.equals(e.getSQLState())) {
                throw new HandlerException(0, BatchProcessor.abortedByHandler(e));
              }
              if (TransientErrors.isIdleTimeout(e)) {
                throw new HandlerException(0, BatchProcessor.idleTimeout(e));
              }
              throw new HandlerException(0, e);
            }
            if (!sealed) {
              throw new HandlerException(
                  0,
                  new IllegalStateException(
                      "the handler ended the replay's transaction itself (COMMIT or ROLLBACK as"
                          + " SQL, or on an unwrapped connection); the inbox owns the transaction:"
                          + " throw to roll back"));
            }
            sealedForCommit.set(true);
            return true;
          });
    } catch (HandlerException e) {
      throw new DeadLetterReplayException(
          deadLetterId,
          "replay of dead letter "
              + deadLetterId
              + " failed, it stays pending: "
              + Failures.describe(e.getCause()),
          e.getCause());
    } catch (Exception e) {
      if (sealedForCommit.get()) {
        // Failed at or after the commit. Committed after all (the failure was in closing the
        // connection, or the answer to the commit was lost)? Then it was replayed. Asked of the
        // replay transaction itself, not of the dead letter: another replayer may have replayed
        // it after ours was refused, and ours must still report its own refusal.
        Boolean pending = replayPending(replayXid.get());
        if (pending == Boolean.FALSE) {
          LOG.warn(
              "replay of dead letter {}: the commit reported a failure but the replay is stored"
                  + " ({}); it was replayed",
              deadLetterId,
              e.toString());
          return true;
        }
        // PostgreSQL refused the commit (a deferred constraint, a serialization failure, a JPA
        // flush at commit): the dead letter's own failure, as a handler's would be. replayAll goes
        // on with the others.
        throw new DeadLetterReplayException(
            deadLetterId,
            "replay of dead letter "
                + deadLetterId
                + (pending == null
                    ? " failed at commit, and whether it committed cannot be read now"
                        + " (deadLetters() tells; it is never applied twice): "
                    : " failed at commit, nothing of this replay committed (it stays pending"
                        + " unless another replay applied it meanwhile): ")
                + Failures.describe(e),
            e);
      }
      throw replayFailure(deadLetterId, e);
    }
  }

  /**
   * Whether the replay transaction {@code xid} did not commit: false if it committed, true if it
   * aborted, null if that cannot be read now (still in progress: a commit that may not have reached
   * the server yet; or the database unreachable). Never waits on a lock.
   */
  private Boolean replayPending(long xid) {
    try {
      String status = transactions.inTransaction(scope -> sql.transactionStatus(scope.connection(), xid));
      if ("committed".equals(status)) {
        return Boolean.FALSE;
      }
      if ("aborted".equals(status)) {
        return Boolean.TRUE;
      }
      return null;
    } catch (Exception e) {
      return null;
    }
  }

  private static RuntimeException replayFailure(long deadLetterId, Exception failure) {
    if (failure instanceof RuntimeException runtime) {
      return runtime;
    }
    if (failure instanceof java.sql.SQLException sql && "42703".equals(sql.getSQLState())) {
      return new TxKafkaException(
          "could not replay dead letter "
              + deadLetterId
              + ": the inbox schema lacks txkafka migration 1.0.8 (column replay_xid of"
              + " txkafka_inbox_dead_letter), which sealed replays need; run the migrations",
          failure);
    }
    return new TxKafkaException("could not replay dead letter " + deadLetterId, failure);
  }

  @Override
  public int replayAll() {
    int replayed = 0;
    List<DeadLetterReplayException> failures = new ArrayList<>();
    long afterId = 0;
    while (true) {
      List<DeadLetter> page = pending(afterId, REPLAY_PAGE);
      if (page.isEmpty()) {
        break;
      }
      for (DeadLetter deadLetter : page) {
        afterId = deadLetter.id();
        try {
          if (replay(deadLetter.id())) {
            replayed++;
          }
        } catch (DeadLetterReplayException e) {
          failures.add(e);
        }
      }
    }
    if (!failures.isEmpty()) {
      DeadLetterReplayException first = failures.get(0);
      DeadLetterReplayException summary =
          new DeadLetterReplayException(
              first.deadLetterId(),
              failures.size()
                  + " dead letter(s) failed to replay ("
                  + replayed
                  + " replayed); first: "
                  + first.getMessage(),
              first.getCause());
      for (int i = 1; i < failures.size(); i++) {
        summary.addSuppressed(failures.get(i));
      }
      throw summary;
    }
    return replayed;
  }

  @Override
  public void close() {
    synchronized (startStop) {
      closeLocked();
    }
  }

  private void closeLocked() {
    if (lifecycle.compareAndSet(NEW, CLOSED)) {
      return;
    }
    if (!lifecycle.compareAndSet(STARTED, CLOSED)) {
      return;
    }
    closing = true;
    loop.stop();
    long waitMillis = settings.closeTimeout().toMillis() * 2 + 30_000;
    try {
      pollThread.join(waitMillis);
      if (pollThread.isAlive()) {
        LOG.warn(
            "the poll thread of group {} did not stop within {} ms",
            settings.groupId(),
            waitMillis);
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    retention.shutdownNow();
    workers.shutdown();
    try {
      if (!workers.awaitTermination(settings.closeTimeout().toMillis(), TimeUnit.MILLISECONDS)) {
        workers.shutdownNow();
      }
    } catch (InterruptedException e) {
      workers.shutdownNow();
      Thread.currentThread().interrupt();
    }
    LOG.info("inbox of group {} closed", settings.groupId());
  }

  private static ThreadFactory threads(String prefix, boolean daemon) {
    AtomicInteger count = new AtomicInteger();
    return runnable -> {
      Thread thread = new Thread(runnable, prefix + "-" + count.incrementAndGet());
      thread.setDaemon(daemon);
      return thread;
    };
  }
}
