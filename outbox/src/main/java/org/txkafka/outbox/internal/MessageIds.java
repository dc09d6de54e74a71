package org.txkafka.outbox.internal;

import java.security.SecureRandom;
import java.util.UUID;

/**
 * Time-ordered (version 7) UUIDs: the far inbox indexes message ids, and ids that grow with time
 * keep its B-tree inserts local instead of scattering them.
 */
public final class MessageIds {
  private static final SecureRandom RANDOM = new SecureRandom();

  private MessageIds() {}

  /** A new version 7 UUID: 48 bits of milliseconds since the epoch, 74 random bits. */
  public static UUID newId() {
    byte[] random = new byte[10];
    RANDOM.nextBytes(random);
    long millis = System.currentTimeMillis();
    long high = (millis << 16) | 0x7000L | ((random[0] & 0x0FL) << 8) | (random[1] & 0xFFL);
    long low = 0x8000_0000_0000_0000L | ((random[2] & 0x3FL) << 56);
    for (int i = 3; i < 10; i++) {
      low |= (random[i] & 0xFFL) << (8 * (9 - i));
    }
    return new UUID(high, low);
  }
}
