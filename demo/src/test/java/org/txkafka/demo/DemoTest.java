package org.txkafka.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import picocli.CommandLine;

/**
 * Runs the demo end to end with tiny numbers, on the real broker and database, with the worker
 * processes as child JVMs, and checks what a user reads: the verified line (computed by SQL in the
 * two databases) and the exit code.
 */
class DemoTest {
  private static final Pattern VERIFIED =
      Pattern.compile("(?m)^verified: orders=(\\d+) paid=(\\d+) lost=(\\d+) duplicated=(\\d+)$");

  private static Result runDemo(String... args) {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    PrintStream out = new PrintStream(buffer, true, StandardCharsets.UTF_8);
    int code = new CommandLine(new Demo(out)).execute(args);
    return new Result(code, buffer.toString(StandardCharsets.UTF_8));
  }

  private record Result(int code, String output) {}

  private static void assertVerified(Result result, int orders) {
    Matcher matcher = VERIFIED.matcher(result.output());
    assertTrue(matcher.find(), "no verified line\n" + result.output());
    assertEquals(
        "verified: orders=" + orders + " paid=" + orders + " lost=0 duplicated=0",
        matcher.group(),
        result.output());
    assertTrue(result.output().trim().endsWith(matcher.group()), "the verified line must end the summary\n" + result.output());
    assertEquals(0, result.code(), result.output());
  }

  @Test
  @Timeout(value = 4, unit = TimeUnit.MINUTES)
  void everyOrderIsPaidExactlyOnce() {
    Result result = runDemo("--orders", "80", "--rate", "80", "--partitions", "2");
    assertVerified(result, 80);
    assertTrue(result.output().contains("sent="), "no progress line\n" + result.output());
  }

  @Test
  @Timeout(value = 6, unit = TimeUnit.MINUTES)
  void workersKilledWithSigkillAndRestartedLoseAndDuplicateNothing() {
    Result result =
        runDemo("--orders", "400", "--rate", "80", "--partitions", "2", "--chaos", "--chaos-min-kills", "3", "--seed", "7");
    assertVerified(result, 400);
    long kills = result.output().lines().filter(line -> line.startsWith("chaos: SIGKILL")).count();
    assertTrue(kills >= 3, "expected at least 3 SIGKILLs, saw " + kills + "\n" + result.output());
  }

  /**
   * The same chaos on Kafka's consumer group protocol (KIP-848): a worker restarted after SIGKILL is
   * refused at first (the broker still holds its static member id until the killed life's session
   * ends) and joins on its own.
   */
  @Test
  @Timeout(value = 6, unit = TimeUnit.MINUTES)
  void workersKilledOnTheConsumerGroupProtocolLoseAndDuplicateNothing() {
    Result result =
        runDemo("--orders", "200", "--rate", "80", "--partitions", "2", "--chaos", "--chaos-min-kills", "2",
            "--seed", "11", "--group-protocol", "consumer");
    assertVerified(result, 200);
    assertTrue(result.output().contains("group protocol consumer"), result.output());
    long kills = result.output().lines().filter(line -> line.startsWith("chaos: SIGKILL")).count();
    assertTrue(kills >= 2, "expected at least 2 SIGKILLs, saw " + kills + "\n" + result.output());
  }

  @Test
  void invalidOptionIsRefusedWithTheSettingNamed() {
    assertRefused("orders must be at least 1, was 0", "--orders", "0");
    assertRefused("group-protocol must be classic or consumer, was eager", "--group-protocol", "eager");
  }

  private static void assertRefused(String message, String... args) {
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    PrintStream err = new PrintStream(buffer, true, StandardCharsets.UTF_8);
    CommandLine commandLine = new CommandLine(new Demo(err));
    commandLine.setErr(new java.io.PrintWriter(err, true));
    assertEquals(2, commandLine.execute(args));
    assertTrue(buffer.toString(StandardCharsets.UTF_8).contains(message),
        buffer.toString(StandardCharsets.UTF_8));
  }
}
