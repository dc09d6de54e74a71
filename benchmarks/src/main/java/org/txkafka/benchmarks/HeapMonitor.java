package org.txkafka.benchmarks;

import com.sun.management.GarbageCollectionNotificationInfo;
import java.lang.management.GarbageCollectorMXBean;
import java.lang.management.ManagementFactory;
import java.lang.management.MemoryPoolMXBean;
import java.lang.management.MemoryType;
import java.lang.management.MemoryUsage;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicLong;
import javax.management.ListenerNotFoundException;
import javax.management.Notification;
import javax.management.NotificationEmitter;
import javax.management.NotificationListener;
import javax.management.openmbean.CompositeData;

/**
 * Measures the peak heap of this JVM over a span of work: the largest heap in use seen by a 5 ms
 * sampler or just before any garbage collection, and the largest heap still in use right after a
 * full collection (the live set: what the work really holds, independent of how lazy the collector
 * is; -1 when no full collection ran).
 * Start with {@link #start()}, read with {@link #stop()}.
 */
final class HeapMonitor implements NotificationListener {

  /**
   * Peak heap figures in bytes; {@code peakLiveBytes} is -1 when no full collection ran; {@code
   * liveSamples} is the heap after each full collection, in order (empty when not recorded).
   */
  record HeapPeak(long peakUsedBytes, long peakLiveBytes, List<Long> liveSamples) {
    HeapPeak(long peakUsedBytes, long peakLiveBytes) {
      this(peakUsedBytes, peakLiveBytes, List.of());
    }

    /**
     * The expected largest of {@code count} live samples drawn at random (without replacement)
     * from this run's samples; the plain peak when there are no more than {@code count}. A
     * diagnosis for comparing a long run with a short one: the largest of many samples tends to
     * exceed the largest of few from the same spread. With the samples sorted ascending, x(i)
     * is the largest of the draw with probability C(i-1, k-1) / C(n, k).
     */
    double expectedPeakOf(int count) {
      int size = liveSamples.size();
      if (size == 0 || count <= 0) {
        return -1;
      }
      if (count >= size) {
        return liveSamples.stream().mapToLong(Long::longValue).max().orElse(-1);
      }
      long[] sorted = liveSamples.stream().mapToLong(Long::longValue).sorted().toArray();
      // weight(n) = C(n-1, k-1) / C(n, k) = k / n; weight(i-1) = weight(i) * (i - k) / (i - 1).
      double weight = count / (double) size;
      double expected = 0;
      for (int i = size; i >= count; i--) {
        expected += weight * sorted[i - 1];
        weight = i > 1 ? weight * (i - count) / (i - 1) : 0;
      }
      return expected;
    }

    double peakUsedMb() {
      return peakUsedBytes / (1024.0 * 1024.0);
    }

    double peakLiveMb() {
      return peakLiveBytes < 0 ? Double.NaN : peakLiveBytes / (1024.0 * 1024.0);
    }
  }

  private final AtomicLong peakUsed = new AtomicLong();
  private final AtomicLong peakLive = new AtomicLong(-1);
  private final List<Long> liveSamples = java.util.Collections.synchronizedList(new ArrayList<>());
  private final List<NotificationEmitter> emitters = new ArrayList<>();
  private volatile boolean running;
  private Thread sampler;

  /** Collects garbage first so that the previous work's garbage is not counted, then starts. */
  static HeapMonitor start() {
    System.gc();
    HeapMonitor monitor = new HeapMonitor();
    monitor.begin();
    return monitor;
  }

  private void begin() {
    running = true;
    peakUsed.set(ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed());
    for (GarbageCollectorMXBean collector : ManagementFactory.getGarbageCollectorMXBeans()) {
      if (collector instanceof NotificationEmitter emitter) {
        emitter.addNotificationListener(this, null, null);
        emitters.add(emitter);
      }
    }
    sampler =
        new Thread(
            () -> {
              while (running) {
                record(ManagementFactory.getMemoryMXBean().getHeapMemoryUsage().getUsed());
                try {
                  Thread.sleep(5);
                } catch (InterruptedException e) {
                  return;
                }
              }
            },
            "heap-sampler");
    sampler.setDaemon(true);
    sampler.start();
  }

  private void record(long used) {
    peakUsed.accumulateAndGet(used, Math::max);
  }

  @Override
  public void handleNotification(Notification notification, Object handback) {
    if (!GarbageCollectionNotificationInfo.GARBAGE_COLLECTION_NOTIFICATION.equals(
        notification.getType())) {
      return;
    }
    GarbageCollectionNotificationInfo info =
        GarbageCollectionNotificationInfo.from((CompositeData) notification.getUserData());
    record(heapSum(info.getGcInfo().getMemoryUsageBeforeGc()));
    if (info.getGcAction().contains("major")) {
      // Only a full collection leaves nothing but live objects; after a young one the old
      // generation may still hold garbage.
      long after = heapSum(info.getGcInfo().getMemoryUsageAfterGc());
      peakLive.accumulateAndGet(after, Math::max);
      liveSamples.add(after);
    }
  }

  private static long heapSum(Map<String, MemoryUsage> usageByPool) {
    long sum = 0;
    for (MemoryPoolMXBean pool : ManagementFactory.getMemoryPoolMXBeans()) {
      MemoryUsage usage = usageByPool.get(pool.getName());
      if (pool.getType() == MemoryType.HEAP && usage != null) {
        sum += usage.getUsed();
      }
    }
    return sum;
  }

  /** Stops measuring and returns the peaks seen since {@link #start()}. */
  HeapPeak stop() {
    running = false;
    sampler.interrupt();
    try {
      sampler.join();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
    for (NotificationEmitter emitter : emitters) {
      try {
        emitter.removeNotificationListener(this);
      } catch (ListenerNotFoundException e) {
        // already gone: nothing to remove
      }
    }
    synchronized (liveSamples) {
      return new HeapPeak(peakUsed.get(), peakLive.get(), List.copyOf(liveSamples));
    }
  }
}
