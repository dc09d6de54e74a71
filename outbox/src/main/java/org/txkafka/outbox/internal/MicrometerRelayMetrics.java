package org.txkafka.outbox.internal;

import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.Meter;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Tags;
import io.micrometer.core.instrument.TimeGauge;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Micrometer meters of one relay. Loaded only through {@link RelayMetrics#create} when a registry
 * was configured. Thread-safe: gauges read atomics the relay thread updates.
 */
final class MicrometerRelayMetrics implements RelayMetrics {
  private final MeterRegistry registry;
  private final Counter published;
  private final Counter failures;
  private final AtomicLong pending = new AtomicLong();
  private final AtomicLong parked = new AtomicLong();
  private final AtomicLong oldestAgeMillis = new AtomicLong();
  private final AtomicLong owned = new AtomicLong();
  private final List<Meter> meters = new ArrayList<>();

  MicrometerRelayMetrics(Object meterRegistry, String schema, String relay) {
    this.registry = (MeterRegistry) meterRegistry;
    Tags tags = Tags.of("schema", schema, "relay", relay);
    published =
        Counter.builder("txkafka.outbox.published")
            .description("Outbox rows acknowledged by Kafka and removed from the outbox")
            .tags(tags)
            .register(registry);
    failures =
        Counter.builder("txkafka.outbox.failures")
            .description("Failed publish attempts (rows left pending or parked)")
            .tags(tags)
            .register(registry);
    meters.add(published);
    meters.add(failures);
    meters.add(
        Gauge.builder("txkafka.outbox.pending", pending, AtomicLong::doubleValue)
            .description("Rows waiting to be published in the shares this relay holds")
            .tags(tags)
            .register(registry));
    meters.add(
        Gauge.builder("txkafka.outbox.parked", parked, AtomicLong::doubleValue)
            .description("Parked rows (never sendable until replayed) in this relay's shares")
            .tags(tags)
            .register(registry));
    meters.add(
        TimeGauge.builder(
                "txkafka.outbox.oldest.pending.age",
                oldestAgeMillis,
                TimeUnit.MILLISECONDS,
                AtomicLong::doubleValue)
            .description("Age of the oldest pending row in the shares this relay holds")
            .tags(tags)
            .register(registry));
    meters.add(
        Gauge.builder("txkafka.outbox.shares.owned", owned, AtomicLong::doubleValue)
            .description("Outbox shares this relay holds")
            .tags(tags)
            .register(registry));
  }

  @Override
  public boolean wantsStats() {
    return true;
  }

  @Override
  public void published(int rows) {
    published.increment(rows);
  }

  @Override
  public void failed(int rows) {
    failures.increment(rows);
  }

  @Override
  public void stats(long pendingRows, Duration oldestPendingAge, long parkedRows, int ownedShares) {
    pending.set(pendingRows);
    oldestAgeMillis.set(Math.max(0, oldestPendingAge.toMillis()));
    parked.set(parkedRows);
    owned.set(ownedShares);
  }

  @Override
  public void close() {
    for (Meter meter : meters) {
      registry.remove(meter);
    }
  }
}
