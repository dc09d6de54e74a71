package org.txkafka.it.outbox;

import java.time.Duration;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.stream.Collectors;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxRelay;

/**
 * A relay in a child JVM, for the crash and failover tests. Arguments: JDBC URL, user ("-" for
 * none), password ("-" for none), bootstrap servers, relay name, batch size. Prints one line per
 * lease and batch event, {@code EVENT <epoch millis> <TYPE> <shares>}, with TYPE one of ACQUIRED,
 * RELEASED, LOST, BEGIN, END, and {@code READY} once started. SIGTERM closes the relay gracefully.
 * With {@code -DfreezeOnFirstSend}, the whole process stops itself (SIGSTOP) inside the producer's
 * send of the first row, after printing {@code FREEZING}: every thread, the keepalive's too, stands
 * still at that exact point until the test sends SIGCONT.
 */
public final class RelayProcessMain {
  private RelayProcessMain() {}

  /** Runs the relay until the JVM is terminated or killed. */
  public static void main(String[] args) throws InterruptedException {
    String url = args[0];
    String user = args[1];
    String password = args[2];
    String bootstrap = args[3];
    String name = args[4];
    int batchSize = Integer.parseInt(args[5]);
    OutboxRelay.Builder builder =
        Outbox.relay()
            .dataSource(OutboxFixtures.unpooled(url, user, password))
            .producerProperty("bootstrap.servers", bootstrap)
            .name(name)
            .batchSize(batchSize)
            .pollInterval(Duration.ofMillis(500))
            .leaseCheckInterval(Duration.ofMillis(200))
            .retryBackoff(Duration.ofMillis(50), Duration.ofSeconds(1))
            .closeTimeout(Duration.ofSeconds(10))
            .listener(new PrintingListener());
    String leaseTimeoutMillis = System.getProperty("leaseTimeoutMillis");
    if (leaseTimeoutMillis != null) {
      builder.leaseTimeout(Duration.ofMillis(Long.parseLong(leaseTimeoutMillis)));
    }
    if (System.getProperty("freezeOnFirstSend") != null) {
      builder.producerProperty("interceptor.classes", FreezingInterceptor.class.getName());
    }
    OutboxRelay relay = builder.build();
    CountDownLatch closed = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  relay.close();
                  System.out.println("CLOSED");
                  System.out.flush();
                  closed.countDown();
                }));
    relay.start();
    System.out.println("READY " + name);
    System.out.flush();
    closed.await();
  }

  private static final class PrintingListener implements OutboxRelay.Listener {
    @Override
    public void sharesAcquired(Set<Integer> shares) {
      print("ACQUIRED", shares);
    }

    @Override
    public void sharesReleased(Set<Integer> shares, boolean lost) {
      print(lost ? "LOST" : "RELEASED", shares);
    }

    @Override
    public void batchStarting(Set<Integer> shares, int rows) {
      print("BEGIN", shares);
    }

    @Override
    public void batchFinished(Set<Integer> shares, int published, int parked, int failed) {
      print("END", shares);
    }

    private static void print(String type, Set<Integer> shares) {
      String line =
          "EVENT "
              + System.currentTimeMillis()
              + " "
              + type
              + " "
              + shares.stream().map(String::valueOf).collect(Collectors.joining(","));
      System.out.println(line);
      System.out.flush();
    }
  }

  /** Stops the whole JVM with SIGSTOP in the first send it sees (the relay thread's). */
  public static final class FreezingInterceptor
      implements org.apache.kafka.clients.producer.ProducerInterceptor<byte[], byte[]> {
    private static final java.util.concurrent.atomic.AtomicBoolean FROZEN =
        new java.util.concurrent.atomic.AtomicBoolean();

    @Override
    public org.apache.kafka.clients.producer.ProducerRecord<byte[], byte[]> onSend(
        org.apache.kafka.clients.producer.ProducerRecord<byte[], byte[]> record) {
      if (FROZEN.compareAndSet(false, true)) {
        System.out.println("FREEZING");
        System.out.flush();
        // The stop is sent by another process; this thread spins until it sees the jump of the
        // clock that the freeze leaves, so that on SIGCONT it goes on at once, as a thread frozen
        // mid-send by a GC pause would (not after a wait for the kill process to be reaped).
        long last = System.nanoTime(); // before the kill: the stop may land before the loop
        long deadline = last + 60_000_000_000L;
        try {
          new ProcessBuilder("kill", "-STOP", Long.toString(ProcessHandle.current().pid())).start();
        } catch (java.io.IOException e) {
          throw new java.io.UncheckedIOException(e);
        }
        while (true) {
          long now = System.nanoTime();
          if (now - last > 1_000_000_000L || now > deadline) {
            break; // frozen for over a second and woken, or never frozen
          }
          last = now;
          Thread.onSpinWait();
        }
      }
      return record;
    }

    @Override
    public void onAcknowledgement(
        org.apache.kafka.clients.producer.RecordMetadata metadata, Exception exception) {}

    @Override
    public void close() {}

    @Override
    public void configure(java.util.Map<String, ?> configs) {}
  }
}
