package org.txkafka.inbox.internal;

import java.time.Clock;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import javax.sql.DataSource;
import org.txkafka.inbox.InboxBatchHandler;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.inbox.MessageIdExtractor;

/**
 * The validated, immutable configuration of one inbox (validation is in {@code InboxBuilder}).
 * Exactly one of {@code topics} / {@code topicPattern} and one of {@code dataSource} / {@code
 * entityManagerFactory} is set, and one of {@code handler} / {@code batchHandler}. {@code entityManagerFactory} (a JPA {@code EntityManagerFactory})
 * and {@code meterRegistry} (a Micrometer {@code MeterRegistry}) are typed Object so that those
 * optional classes are never loaded when they are absent.
 */
public record InboxSettings(
    Map<String, Object> consumerProperties,
    String groupId,
    List<String> topics,
    Pattern topicPattern,
    DataSource dataSource,
    Object entityManagerFactory,
    InboxHandler handler,
    InboxBatchHandler batchHandler,
    String schema,
    int maxBatchSize,
    int queuedBatches,
    int concurrency,
    int maxAttempts,
    Duration retryBackoff,
    Duration maxRetryBackoff,
    String deadLetterTopic,
    MessageIdExtractor messageIdExtractor,
    Duration dedupRetention,
    Duration retentionInterval,
    Duration closeTimeout,
    Duration revocationTimeout,
    Duration transactionIdleTimeout,
    Duration rejoinTimeout,
    Clock clock,
    Object meterRegistry,
    InboxListener listener) {}
