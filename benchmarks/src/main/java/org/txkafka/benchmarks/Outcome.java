package org.txkafka.benchmarks;

import java.time.Duration;

/** What one side of a comparison produced: a measurement, or the reason it was not run. */
sealed interface Outcome permits Outcome.Measured, Outcome.NotRun {

  /** The side's label in the table ("inbox", "naive consumer"). */
  String label();

  /**
   * A measured side.
   *
   * @param count messages (or transactions) completed
   * @param elapsed wall time of the measured span
   * @param latencies latency samples, or null where the side has no per-message latency
   * @param heap peak heap over the measured span
   */
  record Measured(
      String label, long count, Duration elapsed, Latencies latencies, HeapMonitor.HeapPeak heap)
      implements Outcome {

    /** Completed units per second. */
    double throughput() {
      double seconds = elapsed.toNanos() / 1e9;
      return seconds <= 0 ? Double.NaN : count / seconds;
    }

    double p50Millis() {
      return latencies == null ? Double.NaN : latencies.percentileMillis(50);
    }

    double p99Millis() {
      return latencies == null ? Double.NaN : latencies.percentileMillis(99);
    }
  }

  /** A side that could not be run, for example because its component is not in the build yet. */
  record NotRun(String label, String reason) implements Outcome {}
}
