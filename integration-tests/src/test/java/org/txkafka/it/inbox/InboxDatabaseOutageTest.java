package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
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

/**
 * PostgreSQL sessions killed (pg_terminate_backend) and then the database unreachable (connections
 * dropped and refused) for longer than the session timeout, mid-run: the consumer stays in its
 * group, resumes by itself and applies each record exactly once.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class InboxDatabaseOutageTest {
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

  private static HikariDataSource proxiedDataSource(TcpProxy proxy, int pathStart) {
    HikariConfig config = new HikariConfig();
    config.setJdbcUrl(
        "jdbc:postgresql://127.0.0.1:" + proxy.port() + "/" + db.jdbcUrl().substring(pathStart));
    config.setUsername(db.user());
    config.setPassword(db.password());
    config.setMaximumPoolSize(4);
    config.setConnectionTimeout(1000);
    return new HikariDataSource(config);
  }

  @Test
  void killedAndRefusedDatabaseConnectionsAreRetriedAndEveryRecordIsAppliedExactlyOnce()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-outage");
    broker.createTopic(topic, 3);
    List<Message> messages = InboxTestSupport.messages("outage-", 3000);
    AtomicInteger revokedOrLost = new AtomicInteger();
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> partitions) {
            revokedOrLost.addAndGet(partitions.size());
          }

          @Override
          public void onPartitionsLost(Collection<TopicPartition> partitions) {
            revokedOrLost.addAndGet(partitions.size());
          }
        };
    Matcher url = Pattern.compile("jdbc:postgresql://([^:/]+)(?::(\\d+))?/").matcher(db.jdbcUrl());
    assertTrue(url.lookingAt(), db.jdbcUrl());
    try (TcpProxy proxy =
            new TcpProxy(
                url.group(1), url.group(2) == null ? 5432 : Integer.parseInt(url.group(2)));
        HikariDataSource dataSource = proxiedDataSource(proxy, url.end());
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId("outage-" + topic)
                .topics(topic)
                .dataSource(dataSource)
                .handler(InboxTestSupport.ledgerHandler("outage"))
                .maxBatchSize(50)
                .concurrency(3)
                // One handler failure dead-letters a record: a database error taken for the
                // record's fault, even once, would show as a dead letter below.
                .maxAttempts(1)
                .retryBackoff(Duration.ofMillis(50))
                .maxRetryBackoff(Duration.ofMillis(500))
                .listener(listener)
                .build()) {
      inbox.start();
      Thread producer =
          InboxTestSupport.produceSlowly(broker, topic, messages, Duration.ofSeconds(10));
      await(
          "the first records to be applied",
          Duration.ofSeconds(60),
          () -> db.queryLong("SELECT count(*) FROM ledger") > 0);
      List<Integer> terminated = new ArrayList<>();
      // Flapping: every session of the database killed (pg_terminate_backend) every 400 ms.
      for (int i = 0; i < 8; i++) {
        terminated.add(db.terminateConnections());
        Thread.sleep(400);
      }
      // Down: connections dropped and refused for longer than the session timeout (6 s).
      proxy.cut();
      Thread.sleep(1000);
      long appliedAtOutage = db.queryLong("SELECT count(*) FROM ledger");
      Thread.sleep(8000);
      long appliedWhileDown = db.queryLong("SELECT count(*) FROM ledger") - appliedAtOutage;
      proxy.restore();
      producer.join(60_000);
      await(
          "every record to be applied",
          Duration.ofSeconds(120),
          () -> db.queryLong("SELECT count(DISTINCT message_id) FROM ledger") == messages.size());
      // Let anything still in flight settle before counting duplicates.
      await(
          "every offset to be stored",
          Duration.ofSeconds(30),
          () ->
              db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic ="
                          + " ?",
                      topic)
                  == messages.size());
      assertEquals(0, appliedWhileDown, "nothing can be applied while the database is unreachable");
      assertTrue(appliedAtOutage < messages.size(), "the outage hit mid-run");
      assertTrue(
          terminated.stream().mapToInt(Integer::intValue).sum() > 0,
          "sessions were actually terminated: " + terminated);
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"), "ledger rows");
      assertEquals(InboxTestSupport.sum(messages), db.queryLong("SELECT sum(amount) FROM ledger"));
      assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM txkafka_inbox"));
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM txkafka_inbox_dead_letter"),
          "no database error was charged to a record");
      assertTrue(inbox.isRunning(), "the inbox kept running");
      System.out.println(
          "sessions terminated: "
              + terminated.stream().mapToInt(Integer::intValue).sum()
              + ", records applied before the outage: "
              + appliedAtOutage);
      assertEquals(0, revokedOrLost.get(), "the consumer stayed in its group while PG was down");
    }
  }

  /**
   * A batch commits but its client never learns it (the connection is lost during COMMIT): the
   * inbox retries the batch as a transient failure. Meanwhile the batch's inbox rows may have
   * expired (a dedup retention shorter than the outage), so the retry must not run the records
   * again on the strength of their inbox rows: it sees the stored offset already at the batch's
   * end, in its own epoch, and goes on. Before, the retry's compare-and-set also accepted an
   * offset already at the batch's end, found every id new and applied the batch twice.
   */
  @Test
  void aBatchWhoseCommitAnswerWasLostIsNotAppliedAgainEvenWithItsInboxRowsGone() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-lost-commit");
    broker.createTopic(topic, 1);
    String group = "lost-commit-" + topic;
    List<Message> messages = InboxTestSupport.messages("lost-commit-", 40);
    InboxTestSupport.produce(broker, topic, messages);
    AtomicInteger lostAnswers = new AtomicInteger();
    try (HikariDataSource pool = db.newDataSource(4);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(losingFirstBatchCommitAnswer(pool, group, lostAnswers))
                .handler(InboxTestSupport.ledgerHandler("lost-commit"))
                .maxBatchSize(10)
                .retryBackoff(Duration.ofMillis(50))
                .build()) {
      inbox.start();
      await(
          "every offset to be stored",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      assertEquals(1, lostAnswers.get(), "one commit answer was lost");
      assertEquals(
          messages.size(),
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'lost-commit'"),
          "each record applied once");
      assertEquals(
          messages.size(),
          db.queryLong(
              "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'lost-commit'"));
      assertEquals(
          InboxTestSupport.sum(messages),
          db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'lost-commit'"));
      assertTrue(inbox.isRunning(), "the inbox kept running");
    }
  }

  /**
   * Wraps {@code pool}: the first commit after which the ledger holds rows commits for real, then
   * deletes the group's inbox rows (as retention would once they expired) and throws what a
   * connection lost during COMMIT gives (SQLState 08006).
   */
  private static javax.sql.DataSource losingFirstBatchCommitAnswer(
      javax.sql.DataSource pool, String group, AtomicInteger lostAnswers) {
    java.util.concurrent.atomic.AtomicBoolean armed =
        new java.util.concurrent.atomic.AtomicBoolean(true);
    return (javax.sql.DataSource)
        java.lang.reflect.Proxy.newProxyInstance(
            InboxDatabaseOutageTest.class.getClassLoader(),
            new Class<?>[] {javax.sql.DataSource.class},
            (dataSource, dataSourceMethod, dataSourceArgs) -> {
              Object result = invoke(pool, dataSourceMethod, dataSourceArgs);
              if (!dataSourceMethod.getName().equals("getConnection")) {
                return result;
              }
              java.sql.Connection real = (java.sql.Connection) result;
              return java.lang.reflect.Proxy.newProxyInstance(
                  InboxDatabaseOutageTest.class.getClassLoader(),
                  new Class<?>[] {java.sql.Connection.class},
                  (connection, method, args) -> {
                    Object value = invoke(real, method, args);
                    if (method.getName().equals("commit")
                        && armed.get()
                        && db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = ?",
                                "lost-commit") > 0
                        && armed.compareAndSet(true, false)) {
                      db.execute("DELETE FROM txkafka_inbox WHERE consumer_group = '" + group + "'");
                      lostAnswers.incrementAndGet();
                      throw new java.sql.SQLException(
                          "simulated: connection lost during COMMIT", "08006");
                    }
                    return value;
                  });
            });
  }

  private static Object invoke(Object target, java.lang.reflect.Method method, Object[] args)
      throws Throwable {
    try {
      return method.invoke(target, args);
    } catch (java.lang.reflect.InvocationTargetException e) {
      throw e.getCause();
    }
  }
}
