package org.txkafka.benchmarks;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.text.ParseException;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.function.Supplier;
import java.util.stream.Collectors;
import jdk.jfr.Configuration;
import jdk.jfr.Recording;
import jdk.jfr.consumer.RecordedEvent;
import jdk.jfr.consumer.RecordedFrame;
import jdk.jfr.consumer.RecordedStackTrace;
import jdk.jfr.consumer.RecordingFile;

/**
 * Where the time of one side goes, with the JDK Flight Recorder: a recording with the "profile"
 * settings over the side's run, kept as a .jfr file, and summarised as the methods most often on
 * top of the stack of running threads (CPU in this JVM) and, for threads waiting in native code
 * (socket reads: waiting for PostgreSQL or the broker), the Java frame they wait in. PostgreSQL and
 * the broker run in other processes and are seen here only as that waiting.
 */
final class Profiler {
  private static final int TOP = 8;

  private final Path directory;
  private final PrintStream out;
  private final Supplier<Set<Long>> postgresBackends;
  private Map<String, Long> cpuAtStart;
  private long wallAtStart;
  private BackendSampler backends;
  private ThreadSampler threads;

  /**
   * @param postgresBackends the process ids of the PostgreSQL backends serving the run's database
   */
  Profiler(Path directory, PrintStream out, Supplier<Set<Long>> postgresBackends) {
    this.directory = directory;
    this.out = out;
    this.postgresBackends = postgresBackends;
  }

  /** Starts a recording for the side {@code name}. */
  Recording start() throws IOException, ParseException {
    Recording recording = new Recording(Configuration.getConfiguration("profile"));
    recording.enable("jdk.ExecutionSample").withPeriod(java.time.Duration.ofMillis(2));
    recording.start();
    cpuAtStart = cpuByProcessGroup();
    backends = new BackendSampler();
    threads = new ThreadSampler();
    wallAtStart = System.nanoTime();
    return recording;
  }

  /**
   * CPU time used so far by this JVM and its child JVMs (the broker and any other). With the
   * PostgreSQL backends (followed by {@link BackendSampler}), on two shared cores this says which
   * process the time went to.
   */
  private Map<String, Long> cpuByProcessGroup() {
    Map<String, Long> cpu = new TreeMap<>();
    cpu.put("benchmark JVM", cpuNanos(ProcessHandle.current()));
    ProcessHandle.current()
        .descendants()
        .forEach(
            child -> {
              String args = String.join(" ", child.info().arguments().orElse(new String[0]));
              String group = args.contains("kafka.Kafka") ? "kafka broker JVM" : "other child JVMs";
              cpu.merge(group, cpuNanos(child), Long::sum);
            });
    return cpu;
  }

  private static long cpuNanos(ProcessHandle process) {
    return process.info().totalCpuDuration().map(d -> d.toNanos()).orElse(0L);
  }

  /** Calls {@link #sample} every 100 ms on a daemon thread of its own until {@link #halt}. */
  private abstract static class PeriodicSampler implements Runnable {
    private volatile boolean running = true;
    private final Thread thread;

    PeriodicSampler(String name) {
      thread = new Thread(this, name);
      thread.setDaemon(true);
    }

    abstract void sample();

    /** Takes the first sample and starts the thread. */
    final void begin() {
      sample();
      thread.start();
    }

    @Override
    public final void run() {
      while (running) {
        try {
          Thread.sleep(100);
        } catch (InterruptedException e) {
          return;
        }
        sample();
      }
    }

    /** Stops the thread and takes the last sample. */
    final void halt() {
      running = false;
      thread.interrupt();
      sample();
    }
  }

  /**
   * Follows the CPU time of the PostgreSQL backends of the run's database while a side runs: every
   * 100 ms it lists them (pg_stat_activity) and reads each one's CPU time, so that the backends of
   * pools opened and closed during the side count too (a backend that ends loses at most its last
   * 100 ms). Other databases on a shared server are not counted.
   */
  private final class BackendSampler extends PeriodicSampler {
    private final Map<Long, long[]> cpuByPid = new HashMap<>(); // pid -> {at first sight, latest}
    private final Set<Long> atStart;

    BackendSampler() {
      super("postgres-cpu-sampler");
      atStart = postgresBackends.get();
      begin();
    }

    @Override
    synchronized void sample() {
      for (long pid : postgresBackends.get()) {
        long cpu = ProcessHandle.of(pid).map(Profiler::cpuNanos).orElse(-1L);
        if (cpu < 0) {
          continue;
        }
        long[] seen = cpuByPid.computeIfAbsent(pid, p -> new long[] {atStart.contains(p) ? cpu : 0, cpu});
        seen[1] = cpu;
      }
    }


    synchronized long stop() {
      halt();
      long total = 0;
      for (long[] seen : cpuByPid.values()) {
        total += Math.max(0, seen[1] - seen[0]);
      }
      return total;
    }
  }

  /**
   * Follows the CPU time of each thread of this JVM while a side runs, from /proc/self/task (Linux
   * only: elsewhere it reports nothing), every 100 ms, so that threads which end during the side
   * count too (less their last 100 ms). JFR's execution samples see only threads running Java
   * code; this also shows the JIT compilers and the garbage collector. Threads are grouped by their
   * name without its trailing number (the kernel keeps the first 15 characters of a name).
   */
  private static final class ThreadSampler extends PeriodicSampler {
    private static final Path TASKS = Path.of("/proc/self/task");
    private static final long NANOS_PER_TICK = 10_000_000L; // USER_HZ is 100 on Linux
    private final Map<Long, long[]> ticksByTid = new HashMap<>(); // tid -> {at start, latest}
    private final Map<Long, String> nameByTid = new HashMap<>();
    private final Set<Long> atStart;
    private boolean first = true;

    ThreadSampler() {
      super("thread-cpu-sampler");
      atStart = new java.util.HashSet<>();
      begin();
    }

    @Override
    synchronized void sample() {
      if (!Files.isDirectory(TASKS)) {
        return;
      }
      try (var tasks = Files.list(TASKS)) {
        for (Path task : (Iterable<Path>) tasks::iterator) {
          try {
            long tid = Long.parseLong(task.getFileName().toString());
            String stat = Files.readString(task.resolve("stat"));
            int close = stat.lastIndexOf(')');
            String name = stat.substring(stat.indexOf('(') + 1, close);
            String[] fields = stat.substring(close + 2).split(" ");
            long ticks = Long.parseLong(fields[11]) + Long.parseLong(fields[12]); // utime, stime
            if (first) {
              atStart.add(tid);
            }
            long[] seen = ticksByTid.computeIfAbsent(tid, t -> new long[] {atStart.contains(t) ? ticks : 0, ticks});
            seen[1] = ticks;
            nameByTid.put(tid, name.replaceAll("[-#_ ]?\\d+$", ""));
          } catch (IOException | RuntimeException endedOrUnreadable) {
            // the thread ended between the listing and the read: its last sample stands
          }
        }
      } catch (IOException unreadable) {
        // no /proc: nothing to report
      }
      first = false;
    }

    synchronized Map<String, Long> stop() {
      halt();
      Map<String, Long> byName = new HashMap<>();
      ticksByTid.forEach(
          (tid, seen) ->
              byName.merge(nameByTid.get(tid), Math.max(0, seen[1] - seen[0]) * NANOS_PER_TICK, Long::sum));
      byName.values().removeIf(nanos -> nanos == 0);
      return byName;
    }
  }

  /** Stops {@code recording}, writes it as {@code name}.jfr and prints its summary. */
  void stopAndSummarise(Recording recording, String name) throws IOException {
    recording.stop();
    long wall = System.nanoTime() - wallAtStart;
    Map<String, Long> cpuAtEnd = cpuByProcessGroup();
    cpuAtEnd.put("postgres backends of the run's database", backends.stop());
    Map<String, Long> cpuByThread = threads.stop();
    Files.createDirectories(directory);
    Path file = directory.resolve(name.replaceAll("[^A-Za-z0-9_.-]", "_") + ".jfr");
    recording.dump(file);
    recording.close();
    Map<String, Integer> cpu = new HashMap<>();
    Map<String, Integer> waiting = new HashMap<>();
    int cpuSamples = 0;
    int waitSamples = 0;
    for (RecordedEvent event : RecordingFile.readAllEvents(file)) {
      String type = event.getEventType().getName();
      boolean execution = type.equals("jdk.ExecutionSample");
      if (!execution && !type.equals("jdk.NativeMethodSample")) {
        continue;
      }
      RecordedStackTrace stack = event.getStackTrace();
      if (stack == null || stack.getFrames().isEmpty()) {
        continue;
      }
      if (execution) {
        cpuSamples++;
        cpu.merge(frame(stack.getFrames().get(0)), 1, Integer::sum);
      } else {
        String where = interestingFrame(stack.getFrames());
        if (where != null) {
          waitSamples++;
          waiting.merge(where, 1, Integer::sum);
        }
      }
    }
    out.printf(Locale.ROOT, "   profile %s: %s%n", name, file);
    StringBuilder split = new StringBuilder();
    for (Map.Entry<String, Long> group : cpuAtEnd.entrySet()) {
      long used = group.getValue() - cpuAtStart.getOrDefault(group.getKey(), 0L);
      split.append(String.format(Locale.ROOT, "%s %.1f s, ", group.getKey(), Math.max(0, used) / 1e9));
    }
    out.printf(
        Locale.ROOT,
        "     cpu by process over %.1f s wall (%d cores): %s%n",
        wall / 1e9,
        Runtime.getRuntime().availableProcessors(),
        split.length() > 2 ? split.substring(0, split.length() - 2) : "-");
    StringBuilder byThread = new StringBuilder();
    cpuByThread.entrySet().stream()
        .sorted(Map.Entry.<String, Long>comparingByValue().reversed())
        .limit(TOP)
        .forEach(
            e ->
                byThread.append(
                    String.format(Locale.ROOT, "%s %.2f s, ", e.getKey(), e.getValue() / 1e9)));
    out.printf(
        Locale.ROOT,
        "     cpu by thread in this JVM (JIT and GC threads too): %s%n",
        byThread.length() > 2 ? byThread.substring(0, byThread.length() - 2) : "-");
    print("cpu (on-CPU samples in this JVM)", cpu, cpuSamples);
    print("waiting in native code (I/O), by the calling library frame", waiting, waitSamples);
  }

  private void print(String title, Map<String, Integer> counts, int total) {
    out.printf(Locale.ROOT, "     %s: %d samples%n", title, total);
    List<Map.Entry<String, Integer>> top =
        counts.entrySet().stream()
            .sorted(Map.Entry.<String, Integer>comparingByValue().reversed())
            .limit(TOP)
            .collect(Collectors.toList());
    for (Map.Entry<String, Integer> entry : top) {
      out.printf(
          Locale.ROOT, "       %5.1f%%  %s%n", 100.0 * entry.getValue() / Math.max(1, total), entry.getKey());
    }
  }

  private static String frame(RecordedFrame frame) {
    return frame.getMethod().getType().getName() + "." + frame.getMethod().getName();
  }

  /**
   * Where a thread waits: the first frame of a library we care about (the JDBC driver, Kafka,
   * gruelbox), and under it the first txkafka frame that called it, if any.
   */
  private static String interestingFrame(List<RecordedFrame> frames) {
    String library = null;
    for (RecordedFrame frame : frames) {
      String type = frame.getMethod().getType().getName();
      if (type.startsWith("org.txkafka.testkit.") || type.startsWith("org.txkafka.benchmarks.HeapMonitor")) {
        return null;
      }
      if (type.startsWith("org.txkafka.")) {
        return library == null ? frame(frame) : library + " <- " + frame(frame);
      }
      if (library == null
          && (type.startsWith("org.postgresql.")
              || type.startsWith("org.apache.kafka.")
              || type.startsWith("com.gruelbox."))) {
        library = frame(frame);
      }
    }
    return library;
  }
}
