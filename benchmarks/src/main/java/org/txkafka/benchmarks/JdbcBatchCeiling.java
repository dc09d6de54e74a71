package org.txkafka.benchmarks;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * Baseline of row 2: the ceiling. The same business rows inserted with plain JDBC batches from
 * memory, {@code dbBatch} rows per transaction, on as many connections as the inbox may use. No
 * Kafka, no inbox rows, no offsets: what the database alone can take.
 */
final class JdbcBatchCeiling {
  private JdbcBatchCeiling() {}

  static Outcome run(BenchContext ctx, MessageSet set, String table) {
    int threads = ctx.config.dbConnections();
    int batch = ctx.config.dbBatch();
    byte[][] payloads = new byte[Math.toIntExact(set.count())][];
    for (int i = 0; i < payloads.length; i++) {
      payloads[i] = set.payload(i); // from memory, as the inbox side's records are on the topic already
    }
    HeapMonitor heap = HeapMonitor.start();
    long start = System.nanoTime();
    Latencies latencies = new Latencies();
    try (var pool = ctx.pool(threads, "ceiling")) {
      ExecutorService executor = Executors.newFixedThreadPool(threads);
      try {
        List<Future<Latencies>> futures = new ArrayList<>();
        for (int t = 0; t < threads; t++) {
          int thread = t;
          futures.add(
              executor.submit(
                  () -> {
                    Latencies mine = new Latencies();
                    try (Connection connection = pool.getConnection();
                        PreparedStatement insert =
                            connection.prepareStatement(BenchContext.insertBusinessRow(table))) {
                      connection.setAutoCommit(false);
                      int inBatch = 0;
                      long begin = System.nanoTime();
                      for (long i = thread; i < set.count(); i += threads) {
                        byte[] payload = payloads[(int) i];
                        insert.setLong(1, MessageSet.eventId(payload));
                        insert.setString(2, set.key(i));
                        insert.setLong(3, MessageSet.amount(payload));
                        insert.addBatch();
                        if (++inBatch == batch) {
                          insert.executeBatch();
                          connection.commit();
                          mine.add(System.nanoTime() - begin);
                          inBatch = 0;
                          begin = System.nanoTime();
                        }
                      }
                      if (inBatch > 0) {
                        insert.executeBatch();
                        connection.commit();
                        mine.add(System.nanoTime() - begin);
                      }
                    }
                    return mine;
                  }));
        }
        for (Future<Latencies> future : futures) {
          latencies.addAll(future.get());
        }
      } finally {
        executor.shutdownNow();
      }
    } catch (ExecutionException e) {
      throw new IllegalStateException("JDBC ceiling failed", e.getCause());
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted", e);
    }
    Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
    return new Outcome.Measured(
        "JDBC batch ceiling", set.count(), elapsed, latencies, heap.stop());
  }
}
