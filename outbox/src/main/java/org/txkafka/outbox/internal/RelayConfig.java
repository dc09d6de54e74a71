package org.txkafka.outbox.internal;

import java.time.Clock;
import java.time.Duration;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;
import java.util.UUID;
import java.util.regex.Pattern;
import javax.sql.DataSource;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.txkafka.SqlIdentifiers;
import org.txkafka.outbox.OutboxRelay;

/**
 * The validated, immutable configuration of a relay. {@link #validate} is the one place where every
 * setting of {@link OutboxRelay.Builder} is checked; its messages name the setting, the value and
 * the rule.
 *
 * @param producerProperties the complete producer properties, with the enforced values applied
 */
public record RelayConfig(
    DataSource dataSource,
    String schema,
    Map<String, Object> producerProperties,
    int batchSize,
    Duration pollInterval,
    boolean listenNotify,
    Duration leaseCheckInterval,
    Duration leaseTimeout,
    Duration initialBackoff,
    Duration maxBackoff,
    Duration closeTimeout,
    Duration publishTimeout,
    Duration statsInterval,
    boolean archive,
    String name,
    Clock clock,
    Object meterRegistry,
    OutboxRelay.Listener listener) {

  /** The producer's {@code max.block.ms} unless given: bounds a send waiting for metadata. */
  public static final int DEFAULT_MAX_BLOCK_MS = 10_000;

  private static final Pattern NAME = Pattern.compile("[A-Za-z0-9._-]{1,100}");

  /** Checks every setting and applies the defaults. */
  public static RelayConfig validate(
      DataSource dataSource,
      String schema,
      Map<String, Object> producerProperties,
      int batchSize,
      Duration pollInterval,
      boolean listenNotify,
      Duration leaseCheckInterval,
      Duration leaseTimeout,
      Duration initialBackoff,
      Duration maxBackoff,
      Duration closeTimeout,
      Duration publishTimeout,
      Duration statsInterval,
      boolean archive,
      String name,
      Clock clock,
      Object meterRegistry,
      OutboxRelay.Listener listener) {
    if (dataSource == null) {
      throw new IllegalArgumentException("dataSource must be set, was null");
    }
    SqlIdentifiers.requireIdentifier("schema", schema);
    if (batchSize < 1 || batchSize > OutboxRelay.Builder.MAX_BATCH_SIZE) {
      throw new IllegalArgumentException(
          "batchSize must be between 1 and "
              + OutboxRelay.Builder.MAX_BATCH_SIZE
              + ", was "
              + batchSize);
    }
    requireBetween("pollInterval", pollInterval, Duration.ofMillis(10), Duration.ofHours(1));
    requireBetween(
        "leaseCheckInterval", leaseCheckInterval, Duration.ofMillis(50), Duration.ofMinutes(1));
    requireBetween("leaseTimeout", leaseTimeout, Duration.ZERO, Duration.ofHours(1));
    if (!leaseTimeout.isZero() && leaseTimeout.compareTo(leaseCheckInterval.multipliedBy(3)) < 0) {
      // While the relay waits for notifications (at most a lease check interval) the session is
      // idle and the keepalive waits for the connection: the timeout must leave room for both.
      throw new IllegalArgumentException(
          "leaseTimeout must be 0 (off) or at least 3 x leaseCheckInterval ("
              + leaseCheckInterval.multipliedBy(3)
              + "), was "
              + leaseTimeout);
    }
    requireBetween(
        "retryBackoff initial", initialBackoff, Duration.ofMillis(1), Duration.ofMinutes(10));
    requireBetween("retryBackoff max", maxBackoff, initialBackoff, Duration.ofMinutes(10));
    requireBetween("closeTimeout", closeTimeout, Duration.ZERO, Duration.ofMinutes(10));
    requireBetween("publishTimeout", publishTimeout, Duration.ofSeconds(1), Duration.ofHours(1));
    requireBetween("statsInterval", statsInterval, Duration.ofSeconds(1), Duration.ofHours(1));
    String validName =
        name == null ? "txkafka-relay-" + UUID.randomUUID().toString().substring(0, 8) : name;
    if (!NAME.matcher(validName).matches()) {
      throw new IllegalArgumentException(
          "name must be 1 to 100 letters, digits, '.', '_' or '-', was '" + name + "'");
    }
    if (clock == null) {
      throw new IllegalArgumentException("clock must be set, was null");
    }
    Map<String, Object> producer = producerProperties(producerProperties, validName);
    return new RelayConfig(
        dataSource,
        schema,
        producer,
        batchSize,
        pollInterval,
        listenNotify,
        leaseCheckInterval,
        leaseTimeout,
        initialBackoff,
        maxBackoff,
        closeTimeout,
        publishTimeout,
        statsInterval,
        archive,
        validName,
        clock,
        meterRegistry,
        listener == null ? new OutboxRelay.Listener() {} : listener);
  }

  private static void requireBetween(String setting, Duration value, Duration min, Duration max) {
    if (value == null) {
      throw new IllegalArgumentException(setting + " must be set, was null");
    }
    if (value.compareTo(min) < 0 || value.compareTo(max) > 0) {
      throw new IllegalArgumentException(
          setting + " must be between " + min + " and " + max + ", was " + value);
    }
  }

  /**
   * The user's producer properties with the relay's enforced and default values. Refuses anything
   * that would weaken at-least-once delivery or per-key order.
   */
  static Map<String, Object> producerProperties(Map<String, Object> given, String name) {
    Map<String, Object> props = new LinkedHashMap<>();
    for (Map.Entry<String, Object> entry : given.entrySet()) {
      if (entry.getKey() == null || entry.getValue() == null) {
        throw new IllegalArgumentException(
            "producerProperties must not contain null names or values, was "
                + entry.getKey()
                + "="
                + entry.getValue());
      }
      props.put(entry.getKey(), entry.getValue());
    }
    Object bootstrap = props.get(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG);
    if (bootstrap == null || bootstrap.toString().isBlank()) {
      throw new IllegalArgumentException(
          "producerProperties must contain bootstrap.servers, was "
              + (bootstrap == null ? "absent" : "'" + bootstrap + "'"));
    }
    requireValue(props, ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true", "true");
    Object acks = props.get(ProducerConfig.ACKS_CONFIG);
    if (acks != null && !"all".equals(text(acks)) && !"-1".equals(text(acks))) {
      throw new IllegalArgumentException(
          "producer property acks must be all (or -1): the relay deletes a row once Kafka"
              + " acknowledged it, so every in-sync replica must have it, was "
              + acks);
    }
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    Object retries = props.get(ProducerConfig.RETRIES_CONFIG);
    if (retries != null && parseInt(ProducerConfig.RETRIES_CONFIG, retries) < 1) {
      throw new IllegalArgumentException(
          "producer property retries must be at least 1 (the producer retries in order), was "
              + retries);
    }
    Object inFlight = props.get(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION);
    if (inFlight != null) {
      int value = parseInt(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, inFlight);
      if (value < 1 || value > 5) {
        throw new IllegalArgumentException(
            "producer property max.in.flight.requests.per.connection must be between 1 and 5"
                + " (the idempotent producer keeps order only up to 5), was "
                + inFlight);
      }
    }
    if (props.containsKey(ProducerConfig.TRANSACTIONAL_ID_CONFIG)) {
      throw new IllegalArgumentException(
          "producer property transactional.id must not be set: the relay uses the idempotent"
              + " producer without Kafka transactions, was "
              + props.get(ProducerConfig.TRANSACTIONAL_ID_CONFIG));
    }
    requireSerializer(props, ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG);
    requireSerializer(props, ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG);
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    props.putIfAbsent(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, Integer.MAX_VALUE);
    props.putIfAbsent(ProducerConfig.MAX_BLOCK_MS_CONFIG, DEFAULT_MAX_BLOCK_MS);
    props.putIfAbsent(ProducerConfig.LINGER_MS_CONFIG, 5);
    // One request in flight per broker: a batch the broker refuses (a keyless row on a compacted
    // topic, a record refused for its timestamp) is then answered before the next request of its
    // partition leaves, and the relay closes the producer from the failure's callback, so no later
    // batch lands on Kafka ahead of the refused batch's other rows, which are sent again. With
    // more, later batches already sent are appended by the broker (a new producer id has no
    // sequence to break). A round of rows is mostly one request per broker anyway.
    props.putIfAbsent(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, 1);
    // The relay waits for every acknowledgement of a batch of rows: with Kafka's 16 KB default a
    // 500-row batch of 200-byte payloads over 4 partitions became about 12 produce requests, and
    // that wait was half of the relay's time.
    props.putIfAbsent(
        ProducerConfig.BATCH_SIZE_CONFIG, OutboxRelay.Builder.DEFAULT_PRODUCER_BATCH_BYTES);
    props.putIfAbsent(ProducerConfig.CLIENT_ID_CONFIG, name);
    // Kafka's own checks (types, ranges) at build(), not when start() makes the producer.
    try {
      ProducerConfig.configDef().parse(props);
    } catch (org.apache.kafka.common.config.ConfigException e) {
      throw new IllegalArgumentException("producer properties: " + e.getMessage(), e);
    }
    return Collections.unmodifiableMap(props);
  }

  private static void requireValue(
      Map<String, Object> props, String key, String expected, String rule) {
    Object value = props.get(key);
    if (value != null && !expected.equals(text(value))) {
      throw new IllegalArgumentException(
          "producer property " + key + " must be " + rule + " for the outbox relay, was " + value);
    }
  }

  private static void requireSerializer(Map<String, Object> props, String key) {
    Object value = props.get(key);
    if (value == null) {
      return;
    }
    String className = value instanceof Class<?> type ? type.getName() : value.toString().trim();
    if (!ByteArraySerializer.class.getName().equals(className)) {
      throw new IllegalArgumentException(
          "producer property "
              + key
              + " must be "
              + ByteArraySerializer.class.getName()
              + " (the outbox stores bytes), was "
              + className);
    }
  }

  private static String text(Object value) {
    return value.toString().trim().toLowerCase(Locale.ROOT);
  }

  private static int parseInt(String key, Object value) {
    if (value instanceof Number number) {
      return number.intValue();
    }
    try {
      return Integer.parseInt(value.toString().trim());
    } catch (NumberFormatException e) {
      throw new IllegalArgumentException(
          "producer property " + key + " must be an integer, was '" + value + "'", e);
    }
  }
}
