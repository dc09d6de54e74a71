package org.txkafka.inbox.internal;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.TopicPartition;

/**
 * One assigned partition of this member: its phase, its queue of fetched records and the offset
 * committed in the database. The poll thread appends records and changes the phase on rebalances;
 * at most one worker at a time (guarded by {@link #scheduled}) takes records.
 *
 * <p>Phases: {@code CLAIMING} (assigned, paused, epoch being claimed in the database), {@code
 * CLAIMED} (claim done, the poll thread must seek), {@code READY} (records are processed), {@code
 * FENCED} (another owner claimed it in the database: never commit again), {@code GONE} (revoked,
 * lost or closing: never start anything again). Workers only move CLAIMING to CLAIMED, READY to
 * FENCED and READY to CLAIMING (restart after an unexpected error), each by compare-and-set, so
 * they never undo GONE.
 */
final class PartitionState {
  enum Phase {
    CLAIMING,
    CLAIMED,
    READY,
    FENCED,
    GONE
  }

  final TopicPartition partition;
  final AtomicReference<Phase> phase = new AtomicReference<>(Phase.CLAIMING);
  final AtomicBoolean scheduled = new AtomicBoolean();

  /** True while a claim task for this state is queued or running. */
  final AtomicBoolean claiming = new AtomicBoolean();

  private final ConcurrentLinkedQueue<ConsumerRecord<byte[], byte[]>> queue =
      new ConcurrentLinkedQueue<>();
  private final AtomicInteger queued = new AtomicInteger();

  /** Owner epoch of the current claim; written by the claim task before CLAIMED. */
  volatile long epoch;

  /** Stored next offset returned by the claim (null: none stored). */
  volatile Long claimedOffset;

  /**
   * Records still to be applied one at a time, each after a committed start mark, because the
   * claim found a lost batch ({@link InboxSql#claim}); written by the claim task before CLAIMED,
   * then only by the worker applying this partition's batch (one at a time).
   */
  volatile int guardedRecords;

  /**
   * Where this assignment began when nothing was stored in the database (the Kafka-committed
   * offset or the reset policy, resolved once by the poll thread), else -1. A re-claim that still
   * finds nothing stored restarts here.
   */
  volatile long originOffset = -1;

  /** When the partition was fenced (System.nanoTime), for the delayed re-claim. */
  volatile long fencedAtNanos;

  /** Next offset this member committed in the database, -1 if none. */
  volatile long committedOffset = -1;

  /**
   * The fetch-stream position just before the head of the queue: the offset after the last record
   * taken by a worker, or the position the consumer seeked to; -1 before the first seek. Only the
   * poll thread
   * (at a seek, before READY) and the one scheduled worker (in {@link #take}) write it.
   */
  volatile long streamPosition = -1;

  /** A batch taken from the queue, with the stored offset its first commit must find. */
  record Batch(List<ConsumerRecord<byte[], byte[]>> records, Long expectedStart) {}

  /** Highest offset fetched + 1, and the consumer's lag estimate (poll thread writes). */
  volatile long fetchedOffset = -1;

  volatile long endOffset = -1;

  /** Poll thread only. */
  long mirroredOffset = -1;

  /** Poll thread only: where the last claim seeked to (the first record fetched may not be lower). */
  long seekOffset = -1;

  boolean paused;

  PartitionState(TopicPartition partition) {
    this.partition = partition;
  }

  boolean isReady() {
    return phase.get() == Phase.READY;
  }

  void enqueue(List<ConsumerRecord<byte[], byte[]>> records) {
    queue.addAll(records);
    queued.addAndGet(records.size());
  }

  /**
   * Takes up to {@code max} records from the head of the queue. The batch carries the stream
   * position before its first record (as the value the stored offset must have: null when nothing
   * was stored and the batch starts at the origin); a batch that is then lost (a worker died) leaves the stored
   * offset behind that position, so the next batch cannot commit: it is fenced and re-claimed
   * instead of skipping records.
   */
  Batch take(int max) {
    List<ConsumerRecord<byte[], byte[]>> batch = new ArrayList<>(Math.min(max, queued.get()));
    while (batch.size() < max) {
      ConsumerRecord<byte[], byte[]> record = queue.poll();
      if (record == null) {
        break;
      }
      queued.decrementAndGet();
      batch.add(record);
    }
    long before = streamPosition;
    if (!batch.isEmpty()) {
      streamPosition = batch.get(batch.size() - 1).offset() + 1;
    }
    return new Batch(batch, storedBefore(before));
  }

  /** The stored offset a commit continuing the stream at {@code position} must find. */
  Long storedBefore(long position) {
    if (position < 0 || (claimedOffset == null && position == originOffset)) {
      return null;
    }
    return position;
  }

  int queued() {
    return queued.get();
  }

  void clear() {
    while (queue.poll() != null) {
      queued.decrementAndGet();
    }
  }

  /** Offset of the first record fetched since the last seek, or -1 (poll thread writes). */
  volatile long firstFetchedOffset = -1;

  /**
   * Lag: end offset minus the offset stored in the database; before the first commit, minus the
   * claimed or first fetched offset. 0 while unknown.
   */
  long lag() {
    long end = endOffset;
    if (end < 0) {
      return 0;
    }
    long start = committedOffset;
    if (start < 0) {
      Long claimed = claimedOffset;
      start = claimed != null ? claimed : firstFetchedOffset >= 0 ? firstFetchedOffset : end;
    }
    return Math.max(0, end - start);
  }
}
