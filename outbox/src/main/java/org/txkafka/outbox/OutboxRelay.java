package org.txkafka.outbox;

import java.time.Clock;
import java.time.Duration;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;
import javax.sql.DataSource;
import org.txkafka.outbox.internal.JdbcOutboxRelay;
import org.txkafka.outbox.internal.RelayConfig;

/**
 * Publishes committed outbox rows to Kafka. Build one with {@link Outbox#relay()}, {@link #start()}
 * it, and {@link #close()} it at shutdown. Any number of relays may run against one outbox, in one
 * process or many: they split the {@value Outbox#SHARE_COUNT} shares of the outbox between them.
 *
 * <pre>{@code
 * OutboxRelay relay = Outbox.relay()
 *     .dataSource(dataSource)
 *     .producerProperty("bootstrap.servers", "kafka:9092")
 *     .build();
 * relay.start();
 * ...
 * relay.close();
 * }</pre>
 *
 * <h2>Guarantees</h2>
 *
 * <ul>
 *   <li>Every committed row is published at least once (idempotent producer, {@code acks=all}),
 *       with its topic, key, headers, explicit partition if any, and the {@link
 *       Outbox#MESSAGE_ID_HEADER} header that stays the same across resends. A row is removed from
 *       the outbox (deleted, or moved to the archive table) only after Kafka acknowledged it.
 *   <li>No committed row is ever skipped: there is no id cursor. Each round reads the rows that are
 *       pending now, so a transaction that took a lower id and committed later is simply found by a
 *       later round.
 *   <li>Per-key order follows the order in which rows became visible (commit order), whatever
 *       order their ids were taken in: each share is read in id order, and at commit, under
 *       transaction-scoped per-key locks taken in a fixed order, a transaction that a higher id of
 *       one of its keys overtook gets new, higher ids (the order trigger of the migrations).
 *       Duplicates are possible only across a failure (a relay killed, or its database
 *       session lost, between Kafka's acknowledgement and the delete); then the resent rows follow
 *       their first copies in the same order, so a receiver that removes duplicates by message id
 *       (the txkafka inbox) sees every key in order.
 *   <li>Each share is published by at most one relay at a time: a relay holds a PostgreSQL
 *       session-level advisory lock per share on one dedicated connection, and reads and deletes
 *       rows on that same connection, so a relay whose session ended can neither read nor remove
 *       rows. A relay that dies loses its locks with its session, and the others take its shares
 *       over at their next lease check.
 *   <li>A row that can never be sent (record too large, invalid topic, not authorised, partition
 *       out of range) is parked with its error and does not block other rows; list and replay
 *       parked rows with {@link OutboxAdmin}.
 * </ul>
 *
 * <h2>Limits</h2>
 *
 * <ul>
 *   <li>Duplicates: a relay that dies (or whose database session ends) after Kafka acknowledged a
 *       batch and before the rows were removed leaves that batch to be sent again, by itself or by
 *       the next owner of the shares. So does a round not acknowledged within {@link
 *       Builder#publishTimeout(Duration)}: its rows are sent again by a new producer, and any that
 *       had reached Kafka arrive twice. Receivers remove duplicates by message id.
 *   <li>A relay whose database session ends in the middle of a batch may still finish sending it
 *       while another relay already took the shares over: the relay pipelines two rounds, so the
 *       overlap is at most the two batches of a pipeline (the one being removed and the one in
 *       flight), and after duplicates are removed every key is still in order. A relay that is
 *       frozen (long GC pause, SIGSTOP, a paused VM) keeps its shares for {@link
 *       Builder#leaseTimeout(Duration)} (30 s by default), after which PostgreSQL ends its session;
 *       with the timeout off, until it resumes or its session ends otherwise (turn on TCP
 *       keepalives so that a dead network path ends it).
 *   <li>Sealing serialises the commits of transactions that send the same key (only their last
 *       step, after their own statements). A transaction with more than 256 distinct keys locks
 *       the shares of its rows instead, so that it never needs more than 64 locks.
 *   <li>A parked row has left its key's order: later rows of the key are published meanwhile, and a
 *       replayed row comes after them.
 *   <li>Rows for a topic that does not exist (or an explicit partition out of range) wait, they are
 *       not parked: each retry may block the relay thread for the producer's {@code max.block.ms}
 *       (10 s unless set), at most once per topic backoff (up to 30 s), and the shares of those rows
 *       are paused meanwhile, with every other key of those shares.
 *   <li>Lowering {@code delivery.timeout.ms} lets the producer give up on a record; it is then sent
 *       again later, possibly after later records of its key.
 *   <li>At most {@value Outbox#SHARE_COUNT} relays have work; more are standbys. A relay keeps one
 *       batch of rows in memory: size {@link Builder#batchSize(int)} for your largest payloads.
 *   <li>The archive table ({@link Builder#archive(boolean)}) is never pruned by the relay.
 * </ul>
 *
 * <p>Implementations are thread-safe: {@link #start()}, {@link #close()} and the getters may be
 * called from any thread. The relay does its work on one thread of its own (not a daemon thread:
 * close the relay at shutdown).
 */
public interface OutboxRelay extends AutoCloseable {

  /**
   * Starts the relay thread and returns at once; the relay then connects, takes its fair part of the
   * shares and publishes. Database and broker failures are retried with backoff, never thrown here.
   *
   * @throws IllegalStateException if the relay was already started or closed
   * @throws org.apache.kafka.common.KafkaException if the producer properties are rejected by the
   *     Kafka client
   */
  void start();

  /**
   * Stops the relay: it sends no new row, waits up to {@link Builder#closeTimeout(Duration)} for the
   * rows already sent to be acknowledged and removed (rows not acknowledged by then stay pending, to
   * be published again later), releases its shares and closes its producer and its connection.
   * Idempotent; does not throw.
   */
  @Override
  void close();

  /**
   * Whether the relay was started, is not closed, and was not stopped by an {@link Error} (out of
   * memory, a stack overflow: it then logged why, gave its shares back and publishes nothing more;
   * close it and start a new one). An Error thrown by a {@link Listener} is logged and ignored.
   */
  boolean isRunning();

  /** The shares this relay holds now (a snapshot; empty before start and after close). */
  Set<Integer> ownedShares();

  /** The relay's name, as configured with {@link Builder#name(String)}. */
  String name();

  /**
   * Callbacks for observing a relay: logging, tests, custom metrics. Every method has a no-op
   * default. They are called on the relay thread, must be quick, and must not throw (an exception
   * thrown is logged and ignored). A callback that does not return within {@link
   * Builder#leaseTimeout(Duration)} counts as a stuck relay thread: the relay's lease session is
   * left to end, and its shares go to another relay.
   */
  interface Listener {

    /** The relay now holds {@code shares} in addition to the ones it held. */
    default void sharesAcquired(Set<Integer> shares) {}

    /**
     * The relay no longer publishes {@code shares}. With {@code lost} false it gives them back: this
     * is called after the last batch that touched them finished and just before their locks are
     * released, so another relay can only take them after this call. With {@code lost} true its
     * database session ended (PostgreSQL already freed the locks); a batch it was sending then may
     * still complete, and is published again by the next owner (at least once).
     */
    default void sharesReleased(Set<Integer> shares, boolean lost) {}

    /**
     * A batch of {@code rows} rows of {@code shares} is about to be sent; the relay held those shares
     * when it read the rows. While batches come back full, the next one may start before the one
     * before it finished (it is read while that one waits for Kafka, and sent once all of that one's
     * rows were acknowledged or parked): at most two are open at a time, and {@link
     * #batchFinished} reports them in the order they started.
     */
    default void batchStarting(Set<Integer> shares, int rows) {}

    /**
     * The oldest open batch (started with {@link #batchStarting}) is over: {@code published} rows were
     * acknowledged and removed, {@code parked} rows were parked, {@code failed} rows stay pending.
     */
    default void batchFinished(Set<Integer> shares, int published, int parked, int failed) {}
  }

  /**
   * Configures an {@link OutboxRelay}. Every value is validated by {@link #build()}, which names the
   * setting, the value and the rule when one is wrong. Not thread-safe.
   */
  final class Builder {
    /** Default of {@link #schema(String)}. */
    public static final String DEFAULT_SCHEMA = Outbox.DEFAULT_SCHEMA;
    /** Default of {@link #batchSize(int)}. */
    public static final int DEFAULT_BATCH_SIZE = 500;
    /** Largest {@link #batchSize(int)}. */
    public static final int MAX_BATCH_SIZE = 10_000;
    /** Default of {@link #pollInterval(Duration)}. */
    public static final Duration DEFAULT_POLL_INTERVAL = Duration.ofSeconds(1);
    /** Default of {@link #leaseCheckInterval(Duration)}. */
    public static final Duration DEFAULT_LEASE_CHECK_INTERVAL = Duration.ofSeconds(1);
    /** Default of {@link #leaseTimeout(Duration)}. */
    public static final Duration DEFAULT_LEASE_TIMEOUT = Duration.ofSeconds(30);
    /** Default of {@link #retryBackoff(Duration, Duration)}: first wait. */
    public static final Duration DEFAULT_INITIAL_BACKOFF = Duration.ofMillis(100);
    /** Default of {@link #retryBackoff(Duration, Duration)}: longest wait. */
    public static final Duration DEFAULT_MAX_BACKOFF = Duration.ofSeconds(5);
    /** Default of {@link #closeTimeout(Duration)}. */
    public static final Duration DEFAULT_CLOSE_TIMEOUT = Duration.ofSeconds(30);
    /**
     * The producer's {@code batch.size} unless {@link #producerProperties} set it: a batch of rows
     * handed to the producer becomes few produce requests, so its acknowledgements, which the relay
     * waits for, come sooner. Memory stays bounded by {@code buffer.memory}.
     */
    public static final int DEFAULT_PRODUCER_BATCH_BYTES = 256 * 1024;
    /** Default of {@link #publishTimeout(Duration)}. */
    public static final Duration DEFAULT_PUBLISH_TIMEOUT = Duration.ofMinutes(2);
    /** Default of {@link #statsInterval(Duration)}. */
    public static final Duration DEFAULT_STATS_INTERVAL = Duration.ofSeconds(10);

    private DataSource dataSource;
    private String schema = DEFAULT_SCHEMA;
    private final Map<String, Object> producerProperties = new LinkedHashMap<>();
    private int batchSize = DEFAULT_BATCH_SIZE;
    private Duration pollInterval = DEFAULT_POLL_INTERVAL;
    private boolean listenNotify = true;
    private Duration leaseCheckInterval = DEFAULT_LEASE_CHECK_INTERVAL;
    private Duration leaseTimeout;
    private boolean leaseTimeoutGiven;
    private Duration initialBackoff = DEFAULT_INITIAL_BACKOFF;
    private Duration maxBackoff = DEFAULT_MAX_BACKOFF;
    private Duration closeTimeout = DEFAULT_CLOSE_TIMEOUT;
    private Duration publishTimeout = DEFAULT_PUBLISH_TIMEOUT;
    private Duration statsInterval = DEFAULT_STATS_INTERVAL;
    private boolean archive;
    private String name;
    private Clock clock = Clock.systemUTC();
    private Object meterRegistry;
    private Listener listener;

    /** Use {@link Outbox#relay()}. */
    public Builder() {}

    /**
     * Where the outbox lives. Required. The relay holds one connection of it for as long as it runs
     * (its leases are session-level advisory locks on that connection), so it must be a real
     * session: not a PgBouncer in transaction pooling mode. A pool's leak detection may report that
     * connection; raise its threshold or give the relay a data source of its own.
     */
    public Builder dataSource(DataSource dataSource) {
      this.dataSource = dataSource;
      return this;
    }

    /** Schema of the outbox tables, a lower-case unquoted identifier. Defaults to {@code public}. */
    public Builder schema(String schema) {
      this.schema = schema;
      return this;
    }

    /**
     * Kafka producer properties ({@code bootstrap.servers} is required). The relay sets {@code
     * enable.idempotence=true}, {@code acks=all}, byte-array serializers, {@code
     * delivery.timeout.ms} to its maximum (the producer retries transient errors itself, in order)
     * and {@code max.block.ms=10000} unless given. Values that would weaken delivery ({@code
     * acks} other than all, idempotence off, {@code retries=0}, {@code
     * max.in.flight.requests.per.connection} above 5, other serializers, a {@code transactional.id})
     * are refused by {@link #build()}.
     */
    public Builder producerProperties(Map<String, ?> properties) {
      Objects.requireNonNull(properties, "producerProperties must not be null");
      producerProperties.putAll(properties);
      return this;
    }

    /** Kafka producer properties from a {@link Properties}; see {@link #producerProperties(Map)}. */
    public Builder producerProperties(Properties properties) {
      Objects.requireNonNull(properties, "producerProperties must not be null");
      for (String name : properties.stringPropertyNames()) {
        producerProperties.put(name, properties.getProperty(name));
      }
      return this;
    }

    /** One Kafka producer property; see {@link #producerProperties(Map)}. */
    public Builder producerProperty(String name, Object value) {
      producerProperties.put(name, value);
      return this;
    }

    /** Most rows per round trip to PostgreSQL and Kafka, 1 to 10,000. Defaults to 500. */
    public Builder batchSize(int batchSize) {
      this.batchSize = batchSize;
      return this;
    }

    /**
     * How long an idle relay waits before it looks for rows without being woken by a notification:
     * the fallback for lost notifications, and the only trigger when {@link #listenNotify(boolean)}
     * is off. 10 ms to 1 hour. Defaults to 1 second.
     */
    public Builder pollInterval(Duration pollInterval) {
      this.pollInterval = pollInterval;
      return this;
    }

    /**
     * Whether to wake on the {@code txkafka_outbox} notification sent at each commit that wrote to
     * the outbox (LISTEN/NOTIFY). Turn it off to poll only. Defaults to true.
     */
    public Builder listenNotify(boolean listenNotify) {
      this.listenNotify = listenNotify;
      return this;
    }

    /**
     * How often the relay counts the running relays and takes free shares or gives back surplus
     * ones: a dead relay's shares are taken over within about this long. 50 ms to 1 minute.
     * Defaults to 1 second.
     */
    public Builder leaseCheckInterval(Duration leaseCheckInterval) {
      this.leaseCheckInterval = leaseCheckInterval;
      return this;
    }

    /**
     * How long a frozen relay keeps its shares: the relay's database session is ended by
     * PostgreSQL ({@code idle_session_timeout}) when it sent no statement for this long, which
     * frees its shares for the other relays. A running relay keeps its session busy, from a
     * keepalive thread, even while it waits for Kafka; a relay whose whole process stands still
     * (SIGSTOP, a paused VM, a GC pause this long) does not, and its shares are taken over about
     * this long plus a lease check interval after it stopped. When it runs again it notices the
     * ended session at its next statement and gives up its shares; what it had in flight may
     * still reach Kafka, as duplicates that receivers remove by message id, in per-key order
     * after that. {@link Duration#ZERO} turns it off (a frozen relay then keeps its shares until
     * it runs again or its network connection breaks). The keepalive also stops when the relay
     * thread itself is stuck (a listener that never returns) for longer than the bound of what it
     * was doing (a send: the producer's {@code max.block.ms}; waiting for acknowledgements: {@link
     * #publishTimeout(Duration)}) plus this timeout, so a stuck relay loses its shares in at most
     * about twice this; if its thread resumes, it confirms its session before it sends again and
     * sends nothing it read before if the session ended. A process frozen while the server is
     * still sending it a large batch leaves the session busy rather than idle. PostgreSQL 14 or
     * later; where the server has no such setting or refuses it, the relay logs a warning and runs
     * without it. At least 3 x {@link #leaseCheckInterval(Duration)}, at most 1 hour. Defaults to
     * 30 seconds, or to 3 x the lease check interval when that is longer.
     */
    public Builder leaseTimeout(Duration leaseTimeout) {
      this.leaseTimeout = leaseTimeout;
      this.leaseTimeoutGiven = true;
      return this;
    }

    /**
     * Backoff after a failed round (database or Kafka unavailable): starts at {@code initial},
     * doubles to {@code max}. {@code initial} at least 1 ms, {@code max} at least {@code initial}
     * and at most 10 minutes. Defaults to 100 ms and 5 seconds.
     */
    public Builder retryBackoff(Duration initial, Duration max) {
      this.initialBackoff = initial;
      this.maxBackoff = max;
      return this;
    }

    /**
     * How long {@link OutboxRelay#close()} waits for sent rows to be acknowledged before it gives
     * them back (they stay pending). 0 to 10 minutes. Defaults to 30 seconds.
     */
    public Builder closeTimeout(Duration closeTimeout) {
      this.closeTimeout = closeTimeout;
      return this;
    }

    /**
     * How long one round waits for Kafka to acknowledge the rows it sent. Past it, the relay gives
     * up on its producer: the producer is closed at once (its unacknowledged rows fail and stay
     * pending, as after any failed send), the round's acknowledged rows are removed as usual, and
     * after the retry backoff a new producer sends the rest again; the far inbox drops any that
     * had reached Kafka. The producer retries transient errors for ever by itself, so without this
     * bound a producer that never gets an answer (a broker that hangs, or an idempotent producer
     * stuck retrying one request, as in KAFKA-15591) would stall the relay's shares for good.
     * 1 second to 1 hour; keep it well above the producer's {@code request.timeout.ms} (30 s by
     * default), so that ordinary retries finish first. Defaults to 2 minutes.
     */
    public Builder publishTimeout(Duration publishTimeout) {
      this.publishTimeout = publishTimeout;
      return this;
    }

    /**
     * How often the gauges (pending rows, oldest pending age, parked rows) are refreshed with a
     * query, when a meter registry is set. 1 second to 1 hour. Defaults to 10 seconds.
     */
    public Builder statsInterval(Duration statsInterval) {
      this.statsInterval = statsInterval;
      return this;
    }

    /**
     * Move published rows to {@code txkafka_outbox_archive} (with their partition and offset)
     * instead of deleting them. Pruning the archive is then up to you. Defaults to false.
     */
    public Builder archive(boolean archive) {
      this.archive = archive;
      return this;
    }

    /**
     * A name for logs, the thread, the producer's {@code client.id} default and metric tags: 1 to
     * 100 characters of letters, digits, '.', '_' or '-'. Defaults to {@code txkafka-relay-} and a
     * random suffix.
     */
    public Builder name(String name) {
      this.name = name;
      return this;
    }

    /** The clock for timestamps the relay writes and for ages it reports. Defaults to UTC. */
    public Builder clock(Clock clock) {
      this.clock = clock;
      return this;
    }

    /**
     * A Micrometer registry to publish meters to (Micrometer is an optional dependency: no
     * Micrometer class is loaded unless this is called). Meters, tagged {@code schema} and {@code relay}: {@code txkafka.outbox.published}
     * and {@code txkafka.outbox.failures} (counters), {@code txkafka.outbox.pending}, {@code
     * txkafka.outbox.parked}, {@code txkafka.outbox.oldest.pending.age} (seconds) and {@code
     * txkafka.outbox.shares.owned} (gauges over the shares this relay holds). Defaults to none.
     */
    public Builder meterRegistry(io.micrometer.core.instrument.MeterRegistry meterRegistry) {
      this.meterRegistry = meterRegistry;
      return this;
    }

    /** A listener for lease and batch events. Defaults to none. */
    public Builder listener(Listener listener) {
      this.listener = listener;
      return this;
    }

    /**
     * Validates the configuration and creates the relay (not started; nothing connects yet).
     *
     * @throws IllegalArgumentException naming the setting, the value and the rule, for the first
     *     invalid setting
     */
    public OutboxRelay build() {
      RelayConfig config =
          RelayConfig.validate(
              dataSource,
              schema,
              producerProperties,
              batchSize,
              pollInterval,
              listenNotify,
              leaseCheckInterval,
              leaseTimeoutGiven
                  ? leaseTimeout
                  : leaseCheckInterval != null
                          && leaseCheckInterval.multipliedBy(3).compareTo(DEFAULT_LEASE_TIMEOUT) > 0
                      ? leaseCheckInterval.multipliedBy(3)
                      : DEFAULT_LEASE_TIMEOUT,
              initialBackoff,
              maxBackoff,
              closeTimeout,
              publishTimeout,
              statsInterval,
              archive,
              name,
              clock,
              meterRegistry,
              listener);
      return new JdbcOutboxRelay(config);
    }
  }
}
