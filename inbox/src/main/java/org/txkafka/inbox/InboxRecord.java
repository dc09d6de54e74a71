package org.txkafka.inbox;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.Objects;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;

/**
 * One Kafka record as the handler sees it. Key and value are bytes: the library does not choose a
 * serializer. Immutable apart from the arrays, which the handler must not change.
 *
 * @param topic the topic
 * @param partition the partition
 * @param offset the offset in the partition
 * @param key the key, or null
 * @param value the value, or null (a tombstone)
 * @param headers the headers, read-only
 * @param messageId the message id the inbox deduplicates on: from {@link MessageIdExtractor}, or
 *     {@code kafka:<topic>/<partition>/<offset>} when the record has none
 * @param timestamp the record's Kafka timestamp
 */
public record InboxRecord(
    String topic,
    int partition,
    long offset,
    byte[] key,
    byte[] value,
    Headers headers,
    String messageId,
    Instant timestamp) {

  /** Checks the mandatory components. */
  public InboxRecord {
    Objects.requireNonNull(topic, "topic");
    Objects.requireNonNull(headers, "headers");
    Objects.requireNonNull(messageId, "messageId");
    Objects.requireNonNull(timestamp, "timestamp");
  }

  /** The key decoded as UTF-8, or null. */
  public String keyAsString() {
    return key == null ? null : new String(key, StandardCharsets.UTF_8);
  }

  /** The value decoded as UTF-8, or null. */
  public String valueAsString() {
    return value == null ? null : new String(value, StandardCharsets.UTF_8);
  }

  /** The value of the last header named {@code name} decoded as UTF-8, or null if absent. */
  public String header(String name) {
    Header header = headers.lastHeader(name);
    return header == null || header.value() == null
        ? null
        : new String(header.value(), StandardCharsets.UTF_8);
  }
}
