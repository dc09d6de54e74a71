package org.txkafka.outbox.internal;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.Map;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.junit.jupiter.api.Test;
import org.txkafka.outbox.OutboxRelay;

/** The producer settings the relay adds when the user leaves them out, and keeps when given. */
class RelayProducerDefaultsTest {
  private static final Map<String, Object> MINIMAL =
      Map.of(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, "127.0.0.1:1");

  @Test
  void relayDefaultsApplyWhenNotGiven() {
    Map<String, Object> props = RelayConfig.producerProperties(MINIMAL, "relay-a");

    assertEquals(OutboxRelay.Builder.DEFAULT_PRODUCER_BATCH_BYTES, props.get(ProducerConfig.BATCH_SIZE_CONFIG));
    assertEquals(256 * 1024, props.get(ProducerConfig.BATCH_SIZE_CONFIG));
    assertEquals(5, props.get(ProducerConfig.LINGER_MS_CONFIG));
    assertEquals(1, props.get(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION));
    assertEquals(Integer.MAX_VALUE, props.get(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG));
    assertEquals(RelayConfig.DEFAULT_MAX_BLOCK_MS, props.get(ProducerConfig.MAX_BLOCK_MS_CONFIG));
    assertEquals("all", props.get(ProducerConfig.ACKS_CONFIG));
    assertEquals("true", props.get(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG));
    assertEquals("relay-a", props.get(ProducerConfig.CLIENT_ID_CONFIG));
  }

  @Test
  void givenValuesOfTheDefaultedSettingsAreKept() {
    Map<String, Object> props =
        RelayConfig.producerProperties(
            Map.of(
                ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, "127.0.0.1:1",
                ProducerConfig.BATCH_SIZE_CONFIG, 16384,
                ProducerConfig.LINGER_MS_CONFIG, 0,
                ProducerConfig.CLIENT_ID_CONFIG, "mine"),
            "relay-a");

    assertEquals(16384, props.get(ProducerConfig.BATCH_SIZE_CONFIG));
    assertEquals(0, props.get(ProducerConfig.LINGER_MS_CONFIG));
    assertEquals("mine", props.get(ProducerConfig.CLIENT_ID_CONFIG));
  }
}
