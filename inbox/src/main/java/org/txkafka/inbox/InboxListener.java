package org.txkafka.inbox;

import java.util.Collection;
import org.apache.kafka.common.TopicPartition;

/**
 * Callbacks about the inbox's life, for logging, alerting and tests. Every method has a no-op
 * default. They run on the inbox's own threads (poll thread or workers) and must return quickly
 * (some run while a worker holds work back for others); anything they throw is logged and ignored.
 */
public interface InboxListener {

  /** Partitions were assigned to this member (only the new ones with cooperative rebalancing). */
  default void onPartitionsAssigned(Collection<TopicPartition> partitions) {}

  /** Partitions were revoked in an orderly rebalance, after in-flight batches finished. */
  default void onPartitionsRevoked(Collection<TopicPartition> partitions) {}

  /** Partitions were lost (session expired, poll interval exceeded): their work is abandoned. */
  default void onPartitionsLost(Collection<TopicPartition> partitions) {}

  /** A batch of this member was fenced: another member claimed the partition in the database. */
  default void onPartitionFenced(TopicPartition partition) {}

  /** A record was dead-lettered (the transaction that stored it committed). */
  default void onDeadLettered(InboxRecord record, String reason) {}

  /**
   * A transaction of this member committed on {@code partition}: every record below {@code
   * nextOffset} is applied, recognised as a duplicate or dead-lettered, and {@code nextOffset} is
   * the stored offset. Called after the commit returned, on the worker that committed, so the
   * changes are visible to any new transaction. For metrics and lag, and for tests that wait until
   * a record is applied (wait for {@code nextOffset > record offset} instead of polling a table).
   * The offsets reported for a partition grow, except after it was claimed again (a rebalance, a
   * restart, fencing): work resumes from the stored offset, and an earlier owner's late report may
   * arrive after the new owner's first.
   */
  default void onCommitted(TopicPartition partition, long nextOffset) {}
}
