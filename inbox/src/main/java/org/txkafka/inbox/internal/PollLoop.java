package org.txkafka.inbox.internal;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.OptionalLong;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.CloseOptions;
import org.apache.kafka.clients.consumer.Consumer;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.RetriableException;
import org.apache.kafka.common.errors.GroupMaxSizeReachedException;
import org.apache.kafka.common.errors.UnreleasedInstanceIdException;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.txkafka.SqlIdentifiers;
import org.txkafka.inbox.InboxListener;
import org.txkafka.inbox.internal.PartitionState.Phase;

/**
 * The poll thread: the only thread that touches the {@link Consumer} (it is not thread-safe).
 *
 * <p>Invariants:
 *
 * <ul>
 *   <li>It never blocks on the database: partition claims run on workers, so a slow or absent
 *       database, or a zombie holding a row lock, never stops it from polling (no rebalance).
 *   <li>It keeps calling poll() while handlers run: a partition whose queue holds queuedBatches
 *       full batches, or that is not ready, is paused, so buffered records are bounded by
 *       configuration (about maxBatchSize * (queuedBatches + 1) + max.poll.records per partition,
 *       counting the batch in its transaction), never by the backlog.
 *   <li>No record of a partition is handed to a worker before its claim is done and the consumer
 *       seeked to the stored offset; records fetched from before the seek are dropped.
 *   <li>Revocation waits, at most revocationTimeout, for in-flight batches of the revoked
 *       partitions; lost partitions are abandoned at once (their commits will be fenced).
 *   <li>Kafka-committed offsets are only ever offsets the database committed (a mirror for lag
 *       tools); the database wins on assignment.
 * </ul>
 *
 * <p>Fetch-ahead (several batches queued per partition) changes none of this: a queued record is
 * only memory until the partition's one scheduled worker takes it and its transaction passes the
 * compare-and-set on epoch and stored offset. Revocation, loss, fencing and a restart clear the
 * queue and wait (revocation, close) only for the batch in its transaction; the records dropped
 * were never committed, so the next owner, or this member after its claim, fetches them again from
 * the stored offset. A batch taken after records were dropped behind its back cannot commit
 * either: its expected offset is not the stored one.
 */
final class PollLoop implements Runnable, ConsumerRebalanceListener {
  private static final Logger LOG = LoggerFactory.getLogger(PollLoop.class);
  private static final Duration POLL_TIMEOUT = Duration.ofMillis(100);

  /**
   * Poll timeout while a ready partition is paused because its queue is full: a worker may take
   * that queue any moment, and the partition is only resumed by this thread between polls, so a
   * long poll (with nothing else to fetch) would leave the worker idle for the whole timeout.
   */
  private static final Duration BACKPRESSURE_POLL_TIMEOUT = Duration.ofMillis(2);
  private static final long MIRROR_INTERVAL_NANOS = 1_000_000_000L;
  private static final long WAIT_SLICE_MILLIS = 5;
  private static final Duration ORIGIN_TIMEOUT = Duration.ofSeconds(5);

  /** Kafka's default session timeout, when the consumer properties do not set one. */
  private static final long DEFAULT_SESSION_TIMEOUT_MS = 45_000;

  private final InboxSettings settings;
  private final Consumer<byte[], byte[]> consumer;
  private final ExecutorService workers;
  private final BatchProcessor processor;
  private final PartitionClaimer claimer;
  private final InboxMetrics metrics;
  private final Map<TopicPartition, PartitionState> states = new HashMap<>();
  private volatile boolean running = true;
  private volatile Throwable failure;
  private long lastMirror = System.nanoTime();

  /**
   * A fenced partition that Kafka still assigns here after this long is claimed again. A member
   * that really lost the partition (a zombie) learns so from its first heartbeat after waking up,
   * well within one session timeout, and drops it; a member that still holds it after a whole
   * session timeout of successful heartbeats is its owner in Kafka's eyes, so the claim that fenced
   * it was a stale one (made by a member whose claim was still running when the partition was taken
   * from it) and must not stall the partition.
   */
  private final long reclaimAfterFencingNanos;

  /** Claims partitions in the database; runs on a worker. */
  interface PartitionClaimer {
    void claim(PartitionState state);
  }

  PollLoop(
      InboxSettings settings,
      Consumer<byte[], byte[]> consumer,
      ExecutorService workers,
      BatchProcessor processor,
      PartitionClaimer claimer,
      InboxMetrics metrics) {
    this.settings = settings;
    this.consumer = consumer;
    this.workers = workers;
    this.processor = processor;
    this.claimer = claimer;
    this.metrics = metrics;
    Object session = settings.consumerProperties().get("session.timeout.ms");
    long sessionMillis =
        session == null
            ? DEFAULT_SESSION_TIMEOUT_MS
            : Long.parseLong(String.valueOf(session).trim());
    this.reclaimAfterFencingNanos = TimeUnit.MILLISECONDS.toNanos(sessionMillis + 1000);
  }

  /** Asks the loop to stop; it then finishes in-flight work within closeTimeout and closes. */
  void stop() {
    running = false;
  }

  boolean isRunning() {
    return running;
  }

  Throwable failure() {
    return failure;
  }

  @Override
  public void run() {
    try {
      if (settings.topicPattern() != null) {
        consumer.subscribe(settings.topicPattern(), this);
      } else {
        consumer.subscribe(settings.topics(), this);
      }
      while (running) {
        try {
          step();
        } catch (RetriableException e) {
          LOG.warn("retriable Kafka error while polling; continuing", e);
          sleepQuietly(500);
        }
      }
    } catch (UnreleasedInstanceIdException | GroupMaxSizeReachedException e) {
      failure = e; // the inbox joins again with a new consumer (InboxRuntime), and says so
      running = false;
    } catch (RuntimeException | Error e) {
      failure = e;
      running = false;
      LOG.error("inbox poll thread of group {} stopped on an error", settings.groupId(), e);
    } finally {
      shutdown();
    }
  }

  private void step() {
    advancePhases();
    boolean backpressure = adjustPause();
    if (System.nanoTime() - lastMirror >= MIRROR_INTERVAL_NANOS) {
      lastMirror = System.nanoTime();
      mirror(states.values(), false);
      updateLag();
    }
    ConsumerRecords<byte[], byte[]> records =
        consumer.poll(backpressure ? BACKPRESSURE_POLL_TIMEOUT : POLL_TIMEOUT);
    for (TopicPartition partition : records.partitions()) {
      PartitionState state = states.get(partition);
      if (state == null) {
        continue;
      }
      Phase phase = state.phase.get();
      if (phase == Phase.GONE || phase == Phase.FENCED) {
        continue;
      }
      List<ConsumerRecord<byte[], byte[]>> list = records.records(partition);
      if (phase == Phase.READY) {
        requireForward(state, list.get(0).offset());
      }
      state.enqueue(list);
      if (state.firstFetchedOffset < 0) {
        state.firstFetchedOffset = list.get(0).offset();
      }
      state.fetchedOffset = list.get(list.size() - 1).offset() + 1;
      schedule(state);
    }
  }

  /**
   * Refuses records from behind the position this member seeked to or fetched up to. Offsets only
   * grow within a partition, so that means the consumer reset its position: the stored offset was
   * out of range (the topic deleted and created again, its log truncated by an unclean leader
   * election, a service pointed at another cluster with its database kept) and the reset policy
   * moved it back. Applying those records would move the stored offset backwards: records whose
   * inbox rows have expired would be applied twice, and records reusing the offsets of derived
   * message ids would be taken for duplicates and never applied. Only an operator can tell which
   * is right, so the inbox stops before applying any of them.
   */
  private void requireForward(PartitionState state, long firstOffset) {
    long expected = state.fetchedOffset >= 0 ? state.fetchedOffset : state.seekOffset;
    if (expected >= 0 && firstOffset < expected) {
      throw new IllegalStateException(
          "partition "
              + state.partition
              + " of group "
              + settings.groupId()
              + ": the consumer returned offset "
              + firstOffset
              + " where it was at "
              + expected
              + " (the offset stored in the database or fetched up to): its position was reset,"
              + " so the stored offset is out of range (topic deleted and created again, log"
              + " truncated, another cluster?). Nothing of it was applied and the inbox stops."
              + " To go on, set the partition's stored offset to the offset to go on from (0 for"
              + " a topic created again), clear its batch marks and delete the old records'"
              + " derived ids (records without a message-id header have ids 'kafka:<topic>/"
              + "<partition>/<offset>' that the new records at those offsets would be taken for"
              + " duplicates of), in one transaction, then start again: "
              + recoverySql(state.partition)
              + " Do not delete the offset row: the position would then come from the group's"
              + " offset in Kafka, which still holds the old one.");
    }
  }

  /**
   * The two statements that let a partition whose stored offset is out of range go on from
   * {@code <offset>}, as SQL a person can paste: schema-qualified, literals quoted.
   */
  String recoverySql(TopicPartition partition) {
    String schema = SqlIdentifiers.quoted("schema", settings.schema());
    String group = literal(settings.groupId());
    return "UPDATE "
        + schema
        + ".txkafka_inbox_offset SET next_offset = <offset>, batch_offset = NULL, batch_records ="
        + " NULL, started_offset = NULL, started_count = 0, started_token = NULL WHERE"
        + " consumer_group = "
        + group
        + " AND topic = "
        + literal(partition.topic())
        + " AND kafka_partition = "
        + partition.partition()
        + "; DELETE FROM "
        + schema
        + ".txkafka_inbox WHERE consumer_group = "
        + group
        + " AND starts_with(message_id, "
        + literal("kafka:" + partition.topic() + "/" + partition.partition() + "/")
        + ");";
  }

  /** A standard SQL string literal: quotes doubled. */
  private static String literal(String value) {
    return "'" + value.replace("'", "''") + "'";
  }

  /** Applies phase changes made by workers: seek after a claim, drop work after fencing. */
  private void advancePhases() {
    for (PartitionState state : states.values()) {
      Phase phase = state.phase.get();
      if (phase == Phase.CLAIMED) {
        // The database alone says where to (re)start: the stored offset, or, while nothing is
        // stored, the concrete position this assignment began at (Kafka-committed offset or
        // reset policy, resolved once). Never a position remembered from in-memory batches.
        Long stored = state.claimedOffset;
        long start;
        if (stored != null) {
          start = stored;
        } else if (state.originOffset >= 0) {
          start = state.originOffset;
        } else {
          try {
            start = consumer.position(state.partition, ORIGIN_TIMEOUT);
          } catch (KafkaException e) {
            LOG.warn("cannot resolve the start position of {} yet; retrying", state.partition, e);
            continue;
          }
          state.originOffset = start;
        }
        state.clear();
        state.fetchedOffset = -1;
        state.firstFetchedOffset = -1;
        consumer.seek(state.partition, start);
        state.seekOffset = start;
        state.streamPosition = start;
        LOG.info(
            "claimed {} with epoch {}, starting at offset {} ({})",
            state.partition,
            state.epoch,
            start,
            stored != null ? "stored in the database" : "nothing stored yet");
        if (state.phase.compareAndSet(Phase.CLAIMED, Phase.READY)) {
          schedule(state);
        }
      } else if (phase == Phase.FENCED) {
        state.clear();
        if (System.nanoTime() - state.fencedAtNanos >= reclaimAfterFencingNanos
            && state.phase.compareAndSet(Phase.FENCED, Phase.CLAIMING)) {
          LOG.info("{} is still assigned here after fencing: claiming it again", state.partition);
          submitClaim(state);
        }
      }
    }
  }

  /**
   * Pauses partitions that are not ready or whose queue holds queuedBatches full batches, resumes
   * the others.
   * Returns whether some ready partition is paused because its queue is full (back-pressure).
   */
  private boolean adjustPause() {
    List<TopicPartition> pause = new ArrayList<>();
    List<TopicPartition> resume = new ArrayList<>();
    boolean backpressure = false;
    for (PartitionState state : states.values()) {
      boolean full =
          state.queued() >= (long) settings.maxBatchSize() * settings.queuedBatches();
      backpressure |= full && state.isReady();
      boolean shouldPause = !state.isReady() || full;
      if (shouldPause != state.paused) {
        (shouldPause ? pause : resume).add(state.partition);
        state.paused = shouldPause;
      }
    }
    if (!pause.isEmpty()) {
      consumer.pause(pause);
    }
    if (!resume.isEmpty()) {
      consumer.resume(resume);
    }
    return backpressure;
  }

  private void updateLag() {
    for (PartitionState state : states.values()) {
      if (!state.isReady()) {
        continue;
      }
      OptionalLong lag = consumer.currentLag(state.partition);
      long position = state.fetchedOffset >= 0 ? state.fetchedOffset : state.committedOffset;
      if (lag.isPresent() && position >= 0) {
        state.endOffset = position + lag.getAsLong();
      }
    }
  }

  /** Commits to Kafka the offsets the database committed (a mirror for lag tools). */
  private void mirror(Collection<PartitionState> partitions, boolean sync) {
    Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
    for (PartitionState state : partitions) {
      long committed = state.committedOffset;
      if (committed > state.mirroredOffset) {
        offsets.put(state.partition, new OffsetAndMetadata(committed));
        state.mirroredOffset = committed;
      }
    }
    if (offsets.isEmpty()) {
      return;
    }
    try {
      if (sync) {
        consumer.commitSync(offsets, Duration.ofSeconds(5));
      } else {
        consumer.commitAsync(
            offsets,
            (done, error) -> {
              if (error != null) {
                LOG.debug("mirroring offsets to Kafka failed (the database keeps them)", error);
              }
            });
      }
    } catch (KafkaException e) {
      LOG.debug("mirroring offsets to Kafka failed (the database keeps them)", e);
    }
  }

  void schedule(PartitionState state) {
    if (state.isReady() && state.queued() > 0 && state.scheduled.compareAndSet(false, true)) {
      try {
        workers.execute(() -> work(state));
      } catch (RejectedExecutionException e) {
        state.scheduled.set(false);
      }
    }
  }

  private void work(PartitionState state) {
    try {
      if (state.isReady() && running) {
        PartitionState.Batch batch = state.take(settings.maxBatchSize());
        if (!batch.records().isEmpty()) {
          try {
            processor.process(state, batch.records(), batch.expectedStart());
          } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
          } catch (Throwable e) {
            // Whatever escaped, the batch is lost in memory; the database still stores the offset
            // before it, so the partition is claimed again and resumes from there.
            LOG.error(
                "unexpected failure processing {}; re-claiming it to restart from the stored"
                    + " offset",
                state.partition,
                e);
            restart(state);
            if (e instanceof VirtualMachineError error) {
              throw error;
            }
          }
        }
      }
    } finally {
      state.scheduled.set(false);
      // Workers are interrupted only by close(), after the loop stopped. While it runs, a flag
      // here is one a handler left set (it caught an interrupt and restored the flag, as Java code
      // should, then returned): not a request to stop, and the partition's queued records must
      // still get a worker. Skipping the reschedule on it stalled a paused partition for good.
      if (running) {
        Thread.interrupted();
        schedule(state);
      }
    }
  }

  private void restart(PartitionState state) {
    if (state.phase.compareAndSet(Phase.READY, Phase.CLAIMING)) {
      state.clear();
      submitClaim(state);
    }
  }

  private void submitClaim(PartitionState state) {
    state.claiming.set(true);
    try {
      workers.execute(
          () -> {
            try {
              claimer.claim(state);
            } finally {
              state.claiming.set(false);
            }
          });
    } catch (RejectedExecutionException e) {
      state.claiming.set(false);
      LOG.debug("not claiming {}: the inbox is closing", state.partition);
    }
  }

  @Override
  public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
    List<TopicPartition> added = new ArrayList<>();
    for (TopicPartition partition : partitions) {
      PartitionState existing = states.get(partition);
      if (existing != null && existing.phase.get() != Phase.GONE) {
        continue;
      }
      PartitionState state = new PartitionState(partition);
      state.paused = true;
      states.put(partition, state);
      safely(() -> metrics.partitionAdded(partition, state::lag));
      added.add(partition);
      submitClaim(state);
    }
    if (!added.isEmpty()) {
      consumer.pause(added);
      LOG.info("assigned {}", added);
      notify(listener -> listener.onPartitionsAssigned(List.copyOf(added)));
    }
  }

  @Override
  public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
    List<PartitionState> revoked = remove(partitions);
    if (revoked.isEmpty()) {
      return;
    }
    awaitIdle(revoked, settings.revocationTimeout());
    mirror(revoked, true);
    LOG.info("revoked {}", partitions);
    notify(listener -> listener.onPartitionsRevoked(List.copyOf(partitions)));
  }

  @Override
  public void onPartitionsLost(Collection<TopicPartition> partitions) {
    List<PartitionState> lost = remove(partitions);
    if (lost.isEmpty()) {
      return;
    }
    LOG.warn("lost {}: in-flight batches are abandoned and will be fenced", partitions);
    notify(listener -> listener.onPartitionsLost(List.copyOf(partitions)));
  }

  private List<PartitionState> remove(Collection<TopicPartition> partitions) {
    List<PartitionState> removed = new ArrayList<>();
    for (TopicPartition partition : partitions) {
      PartitionState state = states.remove(partition);
      if (state != null) {
        state.phase.set(Phase.GONE);
        state.clear();
        safely(() -> metrics.partitionRemoved(partition));
        removed.add(state);
      }
    }
    return removed;
  }

  private static void awaitIdle(Collection<PartitionState> partitions, Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    for (PartitionState state : partitions) {
      // A running claim must end too: finishing after another member's claim, it would fence
      // that member (each claim attempt waits at most the claim lock timeout).
      while ((state.scheduled.get() || state.claiming.get()) && System.nanoTime() < deadline) {
        sleepQuietly(WAIT_SLICE_MILLIS);
      }
      if (state.scheduled.get() || state.claiming.get()) {
        LOG.warn(
            "a batch or claim of {} is still running after {}; a batch commits only if no other"
                + " member claimed the partition meanwhile",
            state.partition,
            timeout);
      }
    }
  }

  private void shutdown() {
    running = false;
    List<PartitionState> all = new ArrayList<>(states.values());
    for (PartitionState state : all) {
      state.phase.set(Phase.GONE);
    }
    awaitIdle(all, settings.closeTimeout());
    try {
      mirror(all, true);
    } catch (RuntimeException e) {
      LOG.debug("final offset mirror failed", e);
    }
    for (PartitionState state : all) {
      safely(() -> metrics.partitionRemoved(state.partition));
    }
    // Already waited for: the revocation callback of close() must not wait again.
    states.clear();
    try {
      consumer.close(CloseOptions.timeout(Duration.ofSeconds(10)));
    } catch (RuntimeException e) {
      LOG.warn("closing the Kafka consumer failed", e);
    }
  }

  private void notify(java.util.function.Consumer<InboxListener> call) {
    processor.notifyListener(call);
  }

  /** Metrics must never break a rebalance callback. */
  private static void safely(Runnable call) {
    try {
      call.run();
    } catch (RuntimeException e) {
      LOG.warn("inbox metrics failed", e);
    }
  }

  private static void sleepQuietly(long millis) {
    try {
      Thread.sleep(millis);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
