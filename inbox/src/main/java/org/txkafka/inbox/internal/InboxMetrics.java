package org.txkafka.inbox.internal;

import java.util.function.LongSupplier;
import org.apache.kafka.common.TopicPartition;

/**
 * The metrics seam. {@link #create} returns a no-op without a registry, so that no Micrometer class
 * is ever loaded when Micrometer is absent. Implementations are thread-safe.
 */
public interface InboxMetrics {

  /** Records whose handler ran and committed. */
  void processed(TopicPartition partition, int count);

  /** Records skipped because their message id was already in the inbox. */
  void duplicates(TopicPartition partition, int count);

  /** One record dead-lettered. */
  void deadLettered(TopicPartition partition);

  /** Wall time of one committed batch transaction. */
  void batchLatency(long nanos);

  /** Starts the lag gauge of a partition: end offset minus stored offset. */
  void partitionAdded(TopicPartition partition, LongSupplier lag);

  /** Removes the lag gauge of a partition. */
  void partitionRemoved(TopicPartition partition);

  /** No-op metrics without a registry, Micrometer ones with one. */
  static InboxMetrics create(Object meterRegistry, String group) {
    if (meterRegistry == null) {
      return Noop.INSTANCE;
    }
    return MicrometerInboxMetrics.create(meterRegistry, group);
  }

  /** The no-op implementation. */
  enum Noop implements InboxMetrics {
    INSTANCE;

    @Override
    public void processed(TopicPartition partition, int count) {}

    @Override
    public void duplicates(TopicPartition partition, int count) {}

    @Override
    public void deadLettered(TopicPartition partition) {}

    @Override
    public void batchLatency(long nanos) {}

    @Override
    public void partitionAdded(TopicPartition partition, LongSupplier lag) {}

    @Override
    public void partitionRemoved(TopicPartition partition) {}
  }
}
