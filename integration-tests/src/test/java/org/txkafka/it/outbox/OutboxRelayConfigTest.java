package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.Map;
import java.util.function.UnaryOperator;
import org.junit.jupiter.api.Test;
import org.postgresql.ds.PGSimpleDataSource;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxRelay;

/**
 * Every relay setting is validated by build(), with a message that names the setting, the value and
 * the rule; settings that would weaken delivery are refused. Nothing connects to build a relay.
 */
class OutboxRelayConfigTest {

  private static OutboxRelay.Builder valid() {
    PGSimpleDataSource dataSource = new PGSimpleDataSource();
    dataSource.setURL("jdbc:postgresql://127.0.0.1:1/never-connected");
    return Outbox.relay()
        .dataSource(dataSource)
        .producerProperty("bootstrap.servers", "127.0.0.1:1");
  }

  private static void assertRefused(
      String expectedMessage, UnaryOperator<OutboxRelay.Builder> change) {
    IllegalArgumentException error =
        assertThrows(IllegalArgumentException.class, () -> change.apply(valid()).build());
    assertEquals(expectedMessage, error.getMessage());
  }

  @Test
  void validConfigurationBuildsWithoutConnectingAndCanBeClosedUnstarted() {
    OutboxRelay relay = valid().name("unstarted").build();
    assertEquals("unstarted", relay.name());
    assertFalse(relay.isRunning());
    relay.close();
    assertThrows(IllegalStateException.class, relay::start, "a closed relay cannot start");
  }

  @Test
  void missingDataSourceAndBootstrapServersAreRefused() {
    IllegalArgumentException noDataSource =
        assertThrows(
            IllegalArgumentException.class,
            () -> Outbox.relay().producerProperty("bootstrap.servers", "x:1").build());
    assertEquals("dataSource must be set, was null", noDataSource.getMessage());
    assertRefused(
        "producerProperties must contain bootstrap.servers, was ' '",
        b -> b.producerProperty("bootstrap.servers", " "));
  }

  @Test
  void outOfRangeNumbersAndDurationsAreRefusedWithSettingValueAndRule() {
    assertRefused("batchSize must be between 1 and 10000, was 0", b -> b.batchSize(0));
    assertRefused("batchSize must be between 1 and 10000, was 10001", b -> b.batchSize(10_001));
    assertRefused(
        "pollInterval must be between PT0.01S and PT1H, was PT0S",
        b -> b.pollInterval(Duration.ZERO));
    assertRefused("pollInterval must be set, was null", b -> b.pollInterval(null));
    assertRefused(
        "leaseCheckInterval must be between PT0.05S and PT1M, was PT2M",
        b -> b.leaseCheckInterval(Duration.ofMinutes(2)));
    assertRefused(
        "retryBackoff max must be between PT1S and PT10M, was PT0.5S",
        b -> b.retryBackoff(Duration.ofSeconds(1), Duration.ofMillis(500)));
    assertRefused(
        "retryBackoff initial must be between PT0.001S and PT10M, was PT-1S",
        b -> b.retryBackoff(Duration.ofSeconds(-1), Duration.ofSeconds(1)));
    assertRefused(
        "closeTimeout must be between PT0S and PT10M, was PT-0.001S",
        b -> b.closeTimeout(Duration.ofMillis(-1)));
    assertRefused(
        "publishTimeout must be between PT1S and PT1H, was PT0.5S",
        b -> b.publishTimeout(Duration.ofMillis(500)));
    assertRefused("publishTimeout must be set, was null", b -> b.publishTimeout(null));
    assertRefused(
        "statsInterval must be between PT1S and PT1H, was PT0.1S",
        b -> b.statsInterval(Duration.ofMillis(100)));
    assertRefused("clock must be set, was null", b -> b.clock(null));
  }

  @Test
  void leaseTimeoutIsCheckedAgainstTheLeaseCheckIntervalAndItsDefaultFollowsIt() {
    assertRefused("leaseTimeout must be set, was null", b -> b.leaseTimeout(null));
    assertRefused(
        "leaseTimeout must be between PT0S and PT1H, was PT-1S",
        b -> b.leaseTimeout(Duration.ofSeconds(-1)));
    assertRefused(
        "leaseTimeout must be between PT0S and PT1H, was PT1H0.001S",
        b -> b.leaseTimeout(Duration.ofHours(1).plusMillis(1)));
    assertRefused(
        "leaseTimeout must be 0 (off) or at least 3 x leaseCheckInterval (PT3S), was PT2.999S",
        b -> b.leaseTimeout(Duration.ofMillis(2999)));
    assertRefused(
        "leaseTimeout must be 0 (off) or at least 3 x leaseCheckInterval (PT30S), was PT20S",
        b -> b.leaseCheckInterval(Duration.ofSeconds(10)).leaseTimeout(Duration.ofSeconds(20)));
    // Off, the smallest allowed, and a lease check interval whose triple exceeds the 30 s default
    // (the default then follows it instead of refusing a setting the user did not make).
    valid().leaseTimeout(Duration.ZERO).build().close();
    valid().leaseTimeout(Duration.ofSeconds(3)).build().close();
    valid().leaseCheckInterval(Duration.ofMinutes(1)).build().close();
  }

  @Test
  void badSchemaNameAndMeterRegistryAreRefused() {
    assertRefused(
        "schema must be a lower-case unquoted PostgreSQL identifier ([a-z_][a-z0-9_$]*, no $$, at most"
            + " 63 characters), was 'Public; DROP TABLE x'",
        b -> b.schema("Public; DROP TABLE x"));
    assertRefused(
        "schema must be a lower-case unquoted PostgreSQL identifier ([a-z_][a-z0-9_$]*, no $$, at most"
            + " 63 characters), was 'a$$b'",
        b -> b.schema("a$$b"));
    assertRefused(
        "name must be 1 to 100 letters, digits, '.', '_' or '-', was 'a b'", b -> b.name("a b"));
  }

  @Test
  void producerSettingsThatWeakenDeliveryOrOrderAreRefused() {
    assertRefused(
        "producer property acks must be all (or -1): the relay deletes a row once Kafka"
            + " acknowledged it, so every in-sync replica must have it, was 1",
        b -> b.producerProperty("acks", "1"));
    assertRefused(
        "producer property enable.idempotence must be true for the outbox relay, was false",
        b -> b.producerProperty("enable.idempotence", false));
    assertRefused(
        "producer property retries must be at least 1 (the producer retries in order), was 0",
        b -> b.producerProperty("retries", 0));
    assertRefused(
        "producer property max.in.flight.requests.per.connection must be between 1 and 5 (the"
            + " idempotent producer keeps order only up to 5), was 6",
        b -> b.producerProperty("max.in.flight.requests.per.connection", "6"));
    assertRefused(
        "producer property transactional.id must not be set: the relay uses the idempotent"
            + " producer without Kafka transactions, was tx-1",
        b -> b.producerProperty("transactional.id", "tx-1"));
    assertRefused(
        "producer property value.serializer must be"
            + " org.apache.kafka.common.serialization.ByteArraySerializer (the outbox stores"
            + " bytes), was org.apache.kafka.common.serialization.StringSerializer",
        b ->
            b.producerProperty(
                "value.serializer", org.apache.kafka.common.serialization.StringSerializer.class));
    assertRefused(
        "producerProperties must not contain null names or values, was linger.ms=null",
        b -> b.producerProperties(nullValue()));
  }

  @Test
  void producerSettingsKafkaRefusesAreRefusedAtBuildNotAtStart() {
    IllegalArgumentException error =
        assertThrows(
            IllegalArgumentException.class,
            () -> valid().producerProperty("linger.ms", "soon").build());
    assertTrue(
        error.getMessage().startsWith("producer properties: ")
            && error.getMessage().contains("linger.ms"),
        error.getMessage());
  }

  @Test
  void acceptableProducerSettingsAreKept() {
    OutboxRelay relay =
        valid()
            .producerProperties(
                Map.of(
                    "acks", "-1",
                    "enable.idempotence", "true",
                    "max.in.flight.requests.per.connection", 5,
                    "linger.ms", 20,
                    "compression.type", "lz4"))
            .build();
    relay.close();
  }

  @Test
  void producerPropertiesFromAPropertiesObjectAreValidatedToo() {
    java.util.Properties properties = new java.util.Properties();
    properties.setProperty("bootstrap.servers", "127.0.0.1:1");
    properties.setProperty("acks", "0");
    PGSimpleDataSource dataSource = new PGSimpleDataSource();
    IllegalArgumentException error =
        assertThrows(
            IllegalArgumentException.class,
            () -> Outbox.relay().dataSource(dataSource).producerProperties(properties).build());
    assertEquals(
        "producer property acks must be all (or -1): the relay deletes a row once Kafka"
            + " acknowledged it, so every in-sync replica must have it, was 0",
        error.getMessage());
  }

  @Test
  void adminRefusesBadArguments() {
    PGSimpleDataSource dataSource = new PGSimpleDataSource();
    IllegalArgumentException schema =
        assertThrows(IllegalArgumentException.class, () -> Outbox.admin(dataSource, "x-y"));
    assertEquals(
        "schema must be a lower-case unquoted PostgreSQL identifier ([a-z_][a-z0-9_$]*, no $$, at most"
            + " 63 characters), was 'x-y'",
        schema.getMessage());
    IllegalArgumentException limit =
        assertThrows(
            IllegalArgumentException.class, () -> Outbox.admin(dataSource).parked(0));
    assertEquals("limit must be between 1 and 10000, was 0", limit.getMessage());
    assertThrows(IllegalArgumentException.class, () -> Outbox.admin(null));
  }

  private static Map<String, Object> nullValue() {
    java.util.HashMap<String, Object> map = new java.util.HashMap<>();
    map.put("linger.ms", null);
    return map;
  }
}
