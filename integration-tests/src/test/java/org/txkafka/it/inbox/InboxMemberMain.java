package org.txkafka.it.inbox;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Collection;
import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicBoolean;
import jakarta.persistence.EntityManagerFactory;
import org.apache.kafka.common.TopicPartition;
import org.hibernate.jpa.HibernatePersistenceConfiguration;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxBuilder;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.inbox.InboxListener;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;

/**
 * An inbox member in a child JVM, for the crash and fencing tests. Configured by system properties:
 * {@code bootstrap}, {@code jdbcUrl}, {@code jdbcUser}, {@code jdbcPassword}, {@code topic}, {@code
 * group}, {@code label} (written to ledger.applied_by), optional {@code instanceId} (static
 * membership), optional {@code stallMessageId} (the handler prints "STALL id" and sleeps {@code
 * stallMillis} in the transaction when it meets that id, once), optional {@code
 * transactionIdleTimeoutMillis} (0: the server's setting), optional {@code haltMessageId} (the
 * handler prints "HALT id" and ends the process with {@code Runtime.halt} whenever it meets that
 * id, after writing its ledger row), optional {@code maxAttempts}, optional {@code slowPartition}
 * and {@code slowMillis} (the handler sleeps that long for each record of that partition), optional
 * {@code jpa=true} (the inbox owns its transactions through a Hibernate EntityManagerFactory over
 * the same pool instead of the DataSource; the handler is the same). Prints "READY" once started,
 * "ASSIGNED", "LOST", "REVOKED", "FENCED" lines; runs until killed or terminated.
 */
public final class InboxMemberMain {
  private InboxMemberMain() {}

  /**
   * A child JVM running this member against {@code db} and {@code broker} on {@code topic} for
   * {@code group}, labelled {@code label}; add the scenario's properties, then start it.
   */
  static ChildJvm.Builder builder(
      TestDatabase db, KafkaBroker broker, String topic, String group, String label) {
    return ChildJvm.builder(InboxMemberMain.class)
        .systemProperty("bootstrap", broker.bootstrapServers())
        .systemProperty("jdbcUrl", db.jdbcUrl())
        .systemProperty("jdbcUser", db.user())
        .systemProperty("jdbcPassword", db.password() == null ? "" : db.password())
        .systemProperty("topic", topic)
        .systemProperty("group", group)
        .systemProperty("label", label)
        .maxHeap("192m");
  }

  /** Runs the member. */
  public static void main(String[] args) throws Exception {
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(System.getProperty("jdbcUrl"));
    config.setUsername(System.getProperty("jdbcUser"));
    config.setPassword(System.getProperty("jdbcPassword", ""));
    config.setMaximumPoolSize(3);
    String label = System.getProperty("label");
    String stallId = System.getProperty("stallMessageId");
    String haltId = System.getProperty("haltMessageId");
    int slowPartition = Integer.getInteger("slowPartition", -1);
    long slowMillis = Long.getLong("slowMillis", 0);
    long stallMillis = Long.getLong("stallMillis", 4000);
    AtomicBoolean stalled = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler(label);
    long delayMillis = Long.getLong("handlerDelayMillis", 0);
    InboxHandler handler =
        (record, context) -> {
          ledger.handle(record, context);
          if (delayMillis > 0) {
            Thread.sleep(delayMillis);
          }
          if (record.partition() == slowPartition) {
            Thread.sleep(slowMillis);
          }
          if (record.messageId().equals(haltId)) {
            // The business row is written but not committed: the process ends mid-transaction.
            System.out.println("HALT " + record.messageId() + " offset " + record.offset());
            System.out.flush();
            Runtime.getRuntime().halt(137);
          }
          if (record.messageId().equals(stallId) && stalled.compareAndSet(false, true)) {
            System.out.println("STALL " + record.messageId() + " offset " + record.offset());
            Thread.sleep(stallMillis);
            System.out.println("STALL OVER " + record.messageId());
          }
        };
    Map<String, Object> properties = new HashMap<>();
    properties.put("bootstrap.servers", System.getProperty("bootstrap"));
    if ("consumer".equals(System.getProperty("groupProtocol"))) {
      // KIP-848: the broker owns session timeout and heartbeat interval.
      properties.put("group.protocol", "consumer");
    } else {
      properties.put("session.timeout.ms", "6000");
      properties.put("heartbeat.interval.ms", "1000");
    }
    properties.put("max.poll.interval.ms", "20000");
    String instanceId = System.getProperty("instanceId");
    if (instanceId != null) {
      properties.put("group.instance.id", instanceId);
    }
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            System.out.println("ASSIGNED " + partitions);
          }

          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            System.out.println("REVOKED " + partitions);
          }

          @Override
          public void onPartitionsLost(Collection<TopicPartition> partitions) {
            System.out.println("LOST " + partitions);
          }

          @Override
          public void onPartitionFenced(TopicPartition partition) {
            System.out.println("FENCED " + partition);
          }
        };
    CountDownLatch stop = new CountDownLatch(1);
    boolean jpa = Boolean.getBoolean("jpa");
    try (HikariDataSource dataSource = new HikariDataSource(config);
        EntityManagerFactory emf =
            jpa
                ? new HibernatePersistenceConfiguration("inbox-member")
                    .property("hibernate.connection.datasource", dataSource)
                    .createEntityManagerFactory()
                : null;
        Inbox inbox =
            (jpa ? Inbox.builder().entityManagerFactory(emf) : Inbox.builder().dataSource(dataSource))
                .kafkaProperties(properties)
                .groupId(System.getProperty("group"))
                .topics(System.getProperty("topic"))
                .handler(handler)
                .maxBatchSize(Integer.getInteger("maxBatchSize", 50))
                .maxAttempts(Integer.getInteger("maxAttempts", InboxBuilder.DEFAULT_MAX_ATTEMPTS))
                .concurrency(2)
                .retryBackoff(Duration.ofMillis(50))
                .maxRetryBackoff(Duration.ofSeconds(1))
                .closeTimeout(Duration.ofSeconds(5))
                .revocationTimeout(Duration.ofSeconds(5))
                .transactionIdleTimeout(
                    Duration.ofMillis(Long.getLong("transactionIdleTimeoutMillis", 60_000)))
                .listener(listener)
                .build()) {
      Runtime.getRuntime().addShutdownHook(new Thread(stop::countDown));
      inbox.start();
      System.out.println(jpa ? "READY (JPA transaction owner)" : "READY");
      stop.await();
    }
  }
}
