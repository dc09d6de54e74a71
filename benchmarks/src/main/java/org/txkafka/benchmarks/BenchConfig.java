package org.txkafka.benchmarks;

import java.time.Duration;
import java.util.Set;

/**
 * The sizes of one benchmark run, from the command line ({@link Benchmarks}).
 *
 * @param messages messages per throughput row (inbox, ceiling, relay, raw producer, gruelbox)
 * @param naiveLimit how many of the same messages the naive consumer applies (it is steady and
 *     slow, so a prefix gives its rate)
 * @param payloadBytes payload size of every message
 * @param keys distinct record keys
 * @param partitions partitions of every topic
 * @param dbConnections connections each side may use (pool size, and threads of the JDBC ceiling)
 * @param dbBatch rows per transaction of the JDBC ceiling and the outbox prefill
 * @param liveMessages messages of the relay-vs-gruelbox row, both sides (gruelbox is slow and keeps
 *     every scheduled call in its executor's queue, so this row has its own, smaller size)
 * @param writerBatch messages per writer transaction in the relay-vs-gruelbox row
 * @param gruelboxThreads executor threads of gruelbox's submitter
 * @param e2eRate offered load of the end-to-end latency row, messages per second
 * @param e2eDuration how long each side of the latency row runs
 * @param e2eWriters writer connections of the latency row, committing side by side (one alone
 *     cannot commit 1,000 transactions a second here while the relay and the inbox run)
 * @param writerTransactions transactions per side of the writer-overhead row
 * @param backlog records the inbox drains in the memory row (the smaller run uses a tenth)
 * @param heapMax -Xmx of the child JVM of the memory row
 * @param warmupPercent the size of the unmeasured warm-up run of each side of rows 1 to 4, in
 *     percent of the side's measured count (0: none, the sides start in a cold JVM)
 * @param rows the row numbers to run
 */
record BenchConfig(
    int messages,
    int naiveLimit,
    int payloadBytes,
    int keys,
    int partitions,
    int dbConnections,
    int dbBatch,
    int liveMessages,
    int writerBatch,
    int gruelboxThreads,
    int e2eRate,
    Duration e2eDuration,
    int e2eWriters,
    int writerTransactions,
    int backlog,
    String heapMax,
    int warmupPercent,
    Set<Integer> rows) {

  MessageSet messageSet(long idSeed) {
    return new MessageSet(messages, keys, payloadBytes, idSeed);
  }

  /** The warm-up's size for a side that measures {@code count} messages: 0 for none. */
  int warmupCount(int count) {
    return warmupPercent == 0 ? 0 : Math.max(1, (int) ((long) count * warmupPercent / 100));
  }

  boolean runs(int row) {
    return rows.contains(row);
  }
}
