package org.txkafka.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.function.Supplier;
import org.junit.jupiter.api.Test;

/**
 * A message that Kafka could never take is refused where it is built, inside the business
 * transaction, with the rule it broke; not committed and then parked by the relay.
 */
class OutboxMessageTest {
  private static void assertRefused(Supplier<OutboxMessage> build, String... fragments) {
    IllegalArgumentException error = assertThrows(IllegalArgumentException.class, build::get);
    for (String fragment : fragments) {
      assertTrue(
          error.getMessage().contains(fragment),
          "message '" + error.getMessage() + "' should contain '" + fragment + "'");
    }
  }

  @Test
  void topicNamesKafkaRefusesAreRefusedAtBuild() {
    assertRefused(() -> OutboxMessage.to(" ").build(), "topic must not be blank");
    assertRefused(() -> OutboxMessage.to(null).build(), "topic must not be blank");
    assertRefused(() -> OutboxMessage.to("x".repeat(250)).build(), "at most 249", "250");
    assertRefused(
        () -> OutboxMessage.to("orders placed/v1").build(),
        "topic must be a Kafka topic name",
        "'orders placed/v1'");
    assertRefused(() -> OutboxMessage.to(".").build(), "not '.' or '..'");
    assertRefused(() -> OutboxMessage.to("..").build(), "not '.' or '..'");
    assertEquals("orders.placed_v1-2", OutboxMessage.to("orders.placed_v1-2").build().topic());
    assertEquals(249, OutboxMessage.to("x".repeat(249)).build().topic().length());
  }

  @Test
  void partitionAndHeadersAreChecked() {
    assertRefused(
        () -> OutboxMessage.to("orders").partition(-1).build(), "partition must be at least 0");
    assertRefused(
        () -> OutboxMessage.to("orders").header(" ", "x").build(), "header name must not be blank");
    assertRefused(
        () -> OutboxMessage.to("orders").header("trace\u0000id", "x").build(),
        "header name must not contain a NUL character (the outbox stores names as PostgreSQL text),"
            + " was 'trace?id'");
    assertRefused(
        () -> OutboxMessage.to("orders").header(Outbox.MESSAGE_ID_HEADER, "x").build(),
        Outbox.MESSAGE_ID_HEADER,
        "set by the outbox");
    assertEquals(0, OutboxMessage.to("orders").partition(0).build().partition());
  }
}
