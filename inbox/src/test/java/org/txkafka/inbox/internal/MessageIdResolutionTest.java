package org.txkafka.inbox.internal;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Headers;
import org.junit.jupiter.api.Test;
import org.txkafka.inbox.MessageIdExtractor;
import org.txkafka.outbox.Outbox;

/** How a record's message id is found, validated or derived. */
class MessageIdResolutionTest {

  private static ConsumerRecord<byte[], byte[]> record(byte[] id) {
    ConsumerRecord<byte[], byte[]> record =
        new ConsumerRecord<>("orders", 3, 42L, null, "v".getBytes(StandardCharsets.UTF_8));
    if (id != null) {
      record.headers().add(Outbox.MESSAGE_ID_HEADER, id);
    }
    return record;
  }

  private static BatchProcessor.Item resolve(byte[] id) {
    return BatchProcessor.resolve(record(id), MessageIdExtractor.outboxHeader());
  }

  @Test
  void headerIdIsUsed() {
    BatchProcessor.Item item = resolve("0190-abc".getBytes(StandardCharsets.UTF_8));
    assertEquals("0190-abc", item.record().messageId());
    assertNull(item.malformed());
  }

  @Test
  void recordWithoutIdGetsADeterministicIdFromTopicPartitionOffset() {
    assertEquals("kafka:orders/3/42", resolve(null).record().messageId());
    assertEquals(resolve(null).record().messageId(), resolve(null).record().messageId());
    assertNull(resolve(null).malformed());
  }

  @Test
  void malformedIdsHaveAClearReason() {
    assertTrue(resolve(new byte[0]).malformed().contains("empty"));
    assertTrue(resolve(new byte[] {(byte) 0xC3, 0x28}).malformed().contains("not valid UTF-8"));
    assertTrue(
        resolve("x".repeat(256).getBytes(StandardCharsets.UTF_8)).malformed().contains("256"));
    assertTrue(resolve("a\u0000b".getBytes(StandardCharsets.UTF_8)).malformed().contains("NUL"));
    assertEquals("kafka:orders/3/42", resolve(new byte[0]).record().messageId());
    assertNull(resolve("x".repeat(255).getBytes(StandardCharsets.UTF_8)).malformed());
  }

  @Test
  void extractorFailureIsAMalformedId() {
    BatchProcessor.Item item =
        BatchProcessor.resolve(
            record(null),
            r -> {
              throw new IllegalStateException("boom");
            });
    assertTrue(item.malformed().contains("extractor failed"), item.malformed());
  }

  @Test
  void handlerSeesReadOnlyHeaders() {
    Headers headers = resolve("id".getBytes(StandardCharsets.UTF_8)).record().headers();
    assertThrows(IllegalStateException.class, () -> headers.add("x", new byte[0]));
  }
}
