package org.txkafka.outbox.internal;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.sql.Timestamp;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.CancellationException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.ScheduledThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicReference;
import java.util.concurrent.locks.LockSupport;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.Producer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.errors.ApiException;
import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.txkafka.outbox.OutboxRelay;

/**
 * The default {@link OutboxRelay}: one thread, one lease connection, one idempotent producer (and a
 * flusher thread, normally one, that waits for each round's acknowledgements, see {@link
 * #publishBatch}).
 *
 * <h2>Invariants (what may never happen)</h2>
 *
 * <ol>
 *   <li><b>No committed row is skipped.</b> There is no id cursor: every round reads the rows that
 *       are pending now ({@code parked_at IS NULL}) in the shares it holds, lowest id first; a row
 *       leaves the outbox only by being acknowledged by Kafka (then deleted or archived) or parked
 *       with its error. A transaction that took a low id and committed late is simply read by a
 *       later round. A round read while the one before it is in flight leaves that round's rows out
 *       by their ids, not by a cursor: a row that committed late with a lower id is read then.
 *   <li><b>A row is removed only after Kafka acknowledged it</b> ({@code acks=all}, idempotent
 *       producer), by id, in one statement per batch.
 *   <li><b>One publisher per share.</b> Rows are read, deleted and parked only on the lease
 *       connection, which holds the share's session-level advisory lock, and only for shares in
 *       {@link ShareLeases#held()}. A statement that succeeds on that connection therefore runs
 *       while the locks are held; if the session ends, PostgreSQL frees the locks and the next
 *       statement fails, so a relay that lost its session can neither read nor remove rows. Shares
 *       are given back only while no round is open (a pipeline of rounds stops reading ahead
 *       before the next lease check).
 *   <li><b>Per-key order.</b> Rows of one key live in one share, read in id order, which for one
 *       key is the order in which its rows became visible (the commit-time order trigger of the
 *       migrations renumbers a transaction that a later row of its key overtook). Within a batch,
 *       once a row of a share could not be handed to the producer (metadata timeout, topic in
 *       backoff), no later row of that share is sent in that batch, and the share is paused (not
 *       read) until that topic's backoff has passed, so it cannot starve the other shares either.
 *       The producer retries transient errors itself and in order ({@code delivery.timeout.ms} at
 *       its maximum, at most 5 requests in flight, idempotence), so a later record of a partition
 *       is never acknowledged before an earlier one that is still retried. A record that fails for
 *       good (the broker refused it, or its batch) ends its round at once: the producer is closed
 *       from that record's callback, so nothing sent after it is acknowledged (Kafka's idempotent
 *       producer would otherwise go on with the partition's later batches), and the round's other
 *       unacknowledged rows are sent again, in order, by a new producer. A round is sent while
 *       the one before it is still being removed, never before every row of that round was
 *       acknowledged or parked: if any failed (or its producer was abandoned), the rows read ahead
 *       are dropped unsent, so nothing overtakes a row that is sent again; and never unless a
 *       statement on the lease session succeeded after that wait (the rows were read before it:
 *       had the session ended meanwhile, the next owner may already have published later rows).
 *   <li><b>A poison row never blocks its share</b>: errors that can never succeed for that row
 *       ({@link PublishErrors#isPoison}) park it (parked_at, attempts, last_error); other errors
 *       leave it pending and make the relay back off.
 *   <li><b>close() is bounded</b> by the close timeout plus a few seconds; rows not acknowledged by
 *       then stay pending (given back), the leases are released with the session. No producer
 *       close is waited for without a bound, by close() or the relay thread: a producer whose
 *       network thread is stuck is left behind and a new one takes over. A session whose statement
 *       is stuck in the database is terminated by close(), so its locks go with it.
 *   <li><b>A frozen relay does not keep its shares for good</b> (unless {@code leaseTimeout} is
 *       off): the lease session has PostgreSQL's {@code idle_session_timeout} set to the lease
 *       timeout, and a keepalive thread sends a statement on it every quarter of that, so a relay
 *       whose whole process stands still lets it expire; PostgreSQL then ends the session and
 *       drops its locks. The keepalive runs on the physical PostgreSQL connection, whose driver
 *       serialises statements of several threads; it never reads or removes rows, so invariant 3
 *       stands: after the session ended, no statement of the relay succeeds on it. No keepalive
 *       runs on a session given back to a pool: releasing waits for a running one first.
 *       <b>Nor does a stuck relay thread keep them</b>: the keepalive goes on only while the relay
 *       thread shows progress, within the bound it declared for what it does (a send: the
 *       producer's {@code max.block.ms}; a round's acknowledgements: the publish timeout) plus the
 *       lease timeout. A thread stuck longer (a listener that never returns, a bug) lets the
 *       session expire like a frozen process. If it resumes, it sends nothing more before a
 *       statement confirmed that its session is still open: a round read before the stall is
 *       otherwise given up unsent. What it does not cover: a process frozen while the server is
 *       still sending it a large result leaves the session busy, not idle, and so does a relay
 *       thread waiting for a statement of its own (close() ends such a session).
 *   <li><b>A round's wait for acknowledgements is bounded</b> by the publish timeout (handing rows
 *       to the producer is bounded separately, by {@code max.block.ms} per topic and the topic
 *       backoff): past it, a watchdog thread closes the producer at once, its unacknowledged rows
 *       stay pending (attempt counted), and a new producer sends them again after the backoff. Order is kept: for one partition the
 *       idempotent producer's acknowledged records are a prefix of what it sent, so what is sent
 *       again follows them. A producer that never gets an answer cannot stall its shares for good.
 * </ol>
 *
 * <p>Thread-safety: the public methods may be called from any thread; all SQL that reads, removes
 * or parks rows or takes and gives back leases, and all producer sends, run on the relay thread
 * (the keepalive's {@code SELECT 1} runs on its own thread, and close() may end a stuck session
 * from a connection of its own).
 */
public final class JdbcOutboxRelay implements OutboxRelay {
  private static final Logger LOG = LoggerFactory.getLogger(JdbcOutboxRelay.class);
  private static final long MAX_WAIT_SLICE_NANOS = TimeUnit.MILLISECONDS.toNanos(100);
  private static final Duration CLOSE_GRACE = Duration.ofSeconds(5);

  /**
   * Wake-up slots per schema: a relay waiting for notifications holds one (exclusive, session
   * advisory lock); the commit-time order trigger of the migrations sends NOTIFY only when it
   * cannot take all of them shared. Must match the trigger.
   */
  static final int WAKE_SLOTS = 4;

  /**
   * How soon a relay that could not take a wake-up slot reads anyway, and then tries again: first
   * after the shortest wait (a writer committing right now holds every slot shared until its commit
   * ends, usually well under a millisecond, and sends no NOTIFY), doubling up to the longest while
   * such reads find nothing (every slot held by other waiting relays: then writers notify anyway;
   * or a writer holds the slots for long, as in a transaction that ran SET CONSTRAINTS ALL
   * IMMEDIATE and stays open).
   */
  private static final long WAKE_SLOT_RETRY_MIN_NANOS = TimeUnit.MILLISECONDS.toNanos(1);

  private static final long WAKE_SLOT_RETRY_MAX_NANOS = TimeUnit.MILLISECONDS.toNanos(64);

  /**
   * Longest wait before a topic whose sends could not start (no metadata: missing topic, broker
   * unreachable) is tried again. Each try can block the relay thread for the producer's
   * max.block.ms, so a topic that stays missing must not be tried often: it would starve the rest.
   */
  static final Duration MAX_TOPIC_BACKOFF = Duration.ofSeconds(30);

  private enum State {
    NEW,
    RUNNING,
    CLOSED
  }

  private final RelayConfig config;
  private final OutboxSql sql;
  private final RelayMetrics metrics;
  private final Random random = new Random();
  private final AtomicReference<State> state = new AtomicReference<>(State.NEW);
  private final Map<String, TopicBackoff> topicBackoffs = new HashMap<>();
  private final Map<Integer, String> pausedShares = new HashMap<>();

  /**
   * Topics that rows were addressed to a partition of that they do not have. A send to such a
   * partition waits max.block.ms for metadata that never shows it: once one did, later rows of the
   * topic are checked against the producer's metadata (known by then, so no wait) before they are
   * sent, and parked at once. Otherwise each would cost max.block.ms of the relay thread, which
   * every share it holds waits for.
   */
  private final Set<String> topicsWithMissingPartitions = new HashSet<>();

  /** Closes a producer whose round outlived the publish timeout (see {@link #publishBatch}). */
  private final ScheduledExecutorService watchdog;
  /** Sends the lease session's keepalive statements ({@link #keepSessionAlive}). */
  private final ScheduledExecutorService keepalive;

  /** Runs each round's flush, so that the relay thread can read and remove meanwhile. */
  private final ExecutorService flusher;

  private volatile boolean stopping;
  private volatile Thread thread;

  /** Set when an Error ended the relay thread (see run()). */
  private volatile boolean failed;
  private volatile Producer<byte[], byte[]> producer;
  private volatile Session session;
  private volatile Set<Integer> owned = Set.of();

  /**
   * System.nanoTime by which the relay thread must show progress again for the keepalive to go on
   * keeping its lease session open ({@link #progressWithin}).
   */
  private volatile long progressDeadline;

  /**
   * Set by the keepalive when it found the progress deadline passed and withheld its statement;
   * the relay thread confirms that its session is still open before it sends anything again.
   */
  private volatile boolean keepaliveWithheld;

  /**
   * System.nanoTime of the last statement known to have succeeded on the lease session (a
   * keepalive ping, a session check): PostgreSQL ends the session only after it has been idle for
   * the lease timeout since its last statement.
   */
  private volatile long sessionProvenAt;

  /**
   * Set when a keepalive statement failed: the session may have ended for another reason than
   * idleness (terminated, a server restart, a reset connection), so another relay may hold the
   * shares now, however recent {@link #sessionProvenAt} is. Cleared by a successful check.
   */
  private volatile boolean keepaliveFailed;

  /** Longest bound {@link #progressWithin} takes: about 73 years, far from wrapping around. */
  private static final long MAX_DECLARED_BOUND_NANOS = Long.MAX_VALUE / 4;

  /**
   * Keepalive thread only: whether its last run withheld the statement (so that each stall is
   * reported once when it begins).
   */
  private boolean withholding;

  /** The producer's max.block.ms: the longest a send or a metadata lookup may block. */
  private final long maxBlockNanos;

  /** Relay thread only: the wake-up slot this session holds, -1 if none ({@link #takeWakeSlot}). */
  private int heldWakeSlot = -1;
  private long wakeSlotRetryNanos = WAKE_SLOT_RETRY_MIN_NANOS;

  /** A relay for {@code config}; nothing connects before {@link #start()}. */
  public JdbcOutboxRelay(RelayConfig config) {
    this.config = config;
    this.sql = new OutboxSql(config.schema());
    this.metrics = RelayMetrics.create(config);
    this.watchdog = scheduler(config.name() + "-watchdog");
    this.keepalive = scheduler(config.name() + "-keepalive");
    this.maxBlockNanos =
        TimeUnit.MILLISECONDS.toNanos(
            Long.parseLong(
                String.valueOf(config.producerProperties().get(ProducerConfig.MAX_BLOCK_MS_CONFIG))
                    .trim()));
    // A thread per flush running at once: normally one, reused; a flush stuck on an abandoned
    // producer must not hold up the flush of its replacement.
    this.flusher = Executors.newCachedThreadPool(daemon(config.name() + "-flusher"));
  }

  /**
   * A one-thread scheduler on a daemon thread whose cancelled tasks (every round bound that ends in
   * time) leave its queue at once, instead of waiting there, holding their producer, until their
   * delay would have passed.
   */
  private static ScheduledExecutorService scheduler(String name) {
    ScheduledThreadPoolExecutor scheduler = new ScheduledThreadPoolExecutor(1, daemon(name));
    scheduler.setRemoveOnCancelPolicy(true);
    return scheduler;
  }

  private static java.util.concurrent.ThreadFactory daemon(String name) {
    return task -> {
      Thread thread = new Thread(task, name);
      thread.setDaemon(true);
      return thread;
    };
  }

  /** Stops the watchdog, keepalive and flusher threads (start failure, close). */
  private void stopHelperThreads() {
    watchdog.shutdownNow();
    keepalive.shutdownNow();
    flusher.shutdownNow();
  }

  @Override
  public void start() {
    if (!state.compareAndSet(State.NEW, State.RUNNING)) {
      throw new IllegalStateException(
          "relay " + config.name() + " cannot start: it is " + state.get());
    }
    try {
      producer = newProducer();
    } catch (RuntimeException e) {
      state.set(State.CLOSED);
      metrics.close();
      stopHelperThreads();
      throw e;
    }
    Thread worker = new Thread(this::run, config.name());
    worker.setDaemon(false);
    thread = worker;
    worker.start();
  }

  @Override
  public void close() {
    if (state.compareAndSet(State.NEW, State.CLOSED)) {
      metrics.close();
      stopHelperThreads();
      return;
    }
    if (!state.compareAndSet(State.RUNNING, State.CLOSED)) {
      return;
    }
    stopping = true;
    Thread worker = thread;
    LockSupport.unpark(worker);
    join(worker, config.closeTimeout());
    if (worker.isAlive()) {
      LOG.warn(
          "relay {}: in-flight batch not acknowledged within {}; giving it back",
          config.name(),
          config.closeTimeout());
      closeProducer(Duration.ZERO);
      join(worker, CLOSE_GRACE);
    }
    if (worker.isAlive()) {
      worker.interrupt();
      Session stuck = session;
      if (stuck != null) {
        terminateBackend(stuck);
        abortQuietly(stuck.connection, false);
      }
      join(worker, CLOSE_GRACE);
    }
    closeProducer(CLOSE_GRACE);
    stopHelperThreads();
    metrics.close();
    owned = Set.of();
  }

  @Override
  public boolean isRunning() {
    return state.get() == State.RUNNING && !failed;
  }

  @Override
  public Set<Integer> ownedShares() {
    return owned;
  }

  @Override
  public String name() {
    return config.name();
  }

  @Override
  public String toString() {
    return "OutboxRelay[" + config.name() + ", schema " + config.schema() + "]";
  }

  private Producer<byte[], byte[]> newProducer() {
    return new KafkaProducer<>(new HashMap<>(config.producerProperties()));
  }

  /**
   * Closes the current producer, waiting at most {@code timeout} plus {@link #CLOSE_GRACE}.
   * KafkaProducer.close(timeout) waits for its network thread, and once the timeout passed joins it
   * again without a bound: a network thread stuck in a user's interceptor or callback would hold
   * the caller (the relay thread, or close()) for good, with the shares' locks held. So the close
   * runs on a thread of its own, which is left behind if it does not end.
   */
  private void closeProducer(Duration timeout) {
    Producer<byte[], byte[]> current = producer;
    if (current == null) {
      return;
    }
    boolean closed =
        runBounded(
            "close",
            () -> {
              try {
                current.close(timeout);
              } catch (RuntimeException e) {
                LOG.debug("relay {}: closing the producer failed", config.name(), e);
              }
            },
            timeout.plus(CLOSE_GRACE));
    if (!closed) {
      LOG.warn(
          "relay {}: the producer did not close within {} (its network thread is stuck); left"
              + " behind, a new producer takes over",
          config.name(),
          timeout.plus(CLOSE_GRACE));
    }
  }

  /**
   * Ends the backend of a session whose statement does not return (a lock wait, a slow trigger),
   * from a connection of its own, waiting at most {@link #CLOSE_GRACE}. Closing the socket alone is
   * not enough: PostgreSQL notices it only when it next writes to it, and until then the session
   * keeps its advisory locks, so no other relay could take its shares. The session's process id is
   * matched with its start time: the session may have ended meanwhile and its id been reused.
   */
  private void terminateBackend(Session stuck) {
    if (stuck.backendPid() == 0) {
      return;
    }
    runBounded(
        "terminate",
        () -> {
          // Only while the process id still names this session (its start time matches): the
          // session may have ended meanwhile (PostgreSQL ends it once it is idle past the lease
          // timeout), and the id may now be another session's.
          try (Connection connection = config.dataSource().getConnection();
              PreparedStatement terminate =
                  connection.prepareStatement(
                      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ?"
                          + " AND (?::text IS NULL OR extract(epoch FROM backend_start) ="
                          + " ?::numeric)")) {
            terminate.setInt(1, stuck.backendPid());
            terminate.setString(2, stuck.backendStart());
            terminate.setString(3, stuck.backendStart());
            terminate.execute();
          } catch (SQLException | RuntimeException e) {
            LOG.warn(
                "relay {}: could not end its stuck database session (pid {}); its shares stay"
                    + " locked until its statement ends",
                config.name(),
                stuck.backendPid(),
                e);
          }
        },
        CLOSE_GRACE);
  }

  /**
   * Runs {@code task} on a daemon thread of its own and waits for it at most {@code bound}; a task
   * that does not end (a stuck close, a statement that never returns) is left behind.
   *
   * @return whether the task ended within the bound
   */
  private boolean runBounded(String what, Runnable task, Duration bound) {
    Thread worker = new Thread(task, config.name() + "-" + what);
    worker.setDaemon(true);
    worker.start();
    join(worker, bound);
    return !worker.isAlive();
  }

  private static void join(Thread worker, Duration timeout) {
    try {
      worker.join(Math.max(1, timeout.toMillis()));
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  // ---------------------------------------------------------------- the relay thread

  private void run() {
    long backoffNanos = config.initialBackoff().toNanos();
    long nextLeaseCheck = System.nanoTime();
    long nextStats = System.nanoTime();
    long nextPoll = System.nanoTime();
    boolean work = true;
    try {
      while (!stopping) {
        progressWithin(0);
        try {
          if (session == null) {
            session = openSession();
            nextLeaseCheck = System.nanoTime();
            work = true;
          }
          long now = System.nanoTime();
          if (now - nextLeaseCheck >= 0) {
            work |= checkLeases(session);
            nextLeaseCheck = now + config.leaseCheckInterval().toNanos();
          }
          if (metrics.wantsStats() && now - nextStats >= 0) {
            refreshStats(session);
            nextStats = now + config.statsInterval().toNanos();
          }
          if (work || now - nextPoll >= 0) {
            nextPoll = now + config.pollInterval().toNanos();
            long pipelineUntil = nextLeaseCheck;
            if (metrics.wantsStats()) {
              pipelineUntil = now + Math.min(nextLeaseCheck - now, nextStats - now);
            }
            BatchOutcome outcome = publishBatch(session, pipelineUntil);
            if (outcome.troubled()) {
              sleep(backoffNanos);
              backoffNanos = Math.min(backoffNanos * 2, config.maxBackoff().toNanos());
              work = true;
              continue;
            }
            backoffNanos = config.initialBackoff().toNanos();
            work = outcome.full();
            if (work) {
              continue;
            }
          }
          long until = Math.min(nextPoll - now, nextLeaseCheck - now);
          if (metrics.wantsStats()) {
            until = Math.min(until, nextStats - now);
          }
          work = awaitWork(session, until);
        } catch (SQLException e) {
          if (!stopping) {
            LOG.warn(
                "relay {}: database session failed ({}); its shares are given up, retrying in {} ms",
                config.name(),
                e.getMessage(),
                TimeUnit.NANOSECONDS.toMillis(backoffNanos));
          }
          loseSession();
          sleep(backoffNanos);
          backoffNanos = Math.min(backoffNanos * 2, config.maxBackoff().toNanos());
        } catch (RuntimeException e) {
          if (stopping) {
            break;
          }
          LOG.warn(
              "relay {}: round failed, recreating the producer and retrying in {} ms",
              config.name(),
              TimeUnit.NANOSECONDS.toMillis(backoffNanos),
              e);
          metrics.failed(1);
          progressWithin(CLOSE_GRACE.plus(CLOSE_GRACE).toNanos());
          closeProducer(CLOSE_GRACE);
          sleep(backoffNanos);
          backoffNanos = Math.min(backoffNanos * 2, config.maxBackoff().toNanos());
          if (!stopping) {
            try {
              progressWithin(maxBlockNanos);
              producer = newProducer();
            } catch (RuntimeException creation) {
              LOG.warn("relay {}: cannot create the producer", config.name(), creation);
            }
          }
        }
      }
    } catch (Error e) {
      // Out of memory (a batch of huge rows), a stack overflow, a class that cannot be loaded: the
      // relay stops, loudly, instead of leaving a dead thread behind while isRunning() says true.
      // Its shares are given back (the lease session ends below); its rounds in flight may still
      // arrive, as the documented duplicates of a lost session.
      failed = true;
      LOG.error(
          "relay {}: stopped by {}; its shares are given back. isRunning() is false from now on:"
              + " close it and start a new one (for rows too large for the heap, lower batchSize)",
          config.name(),
          e.toString(),
          e);
      closeProducer(Duration.ZERO);
      throw e;
    } finally {
      releaseSession();
    }
  }

  /** Connects, listens and announces this relay. */
  private Session openSession() throws SQLException {
    Connection connection = config.dataSource().getConnection();
    try {
      connection.setAutoCommit(true);
      // Every session, not once: the schema may be migrated (or broken) while the relay runs.
      OutboxSchema.verify(connection, config.schema(), config.archive());
      PGConnection notifications = null;
      if (config.listenNotify()) {
        if (connection.isWrapperFor(PGConnection.class)) {
          notifications = connection.unwrap(PGConnection.class);
          try (Statement listen = connection.createStatement()) {
            listen.execute("LISTEN " + OutboxSql.CHANNEL);
          }
        } else {
          LOG.warn(
              "relay {}: the data source does not give a PostgreSQL JDBC connection; polling only",
              config.name());
        }
      }
      ShareLeases leases = new ShareLeases(connection, config.schema(), random);
      leases.announce();
      LOG.info(
          "relay {}: connected (presence {}), listening: {}",
          config.name(),
          leases.presenceId(),
          notifications != null);
      int backendPid =
          connection.isWrapperFor(PGConnection.class)
              ? connection.unwrap(PGConnection.class).getBackendPID()
              : 0;
      // As epoch seconds: text of a timestamp depends on each session's TimeZone and DateStyle.
      String backendStart = null;
      try (Statement started = connection.createStatement();
          ResultSet row =
              started.executeQuery(
                  "SELECT extract(epoch FROM backend_start)::text FROM pg_stat_activity"
                      + " WHERE pid = pg_backend_pid()")) {
        if (row.next()) {
          backendStart = row.getString(1);
        }
      }
      ScheduledFuture<?> pings = keepSessionAlive(connection);
      return new Session(connection, notifications, leases, backendPid, backendStart, pings);
    } catch (SQLException | RuntimeException e) {
      abortQuietly(connection, true);
      throw e;
    }
  }

  /**
   * Sets the lease session's {@code idle_session_timeout} to the lease timeout and schedules its
   * keepalive, a statement every quarter of it, on the physical PostgreSQL connection (not through
   * a pool's wrapper, which is not meant for two threads). Returns null when the timeout is off,
   * the connection is not a PostgreSQL JDBC one, or the server is older than 14 (no such setting).
   */
  private ScheduledFuture<?> keepSessionAlive(Connection connection) throws SQLException {
    Duration timeout = config.leaseTimeout();
    if (timeout.isZero()) {
      return null;
    }
    if (!connection.isWrapperFor(PGConnection.class)) {
      LOG.warn(
          "relay {}: the data source does not give a PostgreSQL JDBC connection; no lease timeout"
              + " (a frozen relay keeps its shares until it runs again)",
          config.name());
      return null;
    }
    Connection physical = (Connection) connection.unwrap(PGConnection.class);
    try (Statement set = connection.createStatement()) {
      // A feature test, not a version test: servers that speak PostgreSQL's protocol without
      // this setting (before 14, or other implementations) answer null.
      try (ResultSet known =
          set.executeQuery("SELECT current_setting('idle_session_timeout', true)")) {
        if (!known.next() || known.getString(1) == null) {
          LOG.warn(
              "relay {}: the server has no idle_session_timeout (PostgreSQL 14 and later); no"
                  + " lease timeout (a frozen relay keeps its shares until it runs again)",
              config.name());
          return null;
        }
      }
      set.execute("SET idle_session_timeout = " + timeout.toMillis());
    } catch (SQLException e) {
      if (e.getSQLState() != null && e.getSQLState().startsWith("08")) {
        throw e; // the connection failed: the relay starts over with a new session
      }
      LOG.warn(
          "relay {}: the server refused idle_session_timeout ({}); no lease timeout (a frozen"
              + " relay keeps its shares until it runs again)",
          config.name(),
          e.getMessage());
      return null;
    }
    long period = Math.max(1, timeout.toMillis() / 4);
    progressWithin(0);
    keepaliveWithheld = false;
    keepaliveFailed = false;
    sessionProvenAt = System.nanoTime();
    return keepalive.scheduleWithFixedDelay(
        () -> {
          if (System.nanoTime() - progressDeadline > 0) {
            // The relay thread is stuck past every bound it declared: let the session end, so
            // that another relay takes the shares. It goes on if the thread resumes first.
            keepaliveWithheld = true;
            if (!withholding) {
              withholding = true;
              LOG.warn(
                  "relay {}: the relay thread has shown no progress for longer than its own"
                      + " bounds plus the lease timeout of {}; the keepalive stops, so that"
                      + " PostgreSQL ends the lease session once it has been idle for {} (a"
                      + " statement of the relay still running keeps it) and another relay can"
                      + " take shares {}",
                  config.name(),
                  timeout,
                  timeout,
                  owned);
            }
            return;
          }
          withholding = false;
          // Stamped with the time the statement was sent, not answered: the answer may sit unread
          // through a freeze of the whole process, while the session's idle time already runs.
          long sentAt = System.nanoTime();
          try (Statement ping = physical.createStatement()) {
            ping.execute("SELECT 1");
            sessionProvenAt = sentAt;
          } catch (SQLException | RuntimeException e) {
            // The relay thread confirms the session before it sends anything more, and notices an
            // ended session at that statement (or its next one) and starts over.
            keepaliveFailed = true;
            LOG.debug("relay {}: keepalive failed", config.name(), e);
          }
        },
        period,
        period,
        TimeUnit.MILLISECONDS);
  }

  /**
   * Relay thread only: declares that it is making progress and that what it does next may take up
   * to {@code boundNanos} (a send waiting for metadata, the wait for a round's acknowledgements),
   * so that the keepalive goes on for that long plus the lease timeout. A relay thread that shows
   * nothing for longer (a listener that never returns, a bug) stops the keepalive: PostgreSQL then
   * ends its idle lease session and drops its locks, and another relay takes its shares.
   */
  private void progressWithin(long boundNanos) {
    long now = System.nanoTime();
    // Bounded so that the sum cannot wrap (max.block.ms may be Long.MAX_VALUE: "block for ever").
    long bound = Math.min(boundNanos, MAX_DECLARED_BOUND_NANOS);
    progressDeadline = now + bound + config.leaseTimeout().toNanos();
  }

  /**
   * Relay thread only, after the keepalive withheld its statement: the session may have ended
   * while this thread stood still, and another relay may publish its shares now. A round read
   * before is sent only if the session is still open (then its locks are held, and the statement
   * restarts its idle time): else this throws, the round is given up unsent and the session lost,
   * so no stale copy of a row reaches Kafka after the next owner's.
   */
  private void confirmSession(Session current) throws SQLException {
    checkSession(current);
    keepaliveWithheld = false;
    LOG.info(
        "relay {}: its lease session is still open after a pause of the relay thread or a failed"
            + " keepalive statement; going on",
        config.name());
  }

  /**
   * Relay thread only: whether no statement was seen to succeed on the lease session for half
   * the lease timeout, or the keepalive's last statement failed. The keepalive pings four times
   * per lease timeout; it can miss a stall of the relay thread only if it was frozen with it (the
   * whole process paused: a long GC, SIGSTOP). Then PostgreSQL may have ended the session and
   * another relay may publish its shares: a round read before is sent on only after {@link
   * #confirmSession}. A failed ping means the session may have ended otherwise (terminated, a
   * server restart) however recent the last success. Not covered: a pause that System.nanoTime
   * does not count (a host suspended with its monotonic clock), and a pause that starts after
   * the check, while a row is inside the producer (a documented duplicate, dropped by message id).
   */
  private boolean sessionUnproven(Session current) {
    return current.keepalive() != null
        && (keepaliveFailed
            || System.nanoTime() - sessionProvenAt > config.leaseTimeout().toNanos() / 2);
  }

  /** Relay thread only: a statement on the lease session, which fails if the session ended. */
  private void checkSession(Session current) throws SQLException {
    long sentAt = System.nanoTime();
    try (Statement check = current.connection.createStatement()) {
      check.execute("SELECT 1");
    }
    sessionProvenAt = sentAt;
    keepaliveFailed = false;
  }

  /**
   * Waits (bounded) until no keepalive runs: the keepalive thread is single, so a task submitted
   * after a cancelled one runs only when that one's run, if any, is over. A pooled connection must
   * not be handed back while a keepalive may still run on it.
   */
  private boolean keepaliveIdle() {
    try {
      keepalive.submit(() -> {}).get(CLOSE_GRACE.toMillis(), TimeUnit.MILLISECONDS);
      return true;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    } catch (ExecutionException | TimeoutException | RuntimeException e) {
      return false; // RejectedExecutionException: shut down, nothing runs any more
    }
  }

  /**
   * Counts relays and moves toward a fair share: gives back surplus shares, takes free ones.
   *
   * @return whether shares were acquired (there may be rows to publish at once)
   */
  private boolean checkLeases(Session current) throws SQLException {
    int relays = current.leases.countRelays();
    int target = ShareLeases.fairShare(relays);
    Set<Integer> surplus = Collections.unmodifiableSet(current.leases.surplus(target));
    if (!surplus.isEmpty()) {
      // Told before the unlock: from here on nothing of these shares is published by this relay.
      notifyListener(listener -> listener.sharesReleased(surplus, false));
      current.leases.unlock(surplus);
      owned = current.leases.held();
      LOG.info(
          "relay {}: gave back shares {} ({} relays, fair share {})",
          config.name(),
          describe(surplus),
          relays,
          target);
    }
    Set<Integer> acquired = Collections.unmodifiableSet(current.leases.acquireUpTo(target));
    if (!acquired.isEmpty()) {
      owned = current.leases.held();
      LOG.info(
          "relay {}: took shares {} ({} relays, fair share {}, now {})",
          config.name(),
          describe(acquired),
          relays,
          target,
          owned.size());
      notifyListener(listener -> listener.sharesAcquired(acquired));
    }
    return !acquired.isEmpty();
  }

  /**
   * Waits up to {@code nanos} for a notification of this schema's outbox (or just waits, when not
   * listening). Returns early, without work, when the relay is stopping.
   *
   * @return whether a notification arrived
   */
  private boolean awaitWork(Session current, long nanos) throws SQLException {
    boolean readWhenWaited = false;
    if (current.notifications != null && heldWakeSlot < 0) {
      if (takeWakeSlot(current)) {
        wakeSlotRetryNanos = WAKE_SLOT_RETRY_MIN_NANOS;
        // Rows committed before the slot was ours sent no notification: read once more first.
        return true;
      }
      // Every slot is held: by writers committing right now (their rows are coming, and they sent
      // no notification), or by other waiting relays (then writers notify anyway). Wait briefly
      // for a notification, then read anyway (and try the slot again after that read).
      nanos = Math.min(nanos, wakeSlotRetryNanos);
      wakeSlotRetryNanos = Math.min(wakeSlotRetryNanos * 2, WAKE_SLOT_RETRY_MAX_NANOS);
      readWhenWaited = true;
    }
    long deadline = System.nanoTime() + Math.max(0, nanos);
    while (!stopping) {
      long remaining = deadline - System.nanoTime();
      if (remaining <= 0) {
        return readWhenWaited;
      }
      long slice = Math.min(remaining, MAX_WAIT_SLICE_NANOS);
      progressWithin(0);
      if (current.notifications == null) {
        LockSupport.parkNanos(slice);
        continue;
      }
      int millis = (int) Math.max(1, TimeUnit.NANOSECONDS.toMillis(slice));
      PGNotification[] received = current.notifications.getNotifications(millis);
      if (received != null) {
        for (PGNotification notification : received) {
          if (config.schema().equals(notification.getParameter())) {
            return true;
          }
        }
      }
    }
    return false;
  }

  /**
   * Takes a wake-up slot before this relay waits for notifications. A writer's commit sends NOTIFY
   * only while some relay holds a slot (NOTIFY takes a lock at commit that serialises every
   * committing transaction of the cluster that sent one, so writers skip it while relays are busy).
   * No wake-up is lost: a writer that committed before the slot was taken is read by the round that
   * follows, one committing meanwhile holds every slot shared so that taking one fails and the
   * relay tries again shortly, and one that commits later finds the slot held and notifies.
   *
   * <p>Slots are tried from this relay's own ({@code presence id mod} {@value #WAKE_SLOTS}) on, so
   * that up to {@value #WAKE_SLOTS} relays each find one.
   *
   * @return false if every slot was held (by committing writers or other waiting relays)
   */
  private boolean takeWakeSlot(Session current) throws SQLException {
    int first = Math.floorMod(current.leases.presenceId(), WAKE_SLOTS);
    try (PreparedStatement take = current.connection.prepareStatement(sql.takeWakeSlot())) {
      for (int i = 0; i < WAKE_SLOTS; i++) {
        int slot = (first + i) % WAKE_SLOTS;
        take.setString(1, wakeSlotKey(slot));
        try (ResultSet rs = take.executeQuery()) {
          rs.next();
          if (rs.getBoolean(1)) {
            heldWakeSlot = slot;
            return true;
          }
        }
      }
    }
    return false;
  }

  private void releaseWakeSlot(Session current) throws SQLException {
    if (heldWakeSlot < 0) {
      return;
    }
    try (PreparedStatement release = current.connection.prepareStatement(sql.releaseWakeSlot())) {
      release.setString(1, wakeSlotKey(heldWakeSlot));
      release.execute();
    }
    heldWakeSlot = -1;
  }

  private String wakeSlotKey(int slot) {
    return config.schema() + "/wake/" + slot;
  }

  private void refreshStats(Session current) throws SQLException {
    Set<Integer> shares = current.leases.held();
    try (PreparedStatement stats = current.connection.prepareStatement(sql.stats())) {
      stats.setArray(1, current.connection.createArrayOf("int4", shares.toArray(new Integer[0])));
      try (ResultSet rs = stats.executeQuery()) {
        rs.next();
        long pending = rs.getLong(1);
        Timestamp oldest = rs.getTimestamp(2);
        long parked = rs.getLong(3);
        Duration age =
            oldest == null
                ? Duration.ZERO
                : Duration.between(oldest.toInstant(), config.clock().instant());
        metrics.stats(pending, age.isNegative() ? Duration.ZERO : age, parked, shares.size());
      }
    }
  }

  // ---------------------------------------------------------------- one batch

  private static final Long[] NONE_IN_FLIGHT = new Long[0];

  /** Relay thread only: which share the next read starts with. */
  private int readRound;

  /** Relay thread only: a producer the watchdog closed, to be replaced before the next send. */
  private Producer<byte[], byte[]> abandonedProducer;

  /**
   * Publishes the rows pending in the held shares: one round, and, while rounds come back full, the
   * rounds after it as a pipeline of two. While a round waits for its acknowledgements (the flush
   * runs on the flusher thread), the relay thread reads the next round's rows, leaving out the rows
   * in flight by their ids; the next round is sent only once every row of the round before was
   * acknowledged or parked (else its rows are dropped unsent and read again later); and a round's
   * rows are removed while the next round is in flight. No round is read ahead once the relay is
   * stopping or {@code pipelineUntil} (System.nanoTime: the next lease check) has passed, so shares
   * are only ever given back while no round is open.
   */
  private BatchOutcome publishBatch(Session current, long pipelineUntil) throws SQLException {
    if (abandonedProducer != null) {
      if (producer == abandonedProducer) {
        progressWithin(maxBlockNanos);
        producer = newProducer();
      }
      abandonedProducer = null;
    }
    Set<Integer> shares = sendableShares(current.leases.held());
    if (shares.isEmpty()) {
      return BatchOutcome.EMPTY;
    }
    List<OutboxRow> rows = readPending(current, shares, NONE_IN_FLIGHT);
    if (rows.isEmpty()) {
      return BatchOutcome.EMPTY;
    }
    wakeSlotRetryNanos = WAKE_SLOT_RETRY_MIN_NANOS;
    // Busy until this round ends: writers need not wake this relay, and skip NOTIFY while no relay
    // holds a slot (each NOTIFY costs their commit a lock held through its flush, and the
    // listener's wake-up: one per writer commit while a relay keeps up halved a single writer's
    // commit rate). Before it waits again, the relay takes a slot and reads once more.
    releaseWakeSlot(current);
    // Rounds started and not finished, oldest first (at most two).
    List<Round> open = new ArrayList<>(2);
    try {
      send(current, rows, open);
      while (true) {
        Round round = open.get(0);
        List<OutboxRow> ahead = List.of();
        if (round.rows.size() >= config.batchSize()
            && round.sentCleanly()
            && !stopping
            && System.nanoTime() - pipelineUntil < 0) {
          Set<Integer> next = sendableShares(current.leases.held());
          if (!next.isEmpty()) {
            ahead = readPending(current, next, round.ids());
          }
        }
        awaitAcknowledgements(round);
        if (!ahead.isEmpty() && round.acknowledgedCleanly() && !stopping) {
          // Read under the lease before the wait, sent only if the lease still holds now: had
          // the session ended during the wait, another relay may have published these rows and
          // later ones of their keys, and a copy sent now would land after those.
          checkSession(current);
          send(current, ahead, open);
        }
        BatchOutcome outcome = finish(current, round);
        open.remove(0);
        if (open.isEmpty()) {
          return outcome;
        }
      }
    } catch (SQLException | RuntimeException e) {
      for (Round round : open) {
        giveUp(round);
      }
      throw e;
    }
  }

  /**
   * Gives up a round that a failure interrupted (its session may be gone, and another relay may take
   * its shares): its rows stay pending and are published again (at least once). A round still
   * waiting for acknowledgements has its producer closed at once, as the watchdog would: left
   * running, it would retry them for ever ({@code delivery.timeout.ms}), and a copy landing after
   * the next owner published the later rows of a key would end that key's order on a stale record.
   */
  private void giveUp(Round round) {
    abandon(round, "a round was given up after a failure");
    if (round.ended.get() == Boolean.FALSE) {
      // Closed by this call or, earlier, by the watchdog: replaced before the next round.
      abandonedProducer = round.sender;
    }
    if (round.bound != null) {
      round.bound.cancel(false);
    }
    if (!round.reported) {
      // finish() reports a round before it throws for an abandoned producer: once only.
      round.reported = true;
      int removed = round.removed;
      notifyListener(
          listener ->
              listener.batchFinished(round.shares, removed, 0, round.rows.size() - removed));
    }
  }

  /**
   * Hands {@code rows} to the producer as a new round (added to {@code open} before anything is
   * sent, so that a failure half-way gives it up) and starts its flush on the flusher thread.
   */
  private void send(Session current, List<OutboxRow> rows, List<Round> open)
      throws SQLException {
    Set<Integer> shareSet = new TreeSet<>();
    for (OutboxRow row : rows) {
      shareSet.add(row.share());
    }
    Round round = new Round(rows, Collections.unmodifiableSet(shareSet), producer);
    open.add(round);
    notifyListener(listener -> listener.batchStarting(round.shares, rows.size()));
    for (OutboxRow row : rows) {
      if (stopping) {
        break;
      }
      progressWithin(maxBlockNanos);
      if (keepaliveWithheld || sessionUnproven(current)) {
        confirmSession(current);
      }
      if (round.stalledShares.contains(row.share())) {
        continue;
      }
      TopicBackoff topicBackoff = topicBackoffs.get(row.topic());
      if (topicBackoff != null && !topicBackoff.due()) {
        round.stalledShares.add(row.share());
        pausedShares.put(row.share(), row.topic());
        continue;
      }
      if (round.ended.get() == Boolean.FALSE) {
        break; // stopped by a failed record of this round: the rest stays pending, unsent
      }
      Sent attempt = new Sent(row);
      round.sent.add(attempt);
      if (row.partition() != null && topicsWithMissingPartitions.contains(row.topic())) {
        int partitions = partitionCount(round.sender, row.topic());
        if (partitions > 0 && row.partition() >= partitions) {
          attempt.error =
              new PublishErrors.MissingPartitionException(
                  row.topic(), row.partition(), partitions);
          continue;
        }
      }
      try {
        attempt.future =
            round.sender.send(
                row.toRecord(),
                (metadata, error) -> {
                  if (error != null) {
                    stopAfterFailure(round, error);
                  }
                });
      } catch (IllegalStateException e) {
        if (round.ended.get() == Boolean.FALSE) {
          attempt.error = e; // closed meanwhile by a failed record of this round
          break;
        }
        throw e;
      } catch (IllegalArgumentException | KafkaException e) {
        attempt.error = e;
        if (!PublishErrors.isPoison(e)) {
          round.stalledShares.add(row.share());
          if (!(e instanceof ApiException) && !(e instanceof IllegalArgumentException)) {
            round.producerBroken = true;
            break;
          }
        }
        continue;
      }
      // A send that could not even start (metadata timeout) fails at once: later rows of the share
      // must not overtake it, and other rows of its topic would wait max.block.ms each.
      Throwable immediate = immediateFailure(attempt.future);
      if (immediate != null && row.partition() != null) {
        progressWithin(maxBlockNanos);
        int partitions = partitionCount(round.sender, row.topic());
        if (partitions > 0 && row.partition() >= partitions) {
          immediate =
              new PublishErrors.MissingPartitionException(
                  row.topic(), row.partition(), partitions);
          attempt.error = immediate;
          topicsWithMissingPartitions.add(row.topic());
        }
      }
      if (immediate != null && !PublishErrors.isPoison(immediate)) {
        round.stalledShares.add(row.share());
        backOffTopic(row.topic());
        pausedShares.put(row.share(), row.topic());
      }
    }
    // Bounded: a producer that never gets its acknowledgements is closed by the watchdog, which
    // fails its unfinished sends and so ends the flush; a new producer sends them again. Whoever
    // ends the round first decides (round.ended): the flush, or the watchdog (abandoned).
    Producer<byte[], byte[]> sender = round.sender;
    AtomicReference<Boolean> roundEnded = round.ended;
    round.bound =
        watchdog.schedule(
            () ->
                abandon(
                    round,
                    "sent rows not acknowledged within the publishTimeout of "
                        + config.publishTimeout()),
            config.publishTimeout().toNanos(),
            TimeUnit.NANOSECONDS);
    // Started at once rather than after the producer's linger, so that the acknowledgements come
    // back while this thread reads the next round and removes the previous one. The bound ends
    // with the flush: the database work that follows is not the producer's fault.
    ScheduledFuture<?> bound = round.bound;
    round.flushing =
        flusher.submit(
            () -> {
              try {
                sender.flush();
              } finally {
                if (roundEnded.compareAndSet(null, Boolean.TRUE)) {
                  bound.cancel(false);
                }
              }
              return null;
            });
  }

  /**
   * Waits for the flush of {@code round} and collects its outcome. Bounded by the watchdog (which
   * closes the producer, and so ends the flush), and here as well, a little later, in case closing
   * the producer does not end it.
   */
  private void awaitAcknowledgements(Round round) {
    progressWithin(config.publishTimeout().toNanos() + CLOSE_GRACE.toNanos());
    try {
      round.flushing.get(
          config.publishTimeout().toNanos() + CLOSE_GRACE.toNanos(), TimeUnit.NANOSECONDS);
    } catch (InterruptedException e) {
      // Only close() interrupts, as a last resort: nothing must go on sending these rows.
      abandon(round, "the relay thread was interrupted while waiting for acknowledgements");
    } catch (TimeoutException | CancellationException e) {
      abandon(round, "the flush did not end after the producer was closed");
    } catch (ExecutionException e) {
      LOG.debug("relay {}: flush failed", config.name(), e.getCause());
    }
    progressWithin(0);
    round.bound.cancel(false);
    // Ended by the flusher (or, interrupted, here) unless the watchdog came first: then this
    // producer is closed (or being closed).
    round.ended.compareAndSet(null, Boolean.TRUE);
    round.abandoned = round.ended.get() == Boolean.FALSE;
    if (round.abandoned) {
      // Replaced before the next round even if the bookkeeping below fails.
      abandonedProducer = round.sender;
    }
    // Topics with a failed row back off one step per round, not one per row: a round of 500
    // failed rows once doubled the topic's delay 500 times, straight to its maximum of 30 s.
    Set<String> failedTopics = new HashSet<>();
    Set<String> ackedTopics = new HashSet<>();
    for (Sent attempt : round.sent) {
      attempt.collect();
      if (attempt.metadata == null
          && round.abandoned
          && !PublishErrors.isPoison(attempt.error)) {
        attempt.error =
            new org.apache.kafka.common.errors.TimeoutException(
                "not acknowledged: "
                    + round.abandonReason
                    + "; the producer was closed, a new one sends the row again");
      }
      if (attempt.metadata != null) {
        round.acked.add(attempt);
        ackedTopics.add(attempt.row.topic());
      } else if (attempt.error != null && PublishErrors.isPoison(attempt.error)) {
        round.poison.add(attempt);
      } else {
        round.failed.add(attempt);
        // An abandoned producer is no fault of the topic: its shares are not paused.
        if (attempt.error != null && !stopping && !round.abandoned) {
          failedTopics.add(attempt.row.topic());
          pausedShares.put(attempt.row.share(), attempt.row.topic());
        }
      }
    }
    for (String topic : failedTopics) {
      backOffTopic(topic);
    }
    // A topic acknowledged in this round and failed in none of its rows has recovered.
    ackedTopics.removeAll(failedTopics);
    topicBackoffs.keySet().removeAll(ackedTopics);
  }

  /** Removes, parks and counts what became of {@code round}'s rows, and reports it. */
  private BatchOutcome finish(Session current, Round round) throws SQLException {
    removePublished(current, round.acked);
    round.removed = round.acked.size();
    park(current, round.poison);
    if (!stopping) {
      countFailures(current, round.failed);
    }
    metrics.published(round.acked.size());
    metrics.failed(round.poison.size() + (stopping ? 0 : round.failed.size()));
    int notPublished = round.rows.size() - round.acked.size() - round.poison.size();
    round.reported = true;
    notifyListener(
        listener ->
            listener.batchFinished(
                round.shares, round.acked.size(), round.poison.size(), notPublished));
    if (!round.failed.isEmpty() && !stopping) {
      Sent first = round.failed.get(0);
      LOG.warn(
          "relay {}: {} of {} rows not published (first: id {} topic {}: {}); backing off",
          config.name(),
          round.failed.size(),
          round.rows.size(),
          first.row.id(),
          first.row.topic(),
          first.error == null ? "not acknowledged" : PublishErrors.describe(first.error));
    }
    if (round.producerBroken) {
      throw new KafkaException(
          "the producer failed", round.sent.get(round.sent.size() - 1).error);
    }
    if (round.abandoned && !stopping) {
      if (!round.poison.isEmpty()) {
        // Stopped at a row that can never be sent, now parked: no outage to wait out. The next
        // round starts at once on a new producer (abandonedProducer), so that a run of such rows
        // (records above the topic's max.message.bytes) costs a round each, not a backoff each.
        return new BatchOutcome(true, false);
      }
      throw new KafkaException("the round's producer was closed: " + round.abandonReason);
    }
    // Rows skipped only because their topic waits out its backoff are no new trouble: their shares
    // are paused (left out of the next reads), and the other shares go on at full speed.
    return new BatchOutcome(round.rows.size() >= config.batchSize(), !round.failed.isEmpty());
  }

  /**
   * Producer callback of a record that failed for good, on the producer's network thread: ends the
   * round as abandoned and closes its producer at once, from inside the callback, so that no later
   * record of the round is acknowledged after the failure. Kafka's idempotent producer does go on
   * after a refused batch (it bumps its epoch and has the partition's later batches acknowledged):
   * their rows would be removed, and the refused batch's other rows, sent again, would land after
   * them, out of their keys' order. Closed at once, the producer aborts what it has not had
   * acknowledged; the round's poison rows are parked and the rest is sent again, in order, by a
   * new producer. A send that fails in {@code send()} itself (on the relay thread) is handled there.
   */
  private void stopAfterFailure(Round round, Exception error) {
    if (Thread.currentThread() == thread) {
      return;
    }
    if (!round.ended.compareAndSet(null, Boolean.FALSE)) {
      return; // ended already (this, the flush or the watchdog): its producer is closed or done
    }
    round.abandonReason = "a record of the round failed (" + error + ")";
    LOG.warn(
        "relay {}: a record failed ({}); closing the producer so that nothing sent after it is"
            + " acknowledged before it: the round's other unacknowledged rows are sent again",
        config.name(),
        error.toString());
    try {
      round.sender.close(Duration.ZERO); // from a callback: no wait, the network thread stops
    } catch (RuntimeException | Error e) {
      LOG.error("relay {}: closing the producer after a failed record failed", config.name(), e);
    }
  }

  /**
   * The watchdog's action when a round outlived the publish timeout: closes {@code sender} at once,
   * which fails its unfinished sends (they stay pending) and so ends the relay thread's flush.
   */
  private void abandonProducer(Producer<byte[], byte[]> sender, String reason) {
    LOG.warn(
        "relay {}: {}; closing the producer (its unacknowledged rows stay pending and a new"
            + " producer sends them again)",
        config.name(),
        reason);
    try {
      sender.close(Duration.ZERO);
    } catch (RuntimeException | Error e) {
      LOG.error("relay {}: closing the abandoned producer failed", config.name(), e);
    }
  }

  /**
   * Ends {@code round} as abandoned unless it already ended (one decision between the relay
   * thread, the flusher and the watchdog): closes its producer at once, on a thread of its own
   * (close() waits for the producer's network thread without a bound, and a hung close must not
   * hold up the caller), which fails its unfinished sends and so ends its flush.
   *
   * @return whether this call abandoned it
   */
  private boolean abandon(Round round, String reason) {
    if (!round.ended.compareAndSet(null, Boolean.FALSE)) {
      return false;
    }
    round.abandonReason = reason;
    Thread closer =
        new Thread(() -> abandonProducer(round.sender, reason), config.name() + "-abandon");
    closer.setDaemon(true);
    closer.start();
    return true;
  }

  /**
   * The held shares minus those paused behind a topic that waits out its backoff. A paused share
   * is not even read: its head rows would otherwise fill every batch and starve the other shares.
   */
  private Set<Integer> sendableShares(Set<Integer> held) {
    pausedShares
        .entrySet()
        .removeIf(
            paused -> {
              TopicBackoff backoff = topicBackoffs.get(paused.getValue());
              return backoff == null || backoff.due() || !held.contains(paused.getKey());
            });
    if (pausedShares.isEmpty()) {
      return held;
    }
    Set<Integer> sendable = new TreeSet<>(held);
    sendable.removeAll(pausedShares.keySet());
    return sendable;
  }

  /**
   * The pending rows of {@code shares}, leaving out {@code inFlight} (ids of a round not yet
   * removed). By id, not by a cursor: a row that committed late with an id below the rows in
   * flight must still be read now, before the later rows of its key.
   */
  private List<OutboxRow> readPending(Session current, Set<Integer> shares, Long[] inFlight)
      throws SQLException {
    // Shares are read one after the other until the batch is full; the first share changes every
    // round, so a busy share never starves the ones after it.
    Integer[] ordered = shares.toArray(new Integer[0]);
    int first = Math.floorMod(readRound++, ordered.length);
    Integer[] rotated = new Integer[ordered.length];
    for (int i = 0; i < ordered.length; i++) {
      rotated[i] = ordered[(first + i) % ordered.length];
    }
    List<OutboxRow> rows = read(current, sql.selectPending(), rotated, inFlight, true);
    if (rows == null) {
      LOG.warn("{}: rows of a share did not arrive in id order; reading sorted", config.name());
      rows = read(current, sql.selectPendingSorted(), rotated, inFlight, false);
    }
    return rows;
  }

  /**
   * Runs a pending-rows query. With {@code checkOrder}, returns null if the rows of some share do
   * not arrive in strictly increasing id order (a share's rows must be published in that order,
   * and only a prefix of them may be taken).
   */
  private List<OutboxRow> read(
      Session current, String query, Integer[] shares, Long[] inFlight, boolean checkOrder)
      throws SQLException {
    List<OutboxRow> rows = new ArrayList<>();
    Map<Integer, Long> lastOfShare = new HashMap<>();
    try (PreparedStatement select = current.connection.prepareStatement(query)) {
      select.setArray(1, current.connection.createArrayOf("int4", shares));
      select.setArray(2, current.connection.createArrayOf("int8", inFlight));
      select.setInt(3, config.batchSize());
      select.setInt(4, config.batchSize());
      try (ResultSet rs = select.executeQuery()) {
        while (rs.next()) {
          OutboxRow row = OutboxRow.read(rs);
          Long last = lastOfShare.put(row.share(), row.id());
          if (checkOrder && last != null && last >= row.id()) {
            return null;
          }
          rows.add(row);
        }
      }
    }
    return rows;
  }

  private void removePublished(Session current, List<Sent> acked) throws SQLException {
    if (acked.isEmpty()) {
      return;
    }
    Long[] ids = new Long[acked.size()];
    for (int i = 0; i < ids.length; i++) {
      ids[i] = acked.get(i).row.id();
    }
    Connection connection = current.connection;
    if (!config.archive()) {
      try (PreparedStatement delete = connection.prepareStatement(sql.deletePublished())) {
        delete.setArray(1, connection.createArrayOf("int8", ids));
        delete.executeUpdate();
      }
      return;
    }
    Integer[] partitions = new Integer[ids.length];
    Long[] offsets = new Long[ids.length];
    for (int i = 0; i < ids.length; i++) {
      RecordMetadata metadata = acked.get(i).metadata;
      partitions[i] = metadata.partition();
      offsets[i] = metadata.hasOffset() ? metadata.offset() : null;
    }
    try (PreparedStatement archive = connection.prepareStatement(sql.archivePublished())) {
      archive.setArray(1, connection.createArrayOf("int8", ids));
      archive.setArray(2, connection.createArrayOf("int4", partitions));
      archive.setArray(3, connection.createArrayOf("int8", offsets));
      archive.executeUpdate();
    }
  }

  private void park(Session current, List<Sent> poison) throws SQLException {
    if (poison.isEmpty()) {
      return;
    }
    Timestamp now = Timestamp.from(config.clock().instant());
    try (PreparedStatement park = current.connection.prepareStatement(sql.park())) {
      for (Sent attempt : poison) {
        park.setTimestamp(1, now);
        park.setString(2, PublishErrors.describe(attempt.error));
        park.setLong(3, attempt.row.id());
        park.addBatch();
        LOG.warn(
            "relay {}: parked outbox row {} (message {}, topic {}): {}",
            config.name(),
            attempt.row.id(),
            attempt.row.messageId(),
            attempt.row.topic(),
            PublishErrors.describe(attempt.error));
      }
      park.executeBatch();
    }
  }

  private void countFailures(Session current, List<Sent> failed) throws SQLException {
    List<Sent> withError = new ArrayList<>();
    for (Sent attempt : failed) {
      if (attempt.error != null) {
        withError.add(attempt);
      }
    }
    if (withError.isEmpty()) {
      return;
    }
    try (PreparedStatement count = current.connection.prepareStatement(sql.countFailure())) {
      for (Sent attempt : withError) {
        count.setString(1, PublishErrors.describe(attempt.error));
        count.setLong(2, attempt.row.id());
        count.addBatch();
      }
      count.executeBatch();
    }
  }

  private void backOffTopic(String topic) {
    long max = Math.max(config.maxBackoff().toNanos(), MAX_TOPIC_BACKOFF.toNanos());
    topicBackoffs
        .computeIfAbsent(topic, t -> new TopicBackoff())
        .failed(config.initialBackoff().toNanos(), max);
  }

  /**
   * The partition count of {@code topic} in {@code sender}'s metadata, 0 if unknown. Asked only
   * after a send with an explicit partition failed at once: the producer's wait for metadata showing
   * that partition has just refreshed the count.
   */
  private static int partitionCount(Producer<byte[], byte[]> sender, String topic) {
    try {
      List<org.apache.kafka.common.PartitionInfo> partitions = sender.partitionsFor(topic);
      return partitions == null ? 0 : partitions.size();
    } catch (KafkaException e) {
      return 0;
    }
  }

  private static Throwable immediateFailure(Future<RecordMetadata> future) {
    if (!future.isDone()) {
      return null;
    }
    try {
      future.get();
      return null;
    } catch (ExecutionException e) {
      return e.getCause() == null ? e : e.getCause();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return e;
    } catch (RuntimeException e) {
      return e;
    }
  }

  // ---------------------------------------------------------------- session end

  private void loseSession() {
    Session lost = session;
    session = null;
    heldWakeSlot = -1;
    if (lost == null) {
      return;
    }
    lost.stopKeepalive();
    Set<Integer> shares = lost.leases.forgetAll();
    owned = Set.of();
    abortQuietly(lost.connection, true);
    if (!shares.isEmpty()) {
      notifyListener(listener -> listener.sharesReleased(shares, true));
    }
  }

  private void releaseSession() {
    Session current = session;
    if (current == null) {
      return;
    }
    Set<Integer> shares = current.leases.held();
    if (!shares.isEmpty()) {
      notifyListener(listener -> listener.sharesReleased(shares, false));
    }
    current.stopKeepalive();
    if (current.keepalive != null && !keepaliveIdle()) {
      LOG.debug("relay {}: a keepalive still runs; dropping the session", config.name());
      loseSession();
      return;
    }
    try {
      current.leases.releaseAll();
      if (current.keepalive != null) {
        try (Statement reset = current.connection.createStatement()) {
          reset.execute("RESET idle_session_timeout"); // a pool may hand the session out again
        }
      }
      if (current.notifications != null) {
        try (Statement unlisten = current.connection.createStatement()) {
          unlisten.execute("UNLISTEN *");
        }
      }
      session = null;
      heldWakeSlot = -1;
      owned = Set.of();
      current.connection.close();
      LOG.info("relay {}: stopped, shares {} released", config.name(), describe(shares));
    } catch (SQLException | RuntimeException e) {
      LOG.debug("relay {}: releasing the session failed; dropping it", config.name(), e);
      loseSession();
    }
  }

  /**
   * Ends the physical session, so that PostgreSQL drops its advisory locks even if the connection
   * came from a pool (a pooled connection returned with its locks would keep the shares forever,
   * and the next session the pool hands this relay could be this very one). The driver's
   * connection is reached through {@code unwrap(PGConnection.class)}: {@code
   * unwrap(Connection.class)} may return the pool's wrapper itself (Commons DBCP does, as JDBC
   * allows). If it cannot be reached and {@code mayWait} (not while another thread may be stuck
   * in a statement on it), the session gives up its locks and notifications before the wrapper
   * goes back to the pool.
   */
  private static void abortQuietly(Connection connection, boolean mayWait) {
    boolean ended = false;
    try {
      if (connection.isWrapperFor(PGConnection.class)
          && connection.unwrap(PGConnection.class) instanceof Connection physical) {
        physical.close();
        ended = true;
      }
    } catch (SQLException | RuntimeException e) {
      // best effort: the statements below, then closing the wrapper
    }
    if (!ended && mayWait) {
      boolean autoCommit = true;
      try {
        autoCommit = connection.getAutoCommit();
        if (!autoCommit) {
          connection.rollback(); // out of a failed transaction block, if any
        }
      } catch (SQLException | RuntimeException e) {
        // a broken session: the pool drops it
      }
      for (String reset :
          List.of("SELECT pg_advisory_unlock_all()", "UNLISTEN *", "RESET idle_session_timeout")) {
        try (Statement statement = connection.createStatement()) {
          statement.execute(reset);
          if (!autoCommit) {
            connection.commit(); // UNLISTEN and RESET take effect at commit
          }
        } catch (SQLException | RuntimeException e) {
          // go on with the others: each gives something up
        }
      }
    }
    try {
      connection.close();
    } catch (SQLException | RuntimeException e) {
      // the session is gone either way
    }
  }

  /** Shares as ranges for logs: {@code 0-3,7,9-12}. */
  static String describe(Set<Integer> shares) {
    StringBuilder text = new StringBuilder();
    int start = -2;
    int previous = -2;
    for (int share : new TreeSet<>(shares)) {
      if (share != previous + 1) {
        appendRange(text, start, previous);
        start = share;
      }
      previous = share;
    }
    appendRange(text, start, previous);
    return text.length() == 0 ? "none" : text.toString();
  }

  private static void appendRange(StringBuilder text, int start, int end) {
    if (start < 0) {
      return;
    }
    if (text.length() > 0) {
      text.append(',');
    }
    text.append(start);
    if (end > start) {
      text.append('-').append(end);
    }
  }

  private void sleep(long nanos) {
    long deadline = System.nanoTime() + nanos;
    while (!stopping) {
      long remaining = deadline - System.nanoTime();
      if (remaining <= 0) {
        return;
      }
      progressWithin(0);
      LockSupport.parkNanos(Math.min(remaining, MAX_WAIT_SLICE_NANOS));
    }
  }

  private void notifyListener(java.util.function.Consumer<OutboxRelay.Listener> event) {
    // A listener gets the lease timeout, whatever bound the relay thread declared before it.
    progressWithin(0);
    try {
      event.accept(config.listener());
    } catch (VirtualMachineError e) {
      throw e;
    } catch (RuntimeException | Error e) {
      // An Error of a listener's own (an assertion, a class it cannot load) is the listener's
      // failure, not the relay's: it must not end the relay thread.
      LOG.warn("relay {}: listener failed", config.name(), e);
    }
  }

  // ---------------------------------------------------------------- small types

  /**
   * The lease connection with its notification handle (null when polling only), leases, backend
   * process id (0 if the connection is not a PostgreSQL JDBC one) and keepalive (null without a
   * lease timeout).
   */
  private record Session(
      Connection connection,
      PGConnection notifications,
      ShareLeases leases,
      int backendPid,
      String backendStart,
      ScheduledFuture<?> keepalive) {
    void stopKeepalive() {
      if (keepalive != null) {
        keepalive.cancel(false);
      }
    }
  }

  private record BatchOutcome(boolean full, boolean troubled) {
    static final BatchOutcome EMPTY = new BatchOutcome(false, false);
  }

  /** One round: rows read together, handed to one producer, flushed and settled together. */
  private static final class Round {
    final List<OutboxRow> rows;
    final Set<Integer> shares;
    final Producer<byte[], byte[]> sender;
    final List<Sent> sent = new ArrayList<>();
    final Set<Integer> stalledShares = new HashSet<>();
    final List<Sent> acked = new ArrayList<>();
    final List<Sent> poison = new ArrayList<>();
    final List<Sent> failed = new ArrayList<>();

    /** Set by the relay thread (true: round ended first) or the watchdog (false), once. */
    final AtomicReference<Boolean> ended = new AtomicReference<>();

    boolean producerBroken;
    boolean abandoned;

    /** Why the round was abandoned (set with {@link #ended} false, before the producer closes). */
    volatile String abandonReason;

    /** Whether batchFinished was called for it. */
    boolean reported;

    /** Acknowledged rows already removed (for a round given up after that). */
    int removed;
    ScheduledFuture<?> bound;
    Future<?> flushing;

    Round(List<OutboxRow> rows, Set<Integer> shares, Producer<byte[], byte[]> sender) {
      this.rows = rows;
      this.shares = shares;
      this.sender = sender;
    }

    /** Every row was handed to the producer without an error: the next round may be read. */
    boolean sentCleanly() {
      return !producerBroken && stalledShares.isEmpty() && sent.size() == rows.size();
    }

    /** Every row was acknowledged or is poison: the round read ahead may be sent. */
    boolean acknowledgedCleanly() {
      return sentCleanly() && !abandoned && failed.isEmpty();
    }

    Long[] ids() {
      Long[] ids = new Long[rows.size()];
      for (int i = 0; i < ids.length; i++) {
        ids[i] = rows.get(i).id();
      }
      return ids;
    }

  }

  /** One row handed to the producer, and what became of it. */
  private static final class Sent {
    final OutboxRow row;
    Future<RecordMetadata> future;
    RecordMetadata metadata;
    Throwable error;

    Sent(OutboxRow row) {
      this.row = row;
    }

    /** Reads the outcome after the flush; an unfinished send (forced close) counts as failed. */
    void collect() {
      if (error != null || future == null || !future.isDone()) {
        return;
      }
      try {
        metadata = future.get();
      } catch (ExecutionException e) {
        error = e.getCause() == null ? e : e.getCause();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        error = e;
      } catch (RuntimeException e) {
        error = e;
      }
    }
  }

  /** Exponential backoff of a topic whose sends could not start (e.g. no metadata). */
  private static final class TopicBackoff {
    private long delayNanos;
    private long retryAt;

    boolean due() {
      return System.nanoTime() - retryAt >= 0;
    }

    void failed(long initialNanos, long maxNanos) {
      delayNanos = delayNanos == 0 ? initialNanos : Math.min(delayNanos * 2, maxNanos);
      retryAt = System.nanoTime() + delayNanos;
    }
  }
}
