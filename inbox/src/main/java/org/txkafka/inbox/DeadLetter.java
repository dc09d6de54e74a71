package org.txkafka.inbox;

import java.time.Instant;

/**
 * A record the handler gave up on, as stored in {@code txkafka_inbox_dead_letter}.
 *
 * @param id the dead letter's id, for {@link Inbox#replay(long)}
 * @param record the record as it was consumed (key, value, headers, topic, partition, offset,
 *     message id); its {@code timestamp()} is the time it was dead-lettered, the Kafka timestamp is
 *     not kept
 * @param attempts how many times the handler failed on it
 * @param lastError the last error: exception class, message and cause chain, or the reason the
 *     message id was malformed
 * @param deadAt when it was dead-lettered (the inbox's clock)
 * @param replayedAt when a replay succeeded, or null while it is pending
 */
public record DeadLetter(
    long id,
    InboxRecord record,
    int attempts,
    String lastError,
    Instant deadAt,
    Instant replayedAt) {}
