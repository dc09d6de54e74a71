package org.txkafka.inbox.internal;

import io.micrometer.core.instrument.Counter;
import io.micrometer.core.instrument.Gauge;
import io.micrometer.core.instrument.MeterRegistry;
import io.micrometer.core.instrument.Timer;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.function.LongSupplier;
import org.apache.kafka.common.TopicPartition;

/**
 * Micrometer metrics, tagged with the consumer group (and topic, partition where it applies):
 * {@code txkafka.inbox.records.processed}, {@code txkafka.inbox.records.duplicates}, {@code
 * txkafka.inbox.records.dead.lettered} (counters), {@code txkafka.inbox.batch.latency} (timer),
 * {@code txkafka.inbox.lag} (gauge: end offset minus stored offset). Loaded only when a registry is
 * configured.
 */
final class MicrometerInboxMetrics implements InboxMetrics {
  private final MeterRegistry registry;
  private final String group;
  private final Timer latency;
  private final Map<String, Counter> counters = new ConcurrentHashMap<>();
  private final Map<TopicPartition, Gauge> gauges = new ConcurrentHashMap<>();

  private MicrometerInboxMetrics(MeterRegistry registry, String group) {
    this.registry = registry;
    this.group = group;
    this.latency =
        Timer.builder("txkafka.inbox.batch.latency")
            .description("Time of one committed batch transaction")
            .tag("group", group)
            .register(registry);
  }

  static InboxMetrics create(Object registry, String group) {
    return new MicrometerInboxMetrics((MeterRegistry) registry, group);
  }

  private Counter counter(String name, String topic) {
    return counters.computeIfAbsent(
        name + '\u0000' + topic,
        key -> Counter.builder(name).tag("group", group).tag("topic", topic).register(registry));
  }

  @Override
  public void processed(TopicPartition partition, int count) {
    counter("txkafka.inbox.records.processed", partition.topic()).increment(count);
  }

  @Override
  public void duplicates(TopicPartition partition, int count) {
    counter("txkafka.inbox.records.duplicates", partition.topic()).increment(count);
  }

  @Override
  public void deadLettered(TopicPartition partition) {
    counter("txkafka.inbox.records.dead.lettered", partition.topic()).increment();
  }

  @Override
  public void batchLatency(long nanos) {
    latency.record(nanos, TimeUnit.NANOSECONDS);
  }

  @Override
  public void partitionAdded(TopicPartition partition, LongSupplier lag) {
    Gauge gauge =
        Gauge.builder("txkafka.inbox.lag", lag, supplier -> supplier.getAsLong())
            .description("End offset minus the offset stored in the database")
            .tag("group", group)
            .tag("topic", partition.topic())
            .tag("partition", Integer.toString(partition.partition()))
            .strongReference(true)
            .register(registry);
    gauges.put(partition, gauge);
  }

  @Override
  public void partitionRemoved(TopicPartition partition) {
    Gauge gauge = gauges.remove(partition);
    if (gauge != null) {
      registry.remove(gauge);
    }
  }
}
