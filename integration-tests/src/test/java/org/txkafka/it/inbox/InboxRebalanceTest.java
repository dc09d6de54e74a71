package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import javax.sql.DataSource;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** Members join and leave repeatedly while records flow: each record is applied exactly once. */
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class InboxRebalanceTest {
  private static TestDatabase db;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    InboxTestSupport.createLedger(db);
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  /** The classic group protocol with cooperative (incremental) rebalancing. */
  @Test
  void membersJoiningAndLeavingDuringProcessingKeepExactlyOnce() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    Map<String, Object> properties = new HashMap<>(InboxTestSupport.consumerProperties(broker));
    properties.put(
        "partition.assignment.strategy",
        "org.apache.kafka.clients.consumer.CooperativeStickyAssignor");
    membersJoinAndLeave(broker, properties, "inbox-rebalance");
  }

  /**
   * The consumer group protocol of KIP-848 ({@code group.protocol=consumer}, Kafka 4's new
   * rebalance protocol, run by the broker's coordinator with its own assignor): the consumer is
   * another implementation (the asynchronous consumer), whose rebalance callbacks run inside
   * {@code poll} like the classic one's. The inbox must keep the same promise on it. The classic
   * client settings it refuses (session timeout and heartbeat interval, now the broker's) are left
   * out.
   */
  @Test
  void membersJoiningAndLeavingWithTheConsumerGroupProtocolKeepExactlyOnce() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    Map<String, Object> properties = InboxTestSupport.consumerProperties(broker, "consumer");
    membersJoinAndLeave(broker, properties, "inbox-rebalance-kip848");
  }

  /**
   * A full group (the broker's {@code group.consumer.max.size}, here 1) refuses a new member
   * ({@code GroupMaxSizeReachedException}), as it does after a kill -9 until the killed member's
   * session times out. The refused inbox waits and joins again (running, no failure) and takes
   * over when the place frees; refused for longer than its rejoin timeout, it stops and says the
   * group is full.
   */
  @Test
  void memberRefusedByAFullGroupWaitsAndJoinsWhenAPlaceFrees() throws Exception {
    try (KafkaBroker broker = KafkaBroker.startDedicated(Map.of("group.consumer.max.size", "1"))) {
      String topic = KafkaBroker.uniqueTopic("inbox-full-group");
      broker.createTopic(topic, 2);
      List<Message> messages = InboxTestSupport.messages("full-", 300);
      String group = "full-" + topic;
      Map<String, Object> properties = InboxTestSupport.consumerProperties(broker, "consumer");
      try (HikariDataSource dataSource = db.newDataSource(6)) {
        Inbox first = fullGroupMember(properties, dataSource, topic, group, "first", Duration.ofMinutes(5));
        first.start();
        InboxTestSupport.produce(broker, topic, messages.subList(0, 100));
        awaitLedger("the first member to apply records", Duration.ofSeconds(60), topic, 100);
        try (Inbox waiting =
                fullGroupMember(properties, dataSource, topic, group, "second", Duration.ofMinutes(5));
            Inbox givingUp =
                fullGroupMember(properties, dataSource, topic, group, "third", Duration.ofSeconds(3))) {
          waiting.start();
          givingUp.start();
          await("the third member to give up", Duration.ofSeconds(60), () -> !givingUp.isRunning());
          assertTrue(givingUp.failure() instanceof IllegalStateException, String.valueOf(givingUp.failure()));
          assertTrue(givingUp.failure().getMessage().contains("the group is full"),
              givingUp.failure().getMessage());
          assertTrue(waiting.isRunning(), "the second member waits to join, it has not stopped");
          assertNull(waiting.failure());
          first.close();
          InboxTestSupport.produce(broker, topic, messages.subList(100, 300));
          awaitLedger("the second member to take over and apply the rest", Duration.ofSeconds(90), topic, 300);
          assertTrue(appliedBy(topic, "second") > 0, "the waiting member applied records once it was let in");
        } finally {
          first.close();
        }
      }
      assertEachAppliedOnce(topic, 300);
    }
  }

  /**
   * While a refused member joins again, its new consumer may fail to be made (bootstrap servers
   * not resolvable for a moment, here a consumer interceptor that refuses to configure twice): it
   * is tried again within the rejoin timeout, the inbox stays running without failure, and takes
   * over when the group lets it in. (It stopped at the first such failure before.)
   */
  @Test
  void refusedMemberWhoseNextConsumerCannotBeMadeForAMomentStillJoins() throws Exception {
    try (KafkaBroker broker = KafkaBroker.startDedicated(Map.of("group.consumer.max.size", "1"))) {
      String topic = KafkaBroker.uniqueTopic("inbox-consumer-creation");
      broker.createTopic(topic, 2);
      List<Message> messages = InboxTestSupport.messages("creation-", 200);
      String group = "creation-" + topic;
      Map<String, Object> properties = InboxTestSupport.consumerProperties(broker, "consumer");
      Map<String, Object> flaky = new HashMap<>(properties);
      flaky.put("interceptor.classes", RefusingInterceptor.class.getName());
      RefusingInterceptor.failures.set(0);
      RefusingInterceptor.refuseNext.set(0);
      RefusingInterceptor.configured.set(0);
      try (HikariDataSource dataSource = db.newDataSource(6)) {
        Inbox first = fullGroupMember(properties, dataSource, topic, group, "first", Duration.ofMinutes(5));
        first.start();
        InboxTestSupport.produce(broker, topic, messages.subList(0, 100));
        awaitLedger("the first member to apply records", Duration.ofSeconds(60), topic, 100);
        try (Inbox waiting = fullGroupMember(flaky, dataSource, topic, group, "second", Duration.ofMinutes(5))) {
          waiting.start(); // its first consumer is made
          RefusingInterceptor.refuseNext.set(2); // the next two, while it joins again, are not
          await("two consumers not made while joining again", Duration.ofSeconds(60),
              () -> RefusingInterceptor.failures.get() == 2);
          await("a consumer made again after them", Duration.ofSeconds(60),
              () -> RefusingInterceptor.configured.get() >= 2);
          assertTrue(waiting.isRunning(), "the member still waits to join, it has not stopped");
          assertNull(waiting.failure());
          first.close();
          InboxTestSupport.produce(broker, topic, messages.subList(100, 200));
          awaitLedger("the second member to take over and apply the rest", Duration.ofSeconds(90), topic, 200);
          assertTrue(appliedBy(topic, "second") > 0, "the member applied records once it was let in");
        } finally {
          first.close();
        }
      }
      assertEachAppliedOnce(topic, 200);
    }
  }

  /**
   * A consumer interceptor (a real Kafka plug-in, loaded by the consumer's constructor) that makes
   * the next {@link #refuseNext} consumers fail to be constructed.
   */
  public static final class RefusingInterceptor
      implements org.apache.kafka.clients.consumer.ConsumerInterceptor<Object, Object> {
    static final AtomicInteger refuseNext = new AtomicInteger();
    static final AtomicInteger failures = new AtomicInteger();
    static final AtomicInteger configured = new AtomicInteger();

    @Override
    public void configure(Map<String, ?> configs) {
      if (refuseNext.getAndUpdate(n -> Math.max(0, n - 1)) > 0) {
        failures.incrementAndGet();
        throw new org.apache.kafka.common.KafkaException(
            "refused for the test, as an unresolvable bootstrap server would be");
      }
      configured.incrementAndGet();
    }

    @Override
    public org.apache.kafka.clients.consumer.ConsumerRecords<Object, Object> onConsume(
        org.apache.kafka.clients.consumer.ConsumerRecords<Object, Object> records) {
      return records;
    }

    @Override
    public void onCommit(
        Map<TopicPartition, org.apache.kafka.clients.consumer.OffsetAndMetadata> offsets) {}

    @Override
    public void close() {}
  }

  private static void awaitLedger(String what, Duration timeout, String topic, long rows) {
    await(what, timeout,
        () -> db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic) == rows);
  }

  private static long appliedBy(String topic, String member) {
    return db.queryLong(
        "SELECT count(*) FROM ledger WHERE topic = ? AND applied_by = ?", topic, member);
  }

  private static void assertEachAppliedOnce(String topic, int records) {
    assertEquals(records,
        db.queryLong("SELECT count(DISTINCT message_id) FROM ledger WHERE topic = ?", topic));
    assertEquals(records,
        db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic), "no doubles");
  }

  private static Inbox fullGroupMember(
      Map<String, Object> properties,
      DataSource dataSource,
      String topic,
      String group,
      String name,
      Duration rejoinTimeout) {
    return Inbox.builder()
        .kafkaProperties(properties)
        .groupId(group)
        .topics(topic)
        .dataSource(dataSource)
        .handler(InboxTestSupport.ledgerHandler(name))
        .rejoinTimeout(rejoinTimeout)
        .build();
  }

  private void membersJoinAndLeave(KafkaBroker broker, Map<String, Object> properties, String prefix)
      throws Exception {
    String topic = KafkaBroker.uniqueTopic(prefix);
    broker.createTopic(topic, 6);
    List<Message> messages = InboxTestSupport.messages(prefix + "-", 4000);
    String group = "rebalance-" + topic;
    AtomicInteger assignments = new AtomicInteger();
    AtomicInteger revocations = new AtomicInteger();
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            assignments.addAndGet(partitions.size());
          }

          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            revocations.addAndGet(partitions.size());
          }
        };
    Random random = new Random(42);
    List<Inbox> members = new ArrayList<>();
    int started = 0;
    try (HikariDataSource dataSource = db.newDataSource(5)) {
      members.add(member(properties, dataSource, topic, group, started++, listener));
      Thread producer =
          InboxTestSupport.produceSlowly(broker, topic, messages, Duration.ofSeconds(12));
      for (int round = 0; round < 10; round++) {
        Thread.sleep(1200);
        if (members.size() < 3 && (members.size() == 1 || random.nextBoolean())) {
          members.add(member(properties, dataSource, topic, group, started++, listener));
        } else {
          members.remove(random.nextInt(members.size())).close();
        }
      }
      producer.join(60_000);
      await(
          "every record to be applied",
          Duration.ofSeconds(120),
          () -> db.queryLong("SELECT count(DISTINCT message_id) FROM ledger WHERE topic = ?", topic)
                  == messages.size());
      await(
          "every offset to be stored",
          Duration.ofSeconds(60),
          () ->
              db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic ="
                          + " ?",
                      topic)
                  == messages.size());
      for (Inbox member : members) {
        member.close();
      }
      assertTrue(started >= 5, "members started: " + started);
      assertTrue(revocations.get() > 0, "partitions moved between members");
      assertEquals(
          messages.size(), db.queryLong("SELECT count(*) FROM ledger WHERE topic = ?", topic), "ledger rows");
      assertEquals(
          InboxTestSupport.sum(messages),
          db.queryLong("SELECT sum(amount) FROM ledger WHERE topic = ?", topic));
      assertTrue(
          db.queryLong("SELECT max(owner_epoch) FROM txkafka_inbox_offset WHERE topic = ?", topic)
              > 1,
          "partitions were claimed more than once");
      assertEquals(
          0,
          db.queryLong(
              "SELECT count(*) FROM (SELECT message_id FROM ledger WHERE topic = ?"
                  + " GROUP BY message_id HAVING count(*) > 1) d",
              topic),
          "no message applied twice");
    } finally {
      for (Inbox member : members) {
        member.close();
      }
    }
  }

  private static Inbox member(
      Map<String, Object> properties,
      DataSource dataSource,
      String topic,
      String group,
      int number,
      InboxListener listener) {
    Inbox inbox =
        Inbox.builder()
            .kafkaProperties(properties)
            .groupId(group)
            .topics(topic)
            .dataSource(dataSource)
            .handler(InboxTestSupport.ledgerHandler("member-" + number))
            .maxBatchSize(40)
            .concurrency(2)
            .revocationTimeout(Duration.ofSeconds(10))
            .listener(listener)
            .build();
    inbox.start();
    return inbox;
  }
}
