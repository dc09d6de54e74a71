package org.txkafka.benchmarks;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import java.util.stream.LongStream;
import org.junit.jupiter.api.Test;

/** Row 7's comparison of peaks taken over different numbers of live samples. */
class HeapPeakTest {
  private static HeapMonitor.HeapPeak peak(List<Long> samples) {
    return new HeapMonitor.HeapPeak(
        0, samples.stream().mapToLong(Long::longValue).max().orElse(-1), samples);
  }

  @Test
  void peakOverFewerSamplesSpreadsThemOverTheRunFirstToLast() {
    HeapMonitor.HeapPeak rising = peak(LongStream.rangeClosed(1, 100).boxed().toList());
    assertEquals(100, rising.peakLiveOver(10), "the last sample is always included");
    assertEquals(100, rising.peakLiveOver(1));
    // A spike between the evenly spread samples is not seen, as a shorter run would not have seen it.
    HeapMonitor.HeapPeak spike = peak(List.of(5L, 5L, 5L, 9L, 5L, 5L, 5L));
    assertEquals(5, spike.peakLiveOver(4), "samples 0, 2, 4 and 6 are read");
    assertEquals(9, spike.peakLiveOver(3), "samples 0, 3 and 6 are read");
  }

  @Test
  void asManyOrMoreSamplesThanTakenGivesThePlainPeak() {
    HeapMonitor.HeapPeak spike = peak(List.of(5L, 5L, 5L, 9L, 5L, 5L, 5L));
    assertEquals(9, spike.peakLiveOver(7));
    assertEquals(9, spike.peakLiveOver(50));
    assertEquals(-1, peak(List.of()).peakLiveOver(3), "no samples: no figure");
  }
}
