package org.txkafka.demo;

import java.io.PrintStream;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Clock;
import java.time.Duration;
import java.util.List;
import java.util.Locale;
import java.util.Random;
import java.util.concurrent.Callable;
import javax.sql.DataSource;
import org.txkafka.demo.events.Topics;
import org.txkafka.demo.orders.OrdersService;
import org.txkafka.demo.orders.PurchaseOrder;
import org.txkafka.demo.payments.Payment;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * The demo: an order to payment pipeline between two services over a real Kafka broker.
 *
 * <ol>
 *   <li>The orders service places orders: order row and payment request in one transaction
 *       (outbox), at {@code --rate} orders per second, from this process (its API side).
 *   <li>The orders worker process relays the requests to Kafka.
 *   <li>The payments worker process consumes them (inbox), captures a payment and writes the reply
 *       into its outbox in the same transaction, and relays the replies.
 *   <li>The orders worker consumes the replies (inbox) and marks the orders paid.
 * </ol>
 *
 * <p>Each service has its own database. With {@code --chaos} the two worker processes are killed
 * with SIGKILL at random moments and started again. At the end the demo counts, in the databases,
 * orders, paid orders, payments and confirmations, and prints {@code verified: orders=N paid=N
 * lost=L duplicated=D}, once nothing is in flight (outboxes empty, each inbox at its topic's end);
 * the exit code is 0 only if the pipeline drained and {@link Verification#problems()} is empty:
 * nothing lost or duplicated, no payment without its order, no paid order without its payment,
 * nothing parked or dead-lettered.
 */
@Command(
    name = "txkafka-demo",
    mixinStandardHelpOptions = true,
    sortOptions = false,
    description = {
      "Runs an order -> payment pipeline between two JPA services over a real Kafka broker with",
      "the txkafka outbox and inbox, and verifies from the databases that nothing was lost or",
      "applied twice."
    })
public final class Demo implements Callable<Integer> {

  @Option(names = "--orders", description = "Orders to place (default ${DEFAULT-VALUE}).", defaultValue = "2000")
  int orders;

  @Option(names = "--rate", description = "Orders placed per second (default ${DEFAULT-VALUE}).", defaultValue = "100")
  int rate;

  @Option(names = "--partitions", description = "Partitions of both topics (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int partitions;

  @Option(names = "--api-threads", description = "Threads of the orders API placing orders (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int apiThreads;

  @Option(names = "--chaos", description = "SIGKILL and restart the worker processes (relays and consumers) during the run.")
  boolean chaos;

  @Option(names = "--chaos-min-kills", description = "With --chaos: keep killing until at least this many kills (default ${DEFAULT-VALUE}).", defaultValue = "4")
  int chaosMinKills;

  @Option(names = "--group-protocol", description = "Consumer group protocol of the workers' inboxes: classic, or consumer (Kafka's KIP-848 protocol) (default ${DEFAULT-VALUE}).", defaultValue = "classic")
  String groupProtocol;

  @Option(names = "--drain-timeout", description = "Seconds to wait without progress before giving up (default ${DEFAULT-VALUE}).", defaultValue = "120")
  int drainTimeoutSeconds;

  @Option(names = "--seed", description = "Seed of the chaos schedule and the amounts (default: random).")
  Long seed;

  @Spec CommandSpec spec;

  private final PrintStream out;

  /** A demo that prints to standard output. */
  public Demo() {
    this(System.out);
  }

  /** A demo that prints to {@code out} (the test reads it). */
  public Demo(PrintStream out) {
    this.out = out;
  }

  /** Runs the command line and exits with its code. */
  public static void main(String[] args) {
    System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    // Without Docker, Testcontainers logs its failed probe as an error before the fallback is used.
    System.setProperty("org.slf4j.simpleLogger.log.org.testcontainers", "off");
    System.exit(new CommandLine(new Demo()).execute(args));
  }

  @Override
  public Integer call() throws Exception {
    validate();
    long effectiveSeed = seed != null ? seed : System.nanoTime();
    Random random = new Random(effectiveSeed);
    long started = System.nanoTime();
    out.printf(
        Locale.ROOT,
        "txkafka demo: %d orders at %d/s, %d partitions, chaos %s, group protocol %s, seed %d%n",
        orders, rate, partitions, chaos ? "on" : "off", groupProtocol, effectiveSeed);
    out.println("starting a Kafka broker and finding PostgreSQL ...");
    KafkaBroker broker = KafkaBroker.shared();
    String runId = Long.toHexString(random.nextLong() & 0xffffffffL);
    Topics topics = Topics.forRun(runId);
    broker.createTopic(topics.paymentRequested(), partitions);
    broker.createTopic(topics.paymentCompleted(), partitions);
    out.println("kafka: " + broker.bootstrapServers() + "; postgres: " + TestPostgres.shared().description());

    try (TestDatabase ordersDb = TestPostgres.shared().createDatabase();
        TestDatabase paymentsDb = TestPostgres.shared().createDatabase();
        ServiceDatabase ordersDatabase = ServiceDatabase.open("orders", coordinates(ordersDb), true, List.of(PurchaseOrder.class));
        ServiceDatabase paymentsDatabase = ServiceDatabase.open("payments", coordinates(paymentsDb), true, List.of(Payment.class));
        Workers workers = new Workers(broker.bootstrapServers(), runId, groupProtocol, coordinates(ordersDb), coordinates(paymentsDb), out)) {
      out.println("databases: orders=" + ordersDb.name() + " payments=" + paymentsDb.name()
          + " (each with its own Flyway history and the txkafka tables)");
      workers.startAll();
      out.println("workers started: orders-worker (relay + inbox), payments-worker (inbox + relay);"
          + " topics " + topics.paymentRequested() + ", " + topics.paymentCompleted());

      OrdersService ordersService = new OrdersService(ordersDatabase.entityManagerFactory(), topics, Clock.systemUTC());
      OrdersApi placer = new OrdersApi(ordersService, orders, rate, apiThreads, random.nextLong());
      placer.start();

      Chaos chaosMonkey = chaos ? new Chaos(workers, new Random(random.nextLong()), chaosMinKills, out) : null;
      if (chaosMonkey != null) {
        chaosMonkey.start();
      }

      Progress progress = new Progress(ordersDatabase.dataSource(), paymentsDatabase.dataSource());
      long lastPaid = -1;
      long lastProgressAt = System.nanoTime();
      long quietSince = 0;
      boolean chaosWasDone = chaosMonkey == null;
      boolean drained = false;
      while (true) {
        Thread.sleep(1000);
        Progress.Snapshot snapshot = progress.snapshot();
        boolean chaosDone = chaosMonkey == null || chaosMonkey.finished();
        out.printf(
            Locale.ROOT,
            "[%6.1fs] sent=%d published=%d applied=%d paid=%d lag=%d%s%n",
            (System.nanoTime() - started) / 1e9,
            snapshot.sent(),
            snapshot.published(),
            snapshot.applied(),
            snapshot.paid(),
            snapshot.sent() - snapshot.paid(),
            chaosMonkey == null ? "" : " kills=" + chaosMonkey.kills());
        if (!placer.isAlive() && chaosMonkey != null) {
          chaosMonkey.allowFinish();
        }
        if (snapshot.paid() != lastPaid || (chaosDone && !chaosWasDone)) {
          // Paid moved, or chaos just ended: the no-progress timer starts again.
          lastPaid = snapshot.paid();
          lastProgressAt = System.nanoTime();
        }
        chaosWasDone = chaosDone;
        if (!placer.isAlive() && chaosDone && snapshot.paid() >= snapshot.sent()) {
          // Every order is paid; verify only once nothing is in flight: both outboxes empty and
          // both inboxes have consumed their topic to its end (a duplicate still in a topic would
          // otherwise be applied, or not, after the check).
          if (quietSince == 0) {
            quietSince = System.nanoTime();
          }
          long inFlight =
              Demo.queryLong(ordersDatabase.dataSource(), "SELECT count(*) FROM txkafka_outbox")
                  + Demo.queryLong(paymentsDatabase.dataSource(), "SELECT count(*) FROM txkafka_outbox")
                  + Progress.unconsumed(paymentsDatabase.dataSource(), topics.paymentRequested(), broker)
                  + Progress.unconsumed(ordersDatabase.dataSource(), topics.paymentCompleted(), broker);
          if (inFlight == 0) {
            drained = true;
            break;
          }
          if (System.nanoTime() - quietSince > Duration.ofSeconds(drainTimeoutSeconds).toNanos()) {
            out.println("every order is paid, but " + inFlight + " messages were still in an outbox or"
                + " unconsumed after " + drainTimeoutSeconds + " s: giving up waiting");
            break;
          }
          continue;
        }
        quietSince = 0;
        if (!placer.isAlive()
            && chaosDone
            && System.nanoTime() - lastProgressAt > Duration.ofSeconds(drainTimeoutSeconds).toNanos()) {
          out.println("no order was paid for " + drainTimeoutSeconds + " s: giving up waiting");
          break;
        }
      }
      placer.stop();
      if (chaosMonkey != null) {
        chaosMonkey.stop();
      }
      workers.stopAll();
      Verification verification = Verification.run(ordersDatabase.dataSource(), paymentsDatabase.dataSource());
      printSummary(verification, placer.failures(), chaosMonkey, drained, started);
      boolean ok =
          drained
              && verification.problems().isEmpty()
              && verification.orders() + placer.failures() == orders;
      return ok ? 0 : 1;
    }
  }

  private void printSummary(
      Verification v, long placeFailures, Chaos chaosMonkey, boolean drained, long started) {
    out.println();
    out.println("== summary");
    out.printf(Locale.ROOT, "elapsed            %.1f s%n", (System.nanoTime() - started) / 1e9);
    out.printf(Locale.ROOT, "orders placed      %d of %d requested (%d placements rolled back)%n", v.orders(), orders, placeFailures);
    out.printf(Locale.ROOT, "payments captured  %d rows for %d distinct orders%n", v.payments(), v.paymentOrders());
    out.printf(Locale.ROOT, "orders paid        %d (confirmations applied: %d)%n", v.paid(), v.confirmations());
    out.printf(Locale.ROOT, "cross-check        %d payments for unknown orders, %d paid orders without a payment%n", v.unknownOrderPayments(), v.paidWithoutPayment());
    out.printf(Locale.ROOT, "amounts            ordered %d, paid orders %d, captured %d cents%n", v.orderedCents(), v.paidOrderCents(), v.capturedCents());
    out.printf(Locale.ROOT, "order -> paid      p50 %.1f ms, p99 %.1f ms (commit of the order to commit of its payment confirmation)%n", v.p50Millis(), v.p99Millis());
    out.printf(Locale.ROOT, "outbox pending     orders %d, payments %d; parked %d%n", v.ordersOutboxPending(), v.paymentsOutboxPending(), v.parked());
    out.printf(Locale.ROOT, "dead letters       %d%n", v.deadLetters());
    if (chaosMonkey != null) {
      out.println("chaos              " + chaosMonkey.describe());
    }
    if (!drained) {
      out.println("FAILED: the pipeline did not drain before the timeout");
    }
    for (String problem : v.problems()) {
      out.println("FAILED: " + problem);
    }
    out.printf(
        Locale.ROOT,
        "verified: orders=%d paid=%d lost=%d duplicated=%d%n",
        v.orders(),
        v.paid(),
        v.lost(),
        v.duplicated());
    out.flush();
  }

  private void validate() {
    require(orders >= 1, "orders must be at least 1, was " + orders);
    require(rate >= 1 && rate <= 100_000, "rate must be between 1 and 100000, was " + rate);
    require(apiThreads >= 1 && apiThreads <= 16, "api-threads must be between 1 and 16, was " + apiThreads);
    require(partitions >= 1 && partitions <= 64, "partitions must be between 1 and 64, was " + partitions);
    require(chaosMinKills >= 0, "chaos-min-kills must be at least 0, was " + chaosMinKills);
    require(drainTimeoutSeconds >= 1, "drain-timeout must be at least 1, was " + drainTimeoutSeconds);
    require(groupProtocol.equals("classic") || groupProtocol.equals("consumer"),
        "group-protocol must be classic or consumer, was " + groupProtocol);
  }

  private void require(boolean condition, String message) {
    if (!condition) {
      throw new CommandLine.ParameterException(spec.commandLine(), message);
    }
  }

  private static ServiceDatabase.DbCoordinates coordinates(TestDatabase db) {
    return new ServiceDatabase.DbCoordinates(db.jdbcUrl(), db.user(), db.password());
  }

  static long queryLong(DataSource dataSource, String sql) throws SQLException {
    try (Connection connection = dataSource.getConnection();
        Statement statement = connection.createStatement();
        ResultSet rs = statement.executeQuery(sql)) {
      rs.next();
      return rs.getLong(1);
    }
  }
}
