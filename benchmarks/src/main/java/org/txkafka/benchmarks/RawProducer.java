package org.txkafka.benchmarks;

import java.time.Duration;
import java.util.concurrent.atomic.AtomicReference;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.txkafka.outbox.OutboxRelay;

/**
 * Baseline of row 3: a raw {@link KafkaProducer}, with the producer settings the relay is given
 * and the relay's own {@code batch.size} default (so that both sides send the same request
 * sizes), sending the same messages (key, payload, message-id header) straight from memory. The time runs
 * from the first send to the last acknowledgement; the latency is send to acknowledgement.
 */
final class RawProducer {
  private RawProducer() {}

  static Outcome run(BenchContext ctx, MessageSet set, String topic) {
    HeapMonitor heap = HeapMonitor.start();
    AtomicReference<Exception> failure = new AtomicReference<>();
    Latencies latencies = new Latencies();
    long start;
    long end;
    Properties props = ctx.producerProperties();
    props.put(ProducerConfig.BATCH_SIZE_CONFIG, OutboxRelay.Builder.DEFAULT_PRODUCER_BATCH_BYTES);
    try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
      // Connect and fetch metadata before the clock starts, as a running relay would have.
      producer.partitionsFor(topic);
      start = System.nanoTime();
      for (long i = 0; i < set.count(); i++) {
        long sent = System.nanoTime();
        producer.send(
            BenchContext.record(topic, set, i),
            (metadata, e) -> {
              if (e != null) {
                failure.compareAndSet(null, e);
              }
              long acked = System.nanoTime();
              synchronized (latencies) {
                latencies.add(acked - sent);
              }
            });
      }
      producer.flush();
      end = System.nanoTime();
    }
    if (failure.get() != null) {
      throw new IllegalStateException("raw producer failed", failure.get());
    }
    return new Outcome.Measured(
        "raw KafkaProducer", set.count(), Duration.ofNanos(end - start), latencies, heap.stop());
  }
}
