package org.txkafka.outbox.internal;

import java.util.UUID;
import org.apache.kafka.common.utils.Utils;
import org.txkafka.outbox.Outbox;

/**
 * Maps a message to its share of the outbox. Rows with the same key always land in the same share
 * (whatever the topic), so the one relay that owns the share publishes them in order. Keyless rows
 * are spread by their message id.
 */
public final class Shares {
  private Shares() {}

  /** The share, in {@code [0, Outbox.SHARE_COUNT)}. */
  public static int shareOf(byte[] key, UUID messageId) {
    if (key == null) {
      return (int) Math.floorMod(messageId.getLeastSignificantBits(), (long) Outbox.SHARE_COUNT);
    }
    return Utils.toPositive(Utils.murmur2(key)) % Outbox.SHARE_COUNT;
  }
}
