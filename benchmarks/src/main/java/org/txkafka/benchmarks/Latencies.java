package org.txkafka.benchmarks;

import java.time.Duration;
import java.util.Arrays;

/**
 * Records latencies in nanoseconds and reports percentiles. Exact (every sample is kept and sorted),
 * which is affordable at the sizes a benchmark run records. Not thread-safe: guard it or give each
 * thread its own and {@link #addAll merge}.
 */
final class Latencies {
  private long[] samples = new long[1024];
  private int size;

  /** Adds one sample; negative samples are clamped to zero. */
  void add(long nanos) {
    if (size == samples.length) {
      samples = Arrays.copyOf(samples, size * 2);
    }
    samples[size++] = Math.max(0, nanos);
  }

  void add(Duration duration) {
    add(duration.toNanos());
  }

  void addAll(Latencies other) {
    for (int i = 0; i < other.size; i++) {
      add(other.samples[i]);
    }
  }

  int count() {
    return size;
  }

  /** The sample at {@code percentile} (0 to 100) by the nearest-rank method, in milliseconds. */
  double percentileMillis(double percentile) {
    if (size == 0) {
      return Double.NaN;
    }
    long[] sorted = Arrays.copyOf(samples, size);
    Arrays.sort(sorted);
    int rank = (int) Math.ceil(percentile / 100.0 * size);
    return sorted[Math.min(size, Math.max(1, rank)) - 1] / 1_000_000.0;
  }

  double meanMillis() {
    if (size == 0) {
      return Double.NaN;
    }
    double sum = 0;
    for (int i = 0; i < size; i++) {
      sum += samples[i];
    }
    return sum / size / 1_000_000.0;
  }
}
