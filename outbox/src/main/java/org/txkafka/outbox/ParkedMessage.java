package org.txkafka.outbox;

import java.time.Instant;
import java.util.UUID;

/**
 * An outbox row the relay parked because it can never be sent as it is (for example the record is
 * too large or the topic name is invalid). It stays in the outbox until it is replayed or discarded
 * with {@link OutboxAdmin}.
 *
 * @param id the row id (the handle for {@link OutboxAdmin#replay(long)})
 * @param messageId the message id the record carries in {@link Outbox#MESSAGE_ID_HEADER}
 * @param share the outbox share of the row
 * @param topic the topic
 * @param key the record key, or null
 * @param partition the explicit partition, or null
 * @param payloadSize the payload size in bytes, or -1 for a null payload
 * @param attempts how many times the relay tried to publish it
 * @param lastError the error that parked it
 * @param createdAt when the row was written
 * @param parkedAt when it was parked
 */
public record ParkedMessage(
    long id,
    UUID messageId,
    int share,
    String topic,
    byte[] key,
    Integer partition,
    int payloadSize,
    int attempts,
    String lastError,
    Instant createdAt,
    Instant parkedAt) {}
