package org.txkafka.outbox.internal;

import java.time.Duration;

/**
 * The relay's metrics seam. The default records nothing; {@link #create} returns the Micrometer
 * implementation only when a registry was configured, so no Micrometer class is ever loaded
 * otherwise.
 */
interface RelayMetrics {

  /** Records nothing. */
  RelayMetrics NONE = new RelayMetrics() {};

  /** The metrics for {@code config}: Micrometer if a registry is set, else {@link #NONE}. */
  static RelayMetrics create(RelayConfig config) {
    if (config.meterRegistry() == null) {
      return NONE;
    }
    return new MicrometerRelayMetrics(config.meterRegistry(), config.schema(), config.name());
  }

  /** Whether the relay should run its (periodic) stats query for the gauges. */
  default boolean wantsStats() {
    return false;
  }

  /** Rows acknowledged by Kafka and removed from the outbox. */
  default void published(int rows) {}

  /** Failed publish attempts: rows left pending after an error, and rows parked. */
  default void failed(int rows) {}

  /** The gauges, over the shares this relay holds. {@code oldestPendingAge} is zero if none. */
  default void stats(long pending, Duration oldestPendingAge, long parked, int ownedShares) {}

  /** Removes the meters from the registry. */
  default void close() {}
}
