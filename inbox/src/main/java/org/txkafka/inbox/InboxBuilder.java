package org.txkafka.inbox;

import io.micrometer.core.instrument.MeterRegistry;
import jakarta.persistence.EntityManagerFactory;
import java.time.Clock;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.regex.Pattern;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.txkafka.SqlIdentifiers;
import org.txkafka.inbox.internal.InboxRuntime;
import org.txkafka.inbox.internal.InboxSettings;
import org.txkafka.outbox.Outbox;

/**
 * Configures an {@link Inbox}. Obtain one with {@link Inbox#builder()}. Setters only store values;
 * {@link #build()} validates everything at once and fails fast with a message that names the
 * setting, the value and the rule. Not thread-safe; the built inbox is.
 *
 * <p>Required: {@link #kafkaProperties} (at least {@code bootstrap.servers}), {@link #groupId},
 * {@link #topics} or {@link #topicPattern}, {@link #dataSource} or {@link #entityManagerFactory},
 * and {@link #handler} or {@link #batchHandler}.
 *
 * <p><b>Where a new partition starts.</b> On assignment the inbox seeks to the offset stored in
 * {@code txkafka_inbox_offset}. With none stored (the group never committed that partition through
 * the inbox), it starts at the Kafka-committed offset of the group, and without one at {@code
 * auto.offset.reset}: {@code earliest} unless the Kafka properties say {@code latest} (the inbox
 * defaults to earliest, unlike Kafka, so that a new group never silently skips records).
 *
 * <p><b>Limits.</b> Duplicates are recognised only within {@link #dedupRetention}; a message id
 * seen again after its inbox row was removed is applied again. Message ids are unique per consumer
 * group across all its topics. Handler attempts are counted in memory: a crash restarts the count.
 * Memory: at most about {@code maxBatchSize * (queuedBatches + 1) + max.poll.records} records are
 * buffered per assigned partition (the batch in its transaction, the queued ones, one poll's
 * overshoot), besides the Kafka consumer's own fetch buffer ({@code max.partition.fetch.bytes}).
 * A member frozen inside a batch transaction (a long GC pause) holds its partition's
 * offset row lock, so the member that takes the partition over waits until the frozen one resumes
 * (its batch commits first, then the new owner continues after it) or dies; {@link
 * #transactionIdleTimeout} bounds this wait (60 s by default). Effects outside the database (HTTP
 * calls, e-mails) are not covered: a rolled-back attempt may have made them.
 */
public final class InboxBuilder {

  /** Default {@link #schema}: {@value}. */
  public static final String DEFAULT_SCHEMA = "public";

  /** Default {@link #maxBatchSize}: {@value}. */
  public static final int DEFAULT_MAX_BATCH_SIZE = 2000;

  /** Largest allowed {@link #maxBatchSize}: {@value}. */
  public static final int MAX_MAX_BATCH_SIZE = 10_000;

  /**
   * Default {@link #queuedBatches}: {@value}. Three measured a little faster in benchmark row 2 but
   * missed row 7's memory target (the live heap then grows with the length of a drain until the
   * larger buffers are full).
   */
  public static final int DEFAULT_QUEUED_BATCHES = 2;

  /** Largest allowed {@link #queuedBatches}: {@value}. */
  public static final int MAX_QUEUED_BATCHES = 16;

  /** Largest allowed {@link #maxBatchSize} times {@link #queuedBatches}: {@value} records. */
  public static final int MAX_QUEUED_RECORDS = 50_000;

  /** Default {@link #concurrency}: {@value}. */
  public static final int DEFAULT_CONCURRENCY = 4;

  /** Largest allowed {@link #concurrency}: {@value}. */
  public static final int MAX_CONCURRENCY = 256;

  /** Default {@link #maxAttempts}: {@value}. */
  public static final int DEFAULT_MAX_ATTEMPTS = 5;

  /** Default {@link #retryBackoff}: 200 ms. */
  public static final Duration DEFAULT_RETRY_BACKOFF = Duration.ofMillis(200);

  /** Default {@link #maxRetryBackoff}: 30 s. */
  public static final Duration DEFAULT_MAX_RETRY_BACKOFF = Duration.ofSeconds(30);

  /** Default {@link #dedupRetention}: 7 days. */
  public static final Duration DEFAULT_DEDUP_RETENTION = Duration.ofDays(7);

  /** Default {@link #retentionInterval}: 5 minutes. */
  public static final Duration DEFAULT_RETENTION_INTERVAL = Duration.ofMinutes(5);

  /** Default {@link #rejoinTimeout}: 5 minutes. */
  public static final Duration DEFAULT_REJOIN_TIMEOUT = Duration.ofMinutes(5);

  /** Default {@link #closeTimeout}: 30 s. */
  public static final Duration DEFAULT_CLOSE_TIMEOUT = Duration.ofSeconds(30);

  /** Default {@link #transactionIdleTimeout}: 60 s. */
  public static final Duration DEFAULT_TRANSACTION_IDLE_TIMEOUT = Duration.ofSeconds(60);

  /** Default {@link #revocationTimeout}: 15 s. */
  public static final Duration DEFAULT_REVOCATION_TIMEOUT = Duration.ofSeconds(15);

  /** Kafka's default {@code max.poll.interval.ms}, used when the properties do not set it. */
  static final long KAFKA_DEFAULT_MAX_POLL_INTERVAL_MS = 300_000;

  private static final Pattern LEGAL_TOPIC = Pattern.compile("[a-zA-Z0-9._-]{1,249}");

  private final Map<String, Object> kafkaProperties = new HashMap<>();
  private String groupId;
  private List<String> topics;
  private Pattern topicPattern;
  private DataSource dataSource;
  private EntityManagerFactory entityManagerFactory;
  private InboxHandler handler;
  private InboxBatchHandler batchHandler;
  private String schema = DEFAULT_SCHEMA;
  private int maxBatchSize = DEFAULT_MAX_BATCH_SIZE;
  private int queuedBatches = DEFAULT_QUEUED_BATCHES;
  private int concurrency = DEFAULT_CONCURRENCY;
  private int maxAttempts = DEFAULT_MAX_ATTEMPTS;
  private Duration retryBackoff = DEFAULT_RETRY_BACKOFF;
  private Duration maxRetryBackoff = DEFAULT_MAX_RETRY_BACKOFF;
  private String deadLetterTopic;
  private MessageIdExtractor messageIdExtractor = MessageIdExtractor.outboxHeader();
  private Duration dedupRetention = DEFAULT_DEDUP_RETENTION;
  private Duration retentionInterval = DEFAULT_RETENTION_INTERVAL;
  private Duration closeTimeout = DEFAULT_CLOSE_TIMEOUT;
  private Duration rejoinTimeout = DEFAULT_REJOIN_TIMEOUT;
  private Duration revocationTimeout = DEFAULT_REVOCATION_TIMEOUT;
  private Duration transactionIdleTimeout = DEFAULT_TRANSACTION_IDLE_TIMEOUT;
  private Clock clock = Clock.systemUTC();
  private Object meterRegistry;
  private InboxListener listener = new InboxListener() {};

  InboxBuilder() {}

  /**
   * Kafka consumer properties, added to any given before. {@code bootstrap.servers} is required.
   * The inbox sets the byte-array deserializers, {@code group.id} (from {@link #groupId}) and
   * {@code enable.auto.commit=false}; {@code enable.auto.commit=true} is refused because Kafka
   * would then commit offsets the database has not committed. {@code auto.offset.reset} may be
   * {@code earliest} (the default here) or {@code latest}.
   */
  public InboxBuilder kafkaProperties(Map<String, ?> properties) {
    if (properties != null) {
      kafkaProperties.putAll(properties);
    }
    return this;
  }

  /** Kafka consumer properties as {@link Properties}; see {@link #kafkaProperties(Map)}. */
  public InboxBuilder kafkaProperties(Properties properties) {
    if (properties != null) {
      properties.forEach((name, value) -> kafkaProperties.put(String.valueOf(name), value));
    }
    return this;
  }

  /** One Kafka consumer property; see {@link #kafkaProperties(Map)}. */
  public InboxBuilder kafkaProperty(String name, Object value) {
    kafkaProperties.put(name, value);
    return this;
  }

  /**
   * The consumer group: the Kafka group and the key of the inbox rows and stored offsets. Required.
   */
  public InboxBuilder groupId(String groupId) {
    this.groupId = groupId;
    return this;
  }

  /** The topics to subscribe to. Required unless {@link #topicPattern} is given. */
  public InboxBuilder topics(String... topics) {
    // Arrays.asList, not List.of: a null name is refused by build() with its setting named.
    this.topics = topics == null ? null : new ArrayList<>(java.util.Arrays.asList(topics));
    return this;
  }

  /** The topics to subscribe to. Required unless {@link #topicPattern} is given. */
  public InboxBuilder topics(Collection<String> topics) {
    this.topics = topics == null ? null : new ArrayList<>(topics);
    return this;
  }

  /** Subscribe to every topic matching {@code pattern}, instead of {@link #topics}. */
  public InboxBuilder topicPattern(Pattern pattern) {
    this.topicPattern = pattern;
    return this;
  }

  /**
   * Run each batch in a JDBC transaction on a connection of {@code dataSource}. Use a pooled data
   * source with at least {@link #concurrency} + 1 connections. Exactly one of this and {@link
   * #entityManagerFactory} is required.
   */
  public InboxBuilder dataSource(DataSource dataSource) {
    this.dataSource = dataSource;
    return this;
  }

  /**
   * Run each batch in a resource-local JPA transaction of a new entity manager of {@code factory},
   * so the handler can use {@link InboxContext#entityManager()}. The inbox's own SQL runs on that
   * entity manager's connection. Exactly one of this and {@link #dataSource} is required.
   */
  public InboxBuilder entityManagerFactory(EntityManagerFactory factory) {
    this.entityManagerFactory = factory;
    return this;
  }

  /**
   * The code that applies each record, called once per new record. Exactly one of this and {@link
   * #batchHandler} is required.
   */
  public InboxBuilder handler(InboxHandler handler) {
    this.handler = handler;
    return this;
  }

  /**
   * The code that applies the new records of a batch in one call (for example with one multi-row
   * statement), instead of {@link #handler}; when a call fails, the records are retried one at a
   * time, so attempts and dead-lettering stay per record (see {@link InboxBatchHandler}). Exactly
   * one of this and {@link #handler} is required.
   */
  public InboxBuilder batchHandler(InboxBatchHandler batchHandler) {
    this.batchHandler = batchHandler;
    return this;
  }

  /** Schema of the txkafka tables (inbox and outbox). Defaults to {@value #DEFAULT_SCHEMA}. */
  public InboxBuilder schema(String schema) {
    this.schema = schema;
    return this;
  }

  /**
   * Most records of one partition applied in one transaction, 1 to {@value #MAX_MAX_BATCH_SIZE}.
   * Defaults to {@value #DEFAULT_MAX_BATCH_SIZE}. Correctness never depends on it. Larger batches
   * mean fewer commits (each one a WAL flush) and round trips per record; smaller ones mean less
   * work repeated when a batch is rolled back (a failed batch handler call is then applied one
   * record at a time) and shorter waits on a rebalance: lower it when the handler is slow per
   * record, so that a batch stays well within {@link #revocationTimeout}.
   */
  public InboxBuilder maxBatchSize(int maxBatchSize) {
    this.maxBatchSize = maxBatchSize;
    return this;
  }

  /**
   * Fetch-ahead per partition, in batches, 1 to {@value #MAX_QUEUED_BATCHES}: a partition is
   * paused once {@code queuedBatches * maxBatchSize} of its records are fetched and waiting
   * (besides the batch in its transaction), and resumed when a worker took them. More lets the
   * next batches be fetched while one is applied, so a worker rarely waits for a fetch; it costs
   * memory (see the class comment) and, on a rebalance, queued records that are dropped and
   * fetched again by the next owner. {@code maxBatchSize * queuedBatches} must not exceed {@value
   * #MAX_QUEUED_RECORDS}. Defaults to {@value #DEFAULT_QUEUED_BATCHES}. Correctness never depends
   * on it.
   */
  public InboxBuilder queuedBatches(int queuedBatches) {
    this.queuedBatches = queuedBatches;
    return this;
  }

  /**
   * Worker threads: how many partitions are processed in parallel, 1 to {@value #MAX_CONCURRENCY}.
   * Defaults to {@value #DEFAULT_CONCURRENCY}.
   */
  public InboxBuilder concurrency(int concurrency) {
    this.concurrency = concurrency;
    return this;
  }

  /**
   * Handler failures of one record before it is dead-lettered, 1 to 1000. Defaults to {@value
   * #DEFAULT_MAX_ATTEMPTS}. Transient database errors never count. Starts of a record that ended
   * the process (counted in the database, after a batch was lost) count too: such a record is
   * dead-lettered without running the handler after this many.
   */
  public InboxBuilder maxAttempts(int maxAttempts) {
    this.maxAttempts = maxAttempts;
    return this;
  }

  /**
   * First backoff after a failure; it doubles per failure up to {@link #maxRetryBackoff}. Positive.
   * Defaults to 200 ms.
   */
  public InboxBuilder retryBackoff(Duration retryBackoff) {
    this.retryBackoff = retryBackoff;
    return this;
  }

  /** Longest backoff, at least {@link #retryBackoff}. Defaults to 30 s. */
  public InboxBuilder maxRetryBackoff(Duration maxRetryBackoff) {
    this.maxRetryBackoff = maxRetryBackoff;
    return this;
  }

  /**
   * Also forward dead-lettered records to this topic, through the outbox in the dead-lettering
   * transaction (so an outbox relay must run for the schema). Null (the default) forwards nothing.
   */
  public InboxBuilder deadLetterTopic(String topic) {
    this.deadLetterTopic = topic;
    return this;
  }

  /**
   * How to find a record's message id. Defaults to {@link MessageIdExtractor#outboxHeader()}, the
   * header {@value Outbox#MESSAGE_ID_HEADER}.
   */
  public InboxBuilder messageIdExtractor(MessageIdExtractor extractor) {
    this.messageIdExtractor = extractor;
    return this;
  }

  /**
   * How long inbox rows are kept to recognise duplicates, at least 1 s. Defaults to 7 days. Rows of
   * dead letters that were not replayed are kept until they are.
   */
  public InboxBuilder dedupRetention(Duration dedupRetention) {
    this.dedupRetention = dedupRetention;
    return this;
  }

  /** How often expired inbox rows are removed. Positive. Defaults to 5 minutes. */
  public InboxBuilder retentionInterval(Duration retentionInterval) {
    this.retentionInterval = retentionInterval;
    return this;
  }

  /**
   * How long the inbox keeps joining again while the broker refuses it because its static
   * instance id ({@code group.instance.id}) is still held (Kafka's consumer group protocol: a
   * member restarted after a kill is refused until the killed one's session times out, 45 s by
   * default). Refused for longer than this, the id is held by a live member (the same id on two
   * processes?): the inbox stops, with {@link Inbox#failure()} saying so. A full group (the
   * broker's {@code group.consumer.max.size}, which a killed member also fills until its session
   * times out) is waited out the same way, and so is a new consumer that cannot be made meanwhile
   * (bootstrap servers not resolvable for a moment): past the timeout, {@link Inbox#failure()} is
   * that error. Positive, at most 1 hour. Defaults to 5 minutes.
   */
  public InboxBuilder rejoinTimeout(Duration rejoinTimeout) {
    this.rejoinTimeout = rejoinTimeout;
    return this;
  }

  /**
   * Bound for {@link Inbox#close()} to let in-flight batches finish. Positive. Defaults to 30 s.
   */
  public InboxBuilder closeTimeout(Duration closeTimeout) {
    this.closeTimeout = closeTimeout;
    return this;
  }

  /**
   * Bound for a rebalance to wait for in-flight batches of revoked partitions. Positive and shorter
   * than {@code max.poll.interval.ms}. Defaults to 15 s. A batch still running after it commits
   * only if no other member has claimed the partition yet (fencing), else rolls back.
   */
  public InboxBuilder revocationTimeout(Duration revocationTimeout) {
    this.revocationTimeout = revocationTimeout;
    return this;
  }

  /**
   * The longest a batch transaction may sit idle between two SQL statements (PostgreSQL's {@code
   * idle_in_transaction_session_timeout}, set for each transaction that locks a partition's offset
   * row only: a batch, a claim, a batch or start mark). A member frozen in the middle of one (a long
   * GC pause, SIGSTOP, a network path gone silent) holds its partition's offset row lock; after
   * this time PostgreSQL ends its session, so the member that took over the partition is blocked
   * for at most this long. A handler must not spend longer than
   * this on one record without touching the database: PostgreSQL then ends the session, and the
   * record fails (its error naming this setting) and counts towards {@link #maxAttempts}, rather
   * than being retried as a transient database failure. Zero leaves the server's setting alone.
   * Defaults to 60 s; otherwise 100 ms to 24 h.
   */
  public InboxBuilder transactionIdleTimeout(Duration transactionIdleTimeout) {
    this.transactionIdleTimeout = transactionIdleTimeout;
    return this;
  }

  /** Clock for inbox row times and retention. Defaults to {@link Clock#systemUTC()}. */
  public InboxBuilder clock(Clock clock) {
    this.clock = clock;
    return this;
  }

  /**
   * Publish metrics to this Micrometer registry (optional dependency): {@code
   * txkafka.inbox.records.processed}, {@code .duplicates}, {@code .dead.lettered}, {@code
   * .batch.latency}, {@code .lag} per partition. None by default.
   */
  public InboxBuilder meterRegistry(MeterRegistry registry) {
    this.meterRegistry = registry;
    return this;
  }

  /** Callbacks about rebalances, fencing and dead letters. Defaults to no-op. */
  public InboxBuilder listener(InboxListener listener) {
    this.listener = listener;
    return this;
  }

  /**
   * Validates the configuration and builds the inbox (not started, no connection made yet).
   *
   * @throws IllegalArgumentException naming the setting, the value and the rule, if a setting is
   *     invalid
   */
  public Inbox build() {
    Map<String, Object> consumer = consumerProperties();
    if (topics != null && topicPattern != null) {
      throw new IllegalArgumentException(
          "topics and topicPattern are exclusive, both were given: "
              + topics
              + ", "
              + topicPattern);
    }
    if (topics == null && topicPattern == null) {
      throw new IllegalArgumentException("topics or topicPattern is required, neither was given");
    }
    if (topics != null) {
      if (topics.isEmpty()) {
        throw new IllegalArgumentException("topics must not be empty, was []");
      }
      for (String topic : topics) {
        requireTopic("topics", topic);
      }
    }
    if ((dataSource == null) == (entityManagerFactory == null)) {
      throw new IllegalArgumentException(
          "exactly one of dataSource and entityManagerFactory is required, "
              + (dataSource == null ? "neither was given" : "both were given"));
    }
    if ((handler == null) == (batchHandler == null)) {
      throw new IllegalArgumentException(
          "exactly one of batchHandler and handler is required, "
              + (handler == null ? "neither was given" : "both were given"));
    }
    SqlIdentifiers.requireIdentifier("schema", schema);
    requireRange("maxBatchSize", maxBatchSize, 1, MAX_MAX_BATCH_SIZE);
    requireRange("queuedBatches", queuedBatches, 1, MAX_QUEUED_BATCHES);
    if ((long) maxBatchSize * queuedBatches > MAX_QUEUED_RECORDS) {
      throw new IllegalArgumentException(
          "maxBatchSize * queuedBatches must be at most "
              + MAX_QUEUED_RECORDS
              + " records (what a partition may hold queued), was "
              + maxBatchSize
              + " * "
              + queuedBatches
              + " = "
              + (long) maxBatchSize * queuedBatches);
    }
    requireRange("concurrency", concurrency, 1, MAX_CONCURRENCY);
    requireRange("maxAttempts", maxAttempts, 1, 1000);
    requirePositive("retryBackoff", retryBackoff);
    requirePositive("maxRetryBackoff", maxRetryBackoff);
    requireAtMost("maxRetryBackoff", maxRetryBackoff, Duration.ofHours(1));
    if (maxRetryBackoff.compareTo(retryBackoff) < 0) {
      throw new IllegalArgumentException(
          "maxRetryBackoff must be at least retryBackoff ("
              + retryBackoff
              + "), was "
              + maxRetryBackoff);
    }
    if (deadLetterTopic != null) {
      requireTopic("deadLetterTopic", deadLetterTopic);
      boolean consumed =
          topics != null
              ? topics.contains(deadLetterTopic)
              : topicPattern.matcher(deadLetterTopic).matches();
      if (consumed) {
        throw new IllegalArgumentException(
            "deadLetterTopic must not be a topic this inbox consumes (it would consume its own"
                + " dead letters, fail them again and forward them again, for ever), was '"
                + deadLetterTopic
                + "'");
      }
    }
    if (messageIdExtractor == null) {
      throw new IllegalArgumentException("messageIdExtractor must not be null");
    }
    requirePositive("dedupRetention", dedupRetention);
    if (dedupRetention.compareTo(Duration.ofSeconds(1)) < 0) {
      throw new IllegalArgumentException(
          "dedupRetention must be at least 1 s, was " + dedupRetention);
    }
    requireAtMost("dedupRetention", dedupRetention, Duration.ofDays(3650));
    requirePositive("retentionInterval", retentionInterval);
    requireAtMost("retentionInterval", retentionInterval, Duration.ofDays(1));
    requirePositive("rejoinTimeout", rejoinTimeout);
    requireAtMost("rejoinTimeout", rejoinTimeout, Duration.ofHours(1));
    requirePositive("closeTimeout", closeTimeout);
    requireAtMost("closeTimeout", closeTimeout, Duration.ofMinutes(10));
    requirePositive("revocationTimeout", revocationTimeout);
    long maxPollInterval = maxPollIntervalMs(consumer);
    if (revocationTimeout.toMillis() >= maxPollInterval) {
      throw new IllegalArgumentException(
          "revocationTimeout must be shorter than max.poll.interval.ms ("
              + maxPollInterval
              + " ms) so that a rebalance can finish, was "
              + revocationTimeout);
    }
    if (transactionIdleTimeout == null
        || (!transactionIdleTimeout.isZero()
            && (transactionIdleTimeout.compareTo(Duration.ofMillis(100)) < 0
                || transactionIdleTimeout.compareTo(Duration.ofHours(24)) > 0))) {
      throw new IllegalArgumentException(
          "transactionIdleTimeout must be zero (leave the server's setting) or from 100 ms to"
              + " 24 h, was "
              + transactionIdleTimeout);
    }
    if (clock == null) {
      throw new IllegalArgumentException("clock must not be null");
    }
    if (listener == null) {
      throw new IllegalArgumentException("listener must not be null");
    }
    InboxSettings settings =
        new InboxSettings(
            Map.copyOf(consumer),
            groupId,
            topics == null ? null : List.copyOf(topics),
            topicPattern,
            dataSource,
            entityManagerFactory,
            handler,
            batchHandler,
            schema,
            maxBatchSize,
            queuedBatches,
            concurrency,
            maxAttempts,
            retryBackoff,
            maxRetryBackoff,
            deadLetterTopic,
            messageIdExtractor,
            dedupRetention,
            retentionInterval,
            closeTimeout,
            revocationTimeout,
            transactionIdleTimeout,
            rejoinTimeout,
            clock,
            meterRegistry,
            listener);
    return new InboxRuntime(settings);
  }

  private Map<String, Object> consumerProperties() {
    Map<String, Object> consumer = new HashMap<>(kafkaProperties);
    for (Map.Entry<String, Object> property : consumer.entrySet()) {
      if (property.getKey() == null || property.getValue() == null) {
        throw new IllegalArgumentException(
            "kafkaProperties must not hold null names or values, was "
                + property.getKey()
                + "="
                + property.getValue());
      }
    }
    Object servers = consumer.get(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG);
    if (servers == null || String.valueOf(servers).isBlank()) {
      throw new IllegalArgumentException(
          "kafkaProperties must set bootstrap.servers, was " + servers);
    }
    if (groupId == null || groupId.isBlank()) {
      throw new IllegalArgumentException(
          "groupId must not be blank, was " + (groupId == null ? "null" : "'" + groupId + "'"));
    }
    Object propertyGroup = consumer.get(ConsumerConfig.GROUP_ID_CONFIG);
    if (propertyGroup != null && !groupId.equals(String.valueOf(propertyGroup))) {
      throw new IllegalArgumentException(
          "kafkaProperties group.id ('"
              + propertyGroup
              + "') differs from groupId ('"
              + groupId
              + "'): set the group with groupId only");
    }
    Object autoCommit = consumer.get(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG);
    if (autoCommit != null && !"false".equalsIgnoreCase(String.valueOf(autoCommit).trim())) {
      throw new IllegalArgumentException(
          "kafkaProperties enable.auto.commit must be false, was "
              + autoCommit
              + ": the inbox stores offsets in PostgreSQL in the transaction of each batch and"
              + " mirrors them to Kafka only after the database committed; auto-commit would"
              + " commit offsets of records that are not applied yet");
    }
    Object reset = consumer.get(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG);
    if (reset == null) {
      consumer.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    } else if (!"earliest".equals(reset) && !"latest".equals(reset)) {
      throw new IllegalArgumentException(
          "kafkaProperties auto.offset.reset must be earliest or latest, was " + reset);
    }
    requireByteArrayDeserializer(consumer, ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG);
    requireByteArrayDeserializer(consumer, ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG);
    consumer.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
    consumer.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    consumer.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    consumer.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class);
    maxPollIntervalMs(consumer);
    try {
      // Kafka's own validation of every consumer setting (types, ranges, names of classes).
      new ConsumerConfig(consumer);
    } catch (ConfigException e) {
      throw new IllegalArgumentException("kafkaProperties are invalid: " + e.getMessage(), e);
    }
    return consumer;
  }

  private static void requireByteArrayDeserializer(Map<String, Object> consumer, String name) {
    Object value = consumer.get(name);
    if (value == null) {
      return;
    }
    String className = value instanceof Class<?> type ? type.getName() : String.valueOf(value);
    if (!ByteArrayDeserializer.class.getName().equals(className)) {
      throw new IllegalArgumentException(
          "kafkaProperties "
              + name
              + " must be "
              + ByteArrayDeserializer.class.getName()
              + " (the inbox hands bytes to the handler), was "
              + className);
    }
  }

  private static long maxPollIntervalMs(Map<String, Object> consumer) {
    Object value = consumer.get(ConsumerConfig.MAX_POLL_INTERVAL_MS_CONFIG);
    if (value == null) {
      return KAFKA_DEFAULT_MAX_POLL_INTERVAL_MS;
    }
    try {
      long millis = Long.parseLong(String.valueOf(value).trim());
      if (millis < 1) {
        throw new NumberFormatException();
      }
      return millis;
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(
          "kafkaProperties max.poll.interval.ms must be a positive number of milliseconds, was "
              + value);
    }
  }

  private static void requireTopic(String setting, String topic) {
    if (topic == null || !LEGAL_TOPIC.matcher(topic).matches()) {
      throw new IllegalArgumentException(
          setting
              + " must hold Kafka topic names ([a-zA-Z0-9._-], 1 to 249 characters), was "
              + (topic == null ? "null" : "'" + topic + "'"));
    }
  }

  private static void requireRange(String setting, int value, int min, int max) {
    if (value < min || value > max) {
      throw new IllegalArgumentException(
          setting + " must be between " + min + " and " + max + ", was " + value);
    }
  }

  /** After {@link #requirePositive}: a bound that keeps the duration usable as a timer. */
  private static void requireAtMost(String setting, Duration value, Duration max) {
    if (value.compareTo(max) > 0) {
      throw new IllegalArgumentException(
          setting + " must be at most " + max + ", was " + value);
    }
  }

  private static void requirePositive(String setting, Duration value) {
    if (value == null || value.isZero() || value.isNegative()) {
      throw new IllegalArgumentException(setting + " must be a positive duration, was " + value);
    }
  }
}
