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
    recording.start();
    cpuAtStart = cpuByProcessGroup();
    wallAtStart = System.nanoTime();
    return recording;
  }

  /**
   * CPU time used so far by this JVM, its child JVMs (the broker and any other), and the PostgreSQL
   * backends of the run's database. On two shared cores this says which process the time went to.
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
    cpu.put("postgres server", postgresCpuNanos());
    return cpu;
  }

  /**
   * CPU of the whole PostgreSQL server: its postmaster, every live child, and (from the
   * postmaster's /proc stat cutime and cstime) every child it has reaped, so that the backends of
   * pools closed during the span still count. The server is shared with whatever else uses it.
   */
  private long postgresCpuNanos() {
    Set<Long> backends = postgresBackends.get();
    if (backends.isEmpty()) {
      return 0;
    }
    ProcessHandle postmaster =
        ProcessHandle.of(backends.iterator().next()).flatMap(ProcessHandle::parent).orElse(null);
    if (postmaster == null) {
      return 0;
    }
    long total = cpuNanos(postmaster) + reapedChildrenCpuNanos(postmaster.pid());
    for (ProcessHandle child : postmaster.children().toList()) {
      total += cpuNanos(child);
    }
    return total;
  }

  private static long reapedChildrenCpuNanos(long pid) {
    try {
      String stat = Files.readString(Path.of("/proc", Long.toString(pid), "stat"));
      String[] fields = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
      // After "pid (comm) ", field 3 is state; cutime and cstime are fields 16 and 17 of the file.
      long ticks = Long.parseLong(fields[16 - 3]) + Long.parseLong(fields[17 - 3]);
      return ticks * 10_000_000L; // USER_HZ is 100 on Linux
    } catch (IOException | RuntimeException e) {
      return 0;
    }
  }

  private static long cpuNanos(ProcessHandle process) {
    return process.info().totalCpuDuration().map(d -> d.toNanos()).orElse(0L);
  }

  /** Stops {@code recording}, writes it as {@code name}.jfr and prints its summary. */
  void stopAndSummarise(Recording recording, String name) throws IOException {
    recording.stop();
    long wall = System.nanoTime() - wallAtStart;
    Map<String, Long> cpuAtEnd = cpuByProcessGroup();
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
