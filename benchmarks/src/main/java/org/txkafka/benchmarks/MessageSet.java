package org.txkafka.benchmarks;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.UUID;

/**
 * The messages every side of a row works on, generated deterministically from their index so that
 * each side sees exactly the same keys, payloads and message ids. The payload starts with the event
 * id and the amount (two big-endian longs) that the business row stores; the rest is filler.
 */
final class MessageSet {
  /** Smallest payload: the event id and the amount. */
  static final int MIN_PAYLOAD_BYTES = 16;

  private final int count;
  private final int keys;
  private final int payloadBytes;
  private final long idSeed;

  MessageSet(int count, int keys, int payloadBytes, long idSeed) {
    this.count = count;
    this.keys = keys;
    this.payloadBytes = Math.max(MIN_PAYLOAD_BYTES, payloadBytes);
    this.idSeed = idSeed;
  }

  int count() {
    return count;
  }

  MessageSet withCount(int newCount) {
    return new MessageSet(newCount, keys, payloadBytes, idSeed);
  }

  String key(long index) {
    return "account-" + (index % keys);
  }

  byte[] keyBytes(long index) {
    return key(index).getBytes(StandardCharsets.UTF_8);
  }

  long amount(long index) {
    return 100 + index % 9_900;
  }

  byte[] payload(long index) {
    ByteBuffer buffer = ByteBuffer.allocate(payloadBytes);
    buffer.putLong(index).putLong(amount(index));
    while (buffer.hasRemaining()) {
      buffer.put((byte) ('a' + buffer.position() % 26));
    }
    return buffer.array();
  }

  /** The payload as text, for sides whose API takes strings (gruelbox serialises arguments). */
  String payloadText(long index) {
    return new String(payload(index), StandardCharsets.ISO_8859_1);
  }

  UUID messageId(long index) {
    return new UUID(idSeed, index);
  }

  /** The event id of a payload made by {@link #payload}. */
  static long eventId(byte[] payload) {
    return ByteBuffer.wrap(payload).getLong(0);
  }

  /** The amount of a payload made by {@link #payload}. */
  static long amount(byte[] payload) {
    return ByteBuffer.wrap(payload).getLong(8);
  }
}
