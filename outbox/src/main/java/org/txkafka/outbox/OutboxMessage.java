package org.txkafka.outbox;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Objects;

/**
 * A message to publish through the outbox: topic, key, payload (bytes: the library does not choose
 * a serializer), headers and an optional explicit partition. Immutable and thread-safe.
 *
 * <pre>{@code
 * OutboxMessage.to("payments.requested")
 *     .key(order.getId().toString())
 *     .payload(json)
 *     .header("content-type", "application/json")
 *     .build();
 * }</pre>
 *
 * @param topic the Kafka topic, never blank
 * @param key the record key, or null; rows with the same key keep their commit order, rows
 *     without a key have no order (not even with an explicit partition)
 * @param payload the record value, or null (a tombstone)
 * @param headers the record headers in order; the relay adds {@link Outbox#MESSAGE_ID_HEADER}
 * @param partition an explicit partition, or null for the producer's partitioner
 */
public record OutboxMessage(
    String topic, byte[] key, byte[] payload, List<Header> headers, Integer partition) {

  /** The longest topic name Kafka accepts. */
  public static final int MAX_TOPIC_LENGTH = 249;

  private static final java.util.regex.Pattern LEGAL_TOPIC =
      java.util.regex.Pattern.compile("[a-zA-Z0-9._-]+");

  /**
   * One record header. The name is not blank and has no NUL character (PostgreSQL's text cannot
   * hold one); the value may be null.
   */
  public record Header(String name, byte[] value) {
    /** Validates the name. */
    public Header {
      if (name == null || name.isBlank()) {
        throw new IllegalArgumentException("header name must not be blank, was '" + name + "'");
      }
      if (name.indexOf('\u0000') >= 0) {
        throw new IllegalArgumentException(
            "header name must not contain a NUL character (the outbox stores names as PostgreSQL"
                + " text), was '"
                + name.replace('\u0000', '?')
                + "'");
      }
    }
  }

  /** Validates the message and copies the header list. */
  public OutboxMessage {
    if (topic == null || topic.isBlank()) {
      throw new IllegalArgumentException("topic must not be blank, was '" + topic + "'");
    }
    if (topic.length() > MAX_TOPIC_LENGTH) {
      throw new IllegalArgumentException(
          "topic must be at most " + MAX_TOPIC_LENGTH + " characters, was " + topic.length());
    }
    // Refused here, at the business transaction, rather than committed and then parked by the relay
    // (InvalidTopicException), waiting for an operator.
    if (!LEGAL_TOPIC.matcher(topic).matches() || topic.equals(".") || topic.equals("..")) {
      throw new IllegalArgumentException(
          "topic must be a Kafka topic name ([a-zA-Z0-9._-], not '.' or '..'), was '"
              + topic
              + "'");
    }
    if (partition != null && partition < 0) {
      throw new IllegalArgumentException("partition must be at least 0, was " + partition);
    }
    headers = headers == null ? List.of() : Collections.unmodifiableList(new ArrayList<>(headers));
    for (Header header : headers) {
      Objects.requireNonNull(header, "headers must not contain null");
      if (Outbox.MESSAGE_ID_HEADER.equals(header.name())) {
        throw new IllegalArgumentException(
            "header " + Outbox.MESSAGE_ID_HEADER + " is set by the outbox and must not be given");
      }
    }
  }

  /** Starts a message to {@code topic}. */
  public static Builder to(String topic) {
    return new Builder(topic);
  }

  /** Builds an {@link OutboxMessage}. Not thread-safe. */
  public static final class Builder {
    private final String topic;
    private byte[] key;
    private byte[] payload;
    private final List<Header> headers = new ArrayList<>();
    private Integer partition;

    private Builder(String topic) {
      this.topic = topic;
    }

    /** The key as bytes, or null. */
    public Builder key(byte[] key) {
      this.key = key;
      return this;
    }

    /** The key as UTF-8, or null. */
    public Builder key(String key) {
      this.key = key == null ? null : key.getBytes(StandardCharsets.UTF_8);
      return this;
    }

    /** The payload as bytes, or null. */
    public Builder payload(byte[] payload) {
      this.payload = payload;
      return this;
    }

    /** The payload as UTF-8, or null. */
    public Builder payload(String payload) {
      this.payload = payload == null ? null : payload.getBytes(StandardCharsets.UTF_8);
      return this;
    }

    /** Adds a header with a byte value. */
    public Builder header(String name, byte[] value) {
      headers.add(new Header(name, value));
      return this;
    }

    /** Adds a header with a UTF-8 value. */
    public Builder header(String name, String value) {
      return header(name, value == null ? null : value.getBytes(StandardCharsets.UTF_8));
    }

    /** An explicit partition, or null for the producer's partitioner (the default). */
    public Builder partition(Integer partition) {
      this.partition = partition;
      return this;
    }

    /**
     * The message.
     *
     * @throws IllegalArgumentException if the topic is not a legal Kafka topic name, the partition
     *     is negative, or a header is invalid
     */
    public OutboxMessage build() {
      return new OutboxMessage(topic, key, payload, headers, partition);
    }
  }
}
