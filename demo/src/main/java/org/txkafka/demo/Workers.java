package org.txkafka.demo;

import java.io.PrintStream;
import java.time.Duration;
import org.txkafka.testkit.ChildJvm;

/**
 * The two worker processes ({@link ServiceWorker}): started, killed and restarted as child JVMs.
 * Thread-safe: the chaos thread and the main thread both use it.
 */
final class Workers implements AutoCloseable {
  static final String[] SERVICES = {"orders", "payments"};
  private static final Duration START_TIMEOUT = Duration.ofMinutes(2);

  private final String bootstrap;
  private final String runId;
  private final String groupProtocol;
  private final ServiceDatabase.DbCoordinates[] databases;
  private final ChildJvm[] children = new ChildJvm[SERVICES.length];
  private final PrintStream out;

  Workers(
      String bootstrap,
      String runId,
      String groupProtocol,
      ServiceDatabase.DbCoordinates orders,
      ServiceDatabase.DbCoordinates payments,
      PrintStream out) {
    this.bootstrap = bootstrap;
    this.runId = runId;
    this.groupProtocol = groupProtocol;
    this.databases = new ServiceDatabase.DbCoordinates[] {orders, payments};
    this.out = out;
  }

  /** Starts every worker, all at once, and waits until each is ready. */
  synchronized void startAll() {
    for (int i = 0; i < SERVICES.length; i++) {
      launch(i);
    }
    for (ChildJvm child : children) {
      child.awaitLine(ServiceWorker.READY, START_TIMEOUT);
    }
  }

  /** Starts worker {@code index} and waits until it is ready. */
  synchronized void start(int index) {
    launch(index).awaitLine(ServiceWorker.READY, START_TIMEOUT);
  }

  private ChildJvm launch(int index) {
    ServiceDatabase.DbCoordinates db = databases[index];
    ChildJvm child =
        ChildJvm.builder(ServiceWorker.class)
            .name(SERVICES[index] + "-worker")
            .maxHeap("256m")
            .systemProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn")
            .args(SERVICES[index], db.jdbcUrl(), nullToEmpty(db.user()), nullToEmpty(db.password()), bootstrap, runId, groupProtocol)
            .start();
    children[index] = child;
    return child;
  }

  /** SIGKILL of worker {@code index}: no shutdown hook, nothing flushed. */
  synchronized void kill(int index) {
    out.println("chaos: SIGKILL " + SERVICES[index] + "-worker (pid " + children[index].pid() + ")");
    children[index].kill();
  }

  /** SIGTERM of every worker (graceful close of relays and inboxes). */
  synchronized void stopAll() {
    for (ChildJvm child : children) {
      if (child != null && child.isAlive()) {
        child.terminate();
      }
    }
  }

  @Override
  public synchronized void close() {
    for (ChildJvm child : children) {
      if (child != null) {
        child.close();
      }
    }
  }

  private static String nullToEmpty(String value) {
    return value == null ? "" : value;
  }
}
