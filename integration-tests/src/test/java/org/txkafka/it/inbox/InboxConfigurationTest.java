package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Clock;
import java.time.Duration;
import java.time.temporal.ChronoUnit;
import java.util.Map;
import java.util.function.UnaryOperator;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.postgresql.ds.PGSimpleDataSource;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxBuilder;

/** Every setting is validated at build() with a message naming the setting, value and rule. */
class InboxConfigurationTest {

  private static InboxBuilder valid() {
    return Inbox.builder()
        .kafkaProperties(Map.of("bootstrap.servers", "127.0.0.1:1"))
        .groupId("orders")
        .topics("orders.placed")
        .dataSource(new PGSimpleDataSource())
        .handler((record, context) -> {});
  }

  private static void assertRefused(UnaryOperator<InboxBuilder> change, String... fragments) {
    IllegalArgumentException error =
        assertThrows(IllegalArgumentException.class, () -> change.apply(valid()).build());
    for (String fragment : fragments) {
      assertTrue(
          error.getMessage().contains(fragment),
          "message '" + error.getMessage() + "' should contain '" + fragment + "'");
    }
  }

  @Test
  void validConfigurationBuildsWithoutConnectingAnywhere() {
    Inbox inbox = valid().build();
    assertFalse(inbox.isRunning());
    IllegalArgumentException tooMany =
        assertThrows(IllegalArgumentException.class, () -> inbox.deadLetters(10_001));
    assertTrue(tooMany.getMessage().contains("between 1 and 10000"), tooMany.getMessage());
    inbox.close();
    assertThrows(IllegalStateException.class, inbox::start, "a closed inbox cannot start");
  }

  @Test
  void enableAutoCommitTrueIsRefusedWithAnExplanation() {
    assertRefused(
        b -> b.kafkaProperty("enable.auto.commit", "true"),
        "enable.auto.commit must be false, was true",
        "PostgreSQL");
    valid().kafkaProperty("enable.auto.commit", "false").build().close();
  }

  @Test
  void kafkaPropertiesAreValidated() {
    assertRefused(
        b ->
            Inbox.builder()
                .groupId("g")
                .topics("t")
                .dataSource(new PGSimpleDataSource())
                .handler((r, c) -> {}),
        "bootstrap.servers");
    assertRefused(b -> b.kafkaProperty("group.id", "other"), "group.id", "'other'", "'orders'");
    assertRefused(
        b -> b.kafkaProperty("auto.offset.reset", "none"),
        "auto.offset.reset must be earliest or latest, was none");
    assertRefused(
        b ->
            b.kafkaProperty(
                "value.deserializer", "org.apache.kafka.common.serialization.StringDeserializer"),
        "value.deserializer",
        "StringDeserializer");
    assertRefused(
        b -> b.kafkaProperty("max.poll.records", "many"),
        "kafkaProperties are invalid",
        "max.poll.records",
        "many");
    assertRefused(
        b -> b.kafkaProperty("max.poll.interval.ms", "soon"), "max.poll.interval.ms", "soon");
    // The consumer group protocol (KIP-848) refuses the classic protocol's client settings: at
    // build(), not when the consumer is made at start().
    assertRefused(
        b -> b.kafkaProperty("group.protocol", "consumer").kafkaProperty("session.timeout.ms", "6000"),
        "kafkaProperties are invalid",
        "session.timeout.ms cannot be set when group.protocol=CONSUMER");
    assertRefused(
        b ->
            b.kafkaProperty("max.poll.interval.ms", "10000")
                .revocationTimeout(Duration.ofSeconds(10)),
        "revocationTimeout must be shorter than max.poll.interval.ms (10000 ms)",
        "PT10S");
  }

  @Test
  void requiredSettingsAndExclusiveChoicesAreChecked() {
    assertRefused(b -> b.groupId(" "), "groupId must not be blank, was ' '");
    assertRefused(b -> b.topics((String[]) null), "topics or topicPattern is required");
    assertRefused(b -> b.topicPattern(Pattern.compile("orders\\..*")), "exclusive");
    assertRefused(b -> b.topics("bad topic!"), "topics", "'bad topic!'");
    assertRefused(b -> b.topics(new String[0]), "topics must not be empty");
    assertRefused(
        b -> b.dataSource(null), "exactly one of dataSource and entityManagerFactory", "neither");
    assertRefused(b -> b.handler(null), "handler is required");
    assertRefused(b -> b.schema("Bad;Schema"), "schema", "'Bad;Schema'");
    assertRefused(b -> b.messageIdExtractor(null), "messageIdExtractor");
    assertRefused(b -> b.deadLetterTopic(""), "deadLetterTopic", "''");
    assertRefused(b -> b.topics("orders.placed", null), "topics", "was null");
    assertRefused(
        b -> b.topics("orders.placed", "orders.dlt").deadLetterTopic("orders.dlt"),
        "deadLetterTopic must not be a topic this inbox consumes",
        "'orders.dlt'");
    assertRefused(
        b ->
            b.topics((String[]) null)
                .topicPattern(Pattern.compile("orders\\..*"))
                .deadLetterTopic("orders.placed.dlt"),
        "deadLetterTopic must not be a topic this inbox consumes",
        "'orders.placed.dlt'");
    valid().deadLetterTopic("orders.placed.dlt").build().close();
    assertRefused(b -> b.clock((Clock) null), "clock");
    assertRefused(b -> b.listener(null), "listener");
  }

  @Test
  void numbersAndDurationsAreRangeChecked() {
    assertRefused(b -> b.maxBatchSize(0), "maxBatchSize must be between 1 and 10000, was 0");
    assertRefused(b -> b.maxBatchSize(10_001), "maxBatchSize", "10001");
    assertRefused(b -> b.queuedBatches(0), "queuedBatches must be between 1 and 16, was 0");
    assertRefused(b -> b.queuedBatches(17), "queuedBatches", "17");
    assertRefused(
        b -> b.maxBatchSize(10_000).queuedBatches(6),
        "maxBatchSize * queuedBatches must be at most 50000",
        "10000 * 6 = 60000");
    assertRefused(b -> b.concurrency(0), "concurrency must be between 1 and 256, was 0");
    assertRefused(b -> b.maxAttempts(0), "maxAttempts must be between 1 and 1000, was 0");
    assertRefused(b -> b.retryBackoff(Duration.ZERO), "retryBackoff must be a positive duration");
    assertRefused(
        b -> b.retryBackoff(Duration.ofSeconds(2)).maxRetryBackoff(Duration.ofSeconds(1)),
        "maxRetryBackoff must be at least retryBackoff (PT2S), was PT1S");
    assertRefused(b -> b.dedupRetention(Duration.ofMillis(10)), "dedupRetention", "PT0.01S");
    assertRefused(b -> b.retentionInterval(Duration.ofSeconds(-1)), "retentionInterval");
    assertRefused(b -> b.closeTimeout(null), "closeTimeout must be a positive duration, was null");
    assertRefused(b -> b.revocationTimeout(Duration.ZERO), "revocationTimeout");
    // Huge durations are refused at build(), not when start() schedules them.
    assertRefused(
        b -> b.retentionInterval(ChronoUnit.FOREVER.getDuration()),
        "retentionInterval must be at most PT24H");
    assertRefused(b -> b.dedupRetention(Duration.ofDays(3651)), "dedupRetention must be at most");
    assertRefused(b -> b.closeTimeout(Duration.ofHours(1)), "closeTimeout must be at most PT10M");
    assertRefused(b -> b.rejoinTimeout(null), "rejoinTimeout must be a positive duration, was null");
    assertRefused(b -> b.rejoinTimeout(Duration.ZERO), "rejoinTimeout must be a positive duration");
    assertRefused(b -> b.rejoinTimeout(Duration.ofHours(2)), "rejoinTimeout must be at most PT1H");
    assertRefused(
        b -> b.maxRetryBackoff(Duration.ofDays(1)), "maxRetryBackoff must be at most PT1H");
  }
}
