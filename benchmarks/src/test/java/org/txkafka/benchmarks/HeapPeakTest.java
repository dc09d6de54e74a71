package org.txkafka.benchmarks;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.Test;

/** Row 7's diagnosis: the expected peak of fewer samples drawn from a run's live samples. */
class HeapPeakTest {
  private static HeapMonitor.HeapPeak peak(List<Long> samples) {
    return new HeapMonitor.HeapPeak(
        0, samples.stream().mapToLong(Long::longValue).max().orElse(-1), samples);
  }

  @Test
  void expectedPeakOfADrawMatchesCountingEveryDraw() {
    // Samples 1, 2, 3, 4 (in any order), draws of 2: the six pairs have maxima 2, 3, 4, 3, 4, 4.
    HeapMonitor.HeapPeak run = peak(List.of(3L, 1L, 4L, 2L));
    assertEquals((2 + 3 + 4 + 3 + 4 + 4) / 6.0, run.expectedPeakOf(2), 1e-9);
    assertEquals((1 + 2 + 3 + 4) / 4.0, run.expectedPeakOf(1), 1e-9, "one draw: the mean");
    // Draws of 3: the four triples have maxima 3, 4, 4, 4.
    assertEquals((3 + 4 + 4 + 4) / 4.0, run.expectedPeakOf(3), 1e-9);
  }

  @Test
  void asManyOrMoreDrawsThanSamplesGiveThePlainPeak() {
    HeapMonitor.HeapPeak spike = peak(List.of(5L, 5L, 5L, 9L, 5L, 5L, 5L));
    assertEquals(9, spike.expectedPeakOf(7), 1e-9);
    assertEquals(9, spike.expectedPeakOf(50), 1e-9);
    assertEquals(-1, peak(List.of()).expectedPeakOf(3), 1e-9, "no samples: no figure");
  }
}
