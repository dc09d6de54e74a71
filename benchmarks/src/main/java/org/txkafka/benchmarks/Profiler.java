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

  Profiler(Path directory, PrintStream out) {
    this.directory = directory;
    this.out = out;
  }

  /** Starts a recording for the side {@code name}. */
  Recording start() throws IOException, ParseException {
    Recording recording = new Recording(Configuration.getConfiguration("profile"));
    recording.start();
    return recording;
  }

  /** Stops {@code recording}, writes it as {@code name}.jfr and prints its summary. */
  void stopAndSummarise(Recording recording, String name) throws IOException {
    recording.stop();
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

  /** The first frame of a library we care about (the JDBC driver, Kafka, ours, gruelbox). */
  private static String interestingFrame(List<RecordedFrame> frames) {
    for (RecordedFrame frame : frames) {
      String type = frame.getMethod().getType().getName();
      if (type.startsWith("org.postgresql.")
          || type.startsWith("org.apache.kafka.")
          || type.startsWith("org.txkafka.")
          || type.startsWith("com.gruelbox.")) {
        return frame(frame);
      }
    }
    return null;
  }
}
