package org.txkafka.benchmarks;

import java.io.IOException;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.Callable;
import org.apache.kafka.common.utils.AppInfoParser;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * The benchmark harness: every row runs our component and its baseline in the same run, on the same
 * broker and database, with the same messages, and prints a table, a {@code RATIO name=value} line
 * per ratio and a {@code TARGET MISSED} line per missed target. Exit code 0 unless
 * {@code --fail-on-miss} is given and a target was missed (1), or the harness itself failed (2).
 *
 * <pre>
 * mvn -B -q -pl benchmarks -am package -DskipTests
 * java -jar benchmarks/target/txkafka-benchmarks.jar            # the real run, several minutes
 * java -jar benchmarks/target/txkafka-benchmarks.jar --quick    # seconds: the smoke profile
 * </pre>
 */
@Command(
    name = "txkafka-benchmarks",
    mixinStandardHelpOptions = true,
    sortOptions = false,
    description = {
      "Runs each txkafka component beside its baseline on one broker and one database and prints",
      "throughput, latency percentiles, peak heap and the ratio per row, with the targets."
    })
public final class Benchmarks implements Callable<Integer> {

  @Option(names = "--quick", description = "Tiny sizes: the smoke profile (seconds, not minutes).")
  boolean quick;

  @Option(names = "--messages", description = "Messages per throughput row (default 200000, quick 2000).")
  Integer messages;

  @Option(names = "--naive-limit", description = "Messages the naive consumer applies, a prefix of the same ones (default 30000, quick 300).")
  Integer naiveLimit;

  @Option(names = "--payload-bytes", description = "Payload size (default ${DEFAULT-VALUE}).", defaultValue = "200")
  int payloadBytes;

  @Option(names = "--keys", description = "Distinct record keys (default ${DEFAULT-VALUE}).", defaultValue = "1000")
  int keys;

  @Option(names = "--partitions", description = "Partitions of every topic (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int partitions;

  @Option(names = "--db-connections", description = "Connections per side (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int dbConnections;

  @Option(names = "--db-batch", description = "Rows per transaction of the JDBC ceiling and the outbox prefill (default ${DEFAULT-VALUE}).", defaultValue = "500")
  int dbBatch;

  @Option(names = "--live-messages", description = "Messages of row 4, both sides (default 50000, quick 1000).")
  Integer liveMessages;

  @Option(names = "--writer-batch", description = "Messages per writer transaction in row 4 (default ${DEFAULT-VALUE}).", defaultValue = "100")
  int writerBatch;

  @Option(names = "--gruelbox-threads", description = "Executor threads of gruelbox's submitter (default ${DEFAULT-VALUE}).", defaultValue = "8")
  int gruelboxThreads;

  @Option(names = "--e2e-rate", description = "Offered load of row 5, messages/s (default ${DEFAULT-VALUE}).", defaultValue = "1000")
  int e2eRate;

  @Option(names = "--e2e-seconds", description = "Seconds per side of row 5 (default 20, quick 3).")
  Integer e2eSeconds;

  @Option(names = "--e2e-writers", description = "Writer connections of row 5, committing side by side (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int e2eWriters;

  @Option(names = "--writer-transactions", description = "Transactions per side of row 6 (default 5000, quick 300).")
  Integer writerTransactions;

  @Option(names = "--backlog", description = "Records the inbox drains in row 7 (default 1000000, quick 20000).")
  Integer backlog;

  @Option(names = "--heap-max", description = "-Xmx of the inbox child JVM in row 7 (default ${DEFAULT-VALUE}).", defaultValue = "256m")
  String heapMax;

  @Option(names = "--warmup", description = "Unmeasured warm-up run of each side of rows 1-4 first, in percent of its measured messages (default ${DEFAULT-VALUE}; 0: none, cold JVM).", defaultValue = "25")
  int warmupPercent;

  @Option(names = "--rows", split = ",", description = "Rows to run (default all: 1,2,3,4,5,6,7).")
  List<Integer> rows;

  @Option(names = "--fail-on-miss", description = "Exit 1 when a target is missed.")
  boolean failOnMiss;

  @Option(names = "--profile", description = "Record each side with JDK Flight Recorder into this directory and print where its time goes.")
  Path profileDirectory;

  @Spec CommandSpec spec;

  private final PrintStream out;

  /** A harness that prints to standard output. */
  public Benchmarks() {
    this(System.out);
  }

  /** A harness that prints to {@code out} (the smoke test reads it). */
  public Benchmarks(PrintStream out) {
    this.out = out;
  }

  /** Runs the command line and exits with its code. */
  public static void main(String[] args) {
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    // Without Docker, Testcontainers logs its failed probe as an error before the fallback is used.
    System.setProperty("org.slf4j.simpleLogger.log.org.testcontainers", "off");
    int code = new CommandLine(new Benchmarks()).execute(args);
    System.exit(code);
  }

  BenchConfig config() {
    Set<Integer> selected =
        new LinkedHashSet<>(rows == null || rows.isEmpty() ? List.of(1, 2, 3, 4, 5, 6, 7) : rows);
    return new BenchConfig(
        pick(messages, 200_000, 2_000),
        pick(naiveLimit, 30_000, 300),
        payloadBytes,
        keys,
        partitions,
        dbConnections,
        dbBatch,
        pick(liveMessages, 50_000, 1_000),
        writerBatch,
        gruelboxThreads,
        e2eRate,
        Duration.ofSeconds(pick(e2eSeconds, 20, 3)),
        e2eWriters,
        pick(writerTransactions, 5_000, 300),
        pick(backlog, 1_000_000, 20_000),
        heapMax,
        warmupPercent,
        selected);
  }

  private int pick(Integer given, int full, int quickValue) {
    return given != null ? given : quick ? quickValue : full;
  }

  @Override
  public Integer call() throws Exception {
    BenchConfig config = config();
    validate(config);
    out.println("txkafka benchmarks " + config);
    KafkaBroker broker = KafkaBroker.shared();
    try (TestDatabase db = TestPostgres.shared().createDatabase().migrate();
        Connection probe = profileDirectory == null ? null : db.connect()) {
      BenchContext ctx = new BenchContext(config, db, broker);
      String machine = machine(ctx);
      out.println("machine: " + machine);
      List<RowResult> results = new ArrayList<>();
      Rows rowRunner =
          new Rows(
              ctx,
              out,
              profileDirectory == null
                  ? null
                  : new Profiler(profileDirectory, out, () -> backendPids(probe)));
      for (int row : List.of(1, 2, 3, 4, 5, 6, 7)) {
        if (config.runs(row) || (row == 1 && config.runs(2))) {
          RowResult result = rowRunner.run(row);
          if (config.runs(row)) {
            results.add(result);
          }
        }
      }
      int missed = Report.print(out, machine + "; load average at the end: " + loadAverage(), results);
      out.flush();
      return failOnMiss && missed > 0 ? 1 : 0;
    }
  }

  private void validate(BenchConfig config) {
    require(config.messages() >= 1, "messages must be at least 1, was " + config.messages());
    require(config.naiveLimit() >= 1 && config.naiveLimit() <= config.messages(),
        "naive-limit must be between 1 and messages (" + config.messages() + "), was "
            + config.naiveLimit());
    require(config.payloadBytes() >= MessageSet.MIN_PAYLOAD_BYTES,
        "payload-bytes must be at least " + MessageSet.MIN_PAYLOAD_BYTES + ", was "
            + config.payloadBytes());
    require(config.keys() >= 1, "keys must be at least 1, was " + config.keys());
    require(config.partitions() >= 1, "partitions must be at least 1, was " + config.partitions());
    require(config.dbConnections() >= 1 && config.dbConnections() <= 16,
        "db-connections must be between 1 and 16, was " + config.dbConnections());
    require(config.dbBatch() >= 1, "db-batch must be at least 1, was " + config.dbBatch());
    require(config.liveMessages() >= 1, "live-messages must be at least 1, was " + config.liveMessages());
    require(config.writerBatch() >= 1, "writer-batch must be at least 1, was " + config.writerBatch());
    require(config.gruelboxThreads() >= 1 && config.gruelboxThreads() <= 32,
        "gruelbox-threads must be between 1 and 32, was " + config.gruelboxThreads());
    require(config.e2eRate() >= 1, "e2e-rate must be at least 1, was " + config.e2eRate());
    require(config.e2eWriters() >= 1 && config.e2eWriters() <= 16,
        "e2e-writers must be between 1 and 16, was " + config.e2eWriters());
    require(config.writerTransactions() >= 1,
        "writer-transactions must be at least 1, was " + config.writerTransactions());
    require(config.backlog() >= 10, "backlog must be at least 10, was " + config.backlog());
    require(config.warmupPercent() >= 0 && config.warmupPercent() <= 100,
        "warmup must be between 0 and 100 (percent), was " + config.warmupPercent());
    for (int row : config.rows()) {
      require(row >= 1 && row <= 7, "rows must be between 1 and 7, was " + row);
    }
  }

  private void require(boolean condition, String message) {
    if (!condition) {
      throw new CommandLine.ParameterException(spec.commandLine(), message);
    }
  }

  /** The backends of the run's database other than {@code probe}'s own (the profiler's view). */
  private static Set<Long> backendPids(Connection probe) {
    Set<Long> pids = new java.util.HashSet<>();
    synchronized (probe) {
      try (Statement statement = probe.createStatement();
          ResultSet rs =
              statement.executeQuery(
                  "SELECT pid FROM pg_stat_activity"
                      + " WHERE datname = current_database() AND pid <> pg_backend_pid()")) {
        while (rs.next()) {
          pids.add(rs.getLong(1));
        }
      } catch (SQLException e) {
        // no PostgreSQL figure then; the profile still has the rest
      }
    }
    return pids;
  }

  private static String machine(BenchContext ctx) throws SQLException {
    String pg;
    try (Connection connection = ctx.db.connect();
        Statement statement = connection.createStatement();
        ResultSet rs = statement.executeQuery("SHOW server_version")) {
      rs.next();
      pg = rs.getString(1);
    }
    return Runtime.getRuntime().availableProcessors()
        + " cores, "
        + System.getProperty("os.name")
        + " "
        + System.getProperty("os.arch")
        + ", JDK "
        + System.getProperty("java.version")
        + ", -Xmx "
        + Runtime.getRuntime().maxMemory() / (1024 * 1024)
        + " MB, PostgreSQL "
        + pg
        + ", Kafka clients "
        + AppInfoParser.getVersion()
        + " (broker: child JVM on this machine); load average at the start: "
        + loadAverage();
  }

  /**
   * The 1, 5 and 15 minute load averages: on a shared two-core machine a figure measured under a
   * load far above 2 says more about the neighbours than about the code.
   */
  static String loadAverage() {
    try {
      String[] fields = Files.readString(Path.of("/proc/loadavg")).trim().split("\\s+");
      return fields[0] + " " + fields[1] + " " + fields[2];
    } catch (IOException | RuntimeException e) {
      return "unknown";
    }
  }
}
