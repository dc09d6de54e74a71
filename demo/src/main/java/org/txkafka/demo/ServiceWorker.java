package org.txkafka.demo;

import java.time.Clock;
import java.time.Duration;
import java.util.Collection;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.TopicPartition;
import org.txkafka.inbox.InboxListener;
import java.util.List;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import org.txkafka.demo.events.Topics;
import org.txkafka.demo.orders.OrdersService;
import org.txkafka.demo.orders.PurchaseOrder;
import org.txkafka.demo.payments.Payment;
import org.txkafka.demo.payments.PaymentsService;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxRelay;

/**
 * The background half of one service, run as its own process (the demo starts it as a child JVM,
 * and in chaos mode kills it with SIGKILL and starts it again): the service's outbox relay and its
 * inbox consumer, on the service's own database.
 *
 * <ul>
 *   <li>{@code orders}: relays the payment requests; its inbox marks orders paid.
 *   <li>{@code payments}: its inbox captures payments and writes the replies to the outbox; relays
 *       the replies.
 * </ul>
 *
 * <p>Arguments: {@code service jdbcUrl user password bootstrapServers runId groupProtocol}; the
 * run id names the topics and the consumer groups; the group protocol is {@code classic} or {@code
 * consumer}. Prints {@code READY} once both are started. SIGTERM closes both
 * gracefully.
 */
public final class ServiceWorker {
  /** The line a worker prints once its relay and inbox are started. */
  public static final String READY = "READY";

  private ServiceWorker() {}

  /**
   * The inbox consumer's settings. A restarted worker keeps its static member id, so that it takes
   * its partitions back instead of the group waiting for the killed member's session to time out
   * and moving them twice. On the classic protocol the session timeout is the consumer's own; on
   * Kafka's consumer protocol (KIP-848) the broker sets it (group.consumer.session.timeout.ms), and
   * a restarted worker is refused until the killed life's session ended, then joins on its own.
   */
  static Map<String, Object> consumerProperties(
      String service, String bootstrap, String runId, String groupProtocol) {
    Map<String, Object> props = new HashMap<>();
    props.put("bootstrap.servers", bootstrap);
    props.put("group.instance.id", service + "-worker-" + runId);
    if (groupProtocol.equals("consumer")) {
      props.put("group.protocol", "consumer");
    } else {
      props.put("session.timeout.ms", "10000");
    }
    return props;
  }

  private static String emptyToNull(String value) {
    return value.isEmpty() ? null : value;
  }

  /** Entry point of the child JVM. */
  public static void main(String[] args) throws InterruptedException {
    if (args.length != 7) {
      System.err.println(
          "usage: ServiceWorker orders|payments jdbcUrl user password bootstrap runId"
              + " classic|consumer");
      System.exit(2);
    }
    String service = args[0];
    ServiceDatabase.DbCoordinates coordinates =
        new ServiceDatabase.DbCoordinates(args[1], emptyToNull(args[2]), emptyToNull(args[3]));
    String bootstrap = args[4];
    String runId = args[5];
    String groupProtocol = args[6];
    Topics topics = Topics.forRun(runId);
    Clock clock = Clock.systemUTC();

    ServiceDatabase database;
    InboxHandler handler;
    String consumes;
    switch (service) {
      case "orders" -> {
        database = ServiceDatabase.open(service, coordinates, false, List.of(PurchaseOrder.class));
        OrdersService orders = new OrdersService(database.entityManagerFactory(), topics, clock);
        handler = orders::onPaymentCompleted;
        consumes = topics.paymentCompleted();
      }
      case "payments" -> {
        database = ServiceDatabase.open(service, coordinates, false, List.of(Payment.class));
        PaymentsService payments = new PaymentsService(topics, clock);
        handler = payments::onPaymentRequested;
        consumes = topics.paymentRequested();
      }
      default -> throw new IllegalArgumentException("service must be orders or payments, was " + service);
    }

    CountDownLatch assigned = new CountDownLatch(1);
    OutboxRelay relay =
        Outbox.relay()
            .dataSource(database.dataSource())
            .producerProperty("bootstrap.servers", bootstrap)
            .name(service + "-relay")
            .build();
    Inbox inbox =
        Inbox.builder()
            .kafkaProperties(consumerProperties(service, bootstrap, runId, groupProtocol))
            .groupId(service + "-" + runId)
            .topics(consumes)
            .entityManagerFactory(database.entityManagerFactory())
            .handler(handler)
            .listener(
                new InboxListener() {
                  @Override
                  public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
                    assigned.countDown();
                  }
                })
            .build();
    CountDownLatch stopped = new CountDownLatch(1);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  inbox.close();
                  relay.close();
                  database.close();
                  stopped.countDown();
                },
                "worker-shutdown"));
    relay.start();
    inbox.start();
    // Ready means working: the relay holds shares and the inbox has partitions (bounded waits; a
    // worker that is slow to get them still works, it just says so later).
    long deadline = System.nanoTime() + Duration.ofSeconds(60).toNanos();
    while (relay.ownedShares().isEmpty() && System.nanoTime() < deadline) {
      Thread.sleep(20);
    }
    assigned.await(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
    System.out.println(READY + " " + service);
    System.out.flush();
    stopped.await();
  }
}
