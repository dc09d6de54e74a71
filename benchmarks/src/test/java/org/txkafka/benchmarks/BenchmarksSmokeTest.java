package org.txkafka.benchmarks;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import picocli.CommandLine;

/**
 * Keeps the harness from rotting: a tiny run of every row on the real broker and database. It
 * asserts the shape of the output (each ratio printed once, as a number or as not-run with the
 * reason shown in the table), that every baseline really measured something, and that a bad option
 * is refused. It never asserts a speed: benchmarks are not pass/fail.
 */
class BenchmarksSmokeTest {

  private static final List<String> RATIOS =
      List.of(
          "inbox_vs_naive_throughput",
          "inbox_vs_jdbc_ceiling_throughput",
          "relay_vs_raw_producer_throughput",
          "relay_vs_gruelbox_throughput",
          "e2e_p99_ms",
          "e2e_p99_notify_vs_polling",
          "writer_overhead_tx_time",
          "inbox_live_heap_backlog_x10");

  @Test
  @Timeout(value = 5, unit = TimeUnit.MINUTES)
  void quickRunPrintsEveryRowAndOneRatioLineEach() {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    PrintStream out = new PrintStream(buffer, true, StandardCharsets.UTF_8);
    int code =
        new CommandLine(new Benchmarks(out))
            .execute(
                "--quick",
                "--messages", "500",
                "--live-messages", "300",
                "--naive-limit", "100",
                "--e2e-rate", "200",
                "--e2e-seconds", "2",
                "--writer-transactions", "100",
                "--backlog", "2000");
    String output = buffer.toString(StandardCharsets.UTF_8);
    System.out.print(output); // kept in the surefire report for a look at the figures
    assertEquals(0, code, output);

    Map<String, String> ratios = new LinkedHashMap<>();
    Matcher matcher = Pattern.compile("(?m)^RATIO ([a-z0-9_]+)=(\\S+)$").matcher(output);
    while (matcher.find()) {
      assertTrue(ratios.put(matcher.group(1), matcher.group(2)) == null,
          "ratio printed twice: " + matcher.group(1) + "\n" + output);
    }
    assertEquals(RATIOS, List.copyOf(ratios.keySet()), output);
    for (Map.Entry<String, String> ratio : ratios.entrySet()) {
      String value = ratio.getValue();
      assertTrue(value.equals("not-run") || value.matches("\\d+\\.\\d{3}"),
          ratio.getKey() + " is neither a number nor not-run: " + value);
      if (value.equals("not-run")) {
        assertTrue(output.contains("TARGET NOT RUN: " + ratio.getKey()), output);
        assertTrue(output.contains("NOT RUN: "), "a not-run ratio without a not-run side\n" + output);
      }
    }

    // Every baseline is in this build, so each must have produced a measured row with a count.
    for (String baseline :
        List.of("naive consumer", "JDBC batch ceiling", "raw KafkaProducer", "gruelbox outbox",
            "tx without outbox", "tx + outbox send")) {
      assertTrue(
          Pattern.compile("(?m)" + Pattern.quote(baseline) + "\\s+[1-9]\\d*\\s+\\d+\\.\\d")
              .matcher(output)
              .find(),
          "no measurement for " + baseline + "\n" + output);
    }
    // Every side of rows 1 to 4 ran its warm-up first (25 % by default), and none failed.
    for (String warmed :
        List.of("inbox", "naive consumer", "JDBC ceiling", "outbox relay", "raw producer", "gruelbox")) {
      assertTrue(
          Pattern.compile("(?m)^   warm-up " + Pattern.quote(warmed) + ": [1-9]\\d* messages in ")
              .matcher(output)
              .find(),
          "no warm-up of " + warmed + "\n" + output);
    }
    assertTrue(
        !Pattern.compile("(?m)^   warm-up .*: failed \\(").matcher(output).find(), "a warm-up failed\n" + output);
    // A side may be "not run" only because its component is not in the build; a side that threw
    // is a broken harness or component and must fail this test.
    assertTrue(!output.contains("NOT RUN: failed"), "a side failed\n" + output);
    assertTrue(output.contains("targets: "), output);
  }

  @Test
  void optionOutOfRangeIsRefusedWithTheSettingNamed() {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    PrintStream err = new PrintStream(buffer, true, StandardCharsets.UTF_8);
    CommandLine commandLine = new CommandLine(new Benchmarks(err));
    commandLine.setErr(new java.io.PrintWriter(err, true));
    int code = commandLine.execute("--quick", "--partitions", "0");
    assertEquals(2, code);
    assertTrue(buffer.toString(StandardCharsets.UTF_8).contains("partitions must be at least 1, was 0"),
        buffer.toString(StandardCharsets.UTF_8));
  }

  @Test
  void warmupAboveAHundredPercentIsRefusedWithTheSettingNamed() {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    PrintStream err = new PrintStream(buffer, true, StandardCharsets.UTF_8);
    CommandLine commandLine = new CommandLine(new Benchmarks(err));
    commandLine.setErr(new java.io.PrintWriter(err, true));
    int code = commandLine.execute("--quick", "--warmup", "101");
    assertEquals(2, code);
    assertTrue(
        buffer.toString(StandardCharsets.UTF_8).contains("warmup must be between 0 and 100 (percent), was 101"),
        buffer.toString(StandardCharsets.UTF_8));
  }
}
