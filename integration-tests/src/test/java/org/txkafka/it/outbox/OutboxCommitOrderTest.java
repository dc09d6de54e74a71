package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.WRITER;
import static org.txkafka.it.outbox.OutboxFixtures.relay;
import static org.txkafka.it.outbox.OutboxFixtures.text;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Random;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Per-key order is the order in which rows became visible (commit order), not the order of their
 * ids. Under JPA the outbox row is inserted at send() while entity updates wait for the flush at
 * commit, so a transaction can take a lower id, block on a business row lock, and commit after a
 * transaction that took a higher id for the same key.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class OutboxCommitOrderTest {
  private static final Duration WAIT = Duration.ofSeconds(60);
  private static TestDatabase db;
  private static KafkaBroker broker;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    db.execute("CREATE TABLE account (id TEXT PRIMARY KEY, version BIGINT NOT NULL)",
        "CREATE TABLE commit_log (tag TEXT PRIMARY KEY, account TEXT NOT NULL,"
            + " version BIGINT NOT NULL)");
    broker = KafkaBroker.shared();
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void rowsOfOneKeyArePublishedInCommitOrderEvenWhenTheirIdsSayOtherwise() throws Exception {
    String topic = KafkaBroker.uniqueTopic("commit-order");
    broker.createTopic(topic, 1);
    db.execute("INSERT INTO account VALUES ('acc-1', 0)");
    try (Connection first = db.connect(); Connection second = db.connect()) {
      first.setAutoCommit(false);
      second.setAutoCommit(false);
      lockAccount(second, "acc-1");
      // first takes the lower id, then waits for the account row that second holds.
      WRITER.send(first, OutboxMessage.to(topic).key("acc-1").payload("inserted-first").build());
      ExecutorService thread = Executors.newSingleThreadExecutor();
      Future<?> firstCommit = thread.submit(() -> {
        lockAccount(first, "acc-1");
        first.commit();
        return null;
      });
      Thread.sleep(200); // first is now blocked on the row lock
      WRITER.send(second, OutboxMessage.to(topic).key("acc-1").payload("inserted-second")
          .build());
      second.commit(); // visible first
      firstCommit.get(30, TimeUnit.SECONDS);
      thread.shutdown();
    }
    try (HikariDataSource pool = db.newDataSource(3);
        OutboxRelay relay = relay(pool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start(); // sees both rows at once
      reader.pollUntil(WAIT, "both published", r -> r.records().size() >= 2);
      List<ConsumerRecord<byte[], byte[]>> records = reader.records();
      assertEquals("inserted-second", text(records.get(0).value()), "committed first");
      assertEquals("inserted-first", text(records.get(1).value()), "committed second");
    }
  }

  @Test
  void bulkTransactionWithThousandsOfKeysCommitsAndKeepsCommitOrderWithSmallOnes()
      throws Exception {
    String topic = KafkaBroker.uniqueTopic("commit-order-bulk");
    broker.createTopic(topic, 2);
    db.execute("INSERT INTO account VALUES ('bulk-acc', 0)");
    int bulkKeys = 20_000; // one lock per key would exhaust a default server's lock table
    try (Connection bulk = db.connect(); Connection small = db.connect()) {
      bulk.setAutoCommit(false);
      small.setAutoCommit(false);
      lockAccount(small, "bulk-acc");
      List<OutboxMessage> messages = new ArrayList<>();
      messages.add(OutboxMessage.to(topic).key("bulk-acc").payload("bulk").build());
      for (int i = 0; i < bulkKeys; i++) {
        messages.add(OutboxMessage.to(topic).key("bulk-key-" + i).payload("bulk").build());
      }
      WRITER.sendAll(bulk, messages); // lower ids, including one for bulk-acc
      ExecutorService thread = Executors.newSingleThreadExecutor();
      Future<?> bulkCommit = thread.submit(() -> {
        lockAccount(bulk, "bulk-acc");
        bulk.commit();
        return null;
      });
      Thread.sleep(200);
      WRITER.send(small, OutboxMessage.to(topic).key("bulk-acc").payload("small").build());
      small.commit();
      bulkCommit.get(60, TimeUnit.SECONDS);
      thread.shutdown();
    }
    try (HikariDataSource pool = db.newDataSource(3);
        OutboxRelay relay = relay(pool, broker).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      reader.pollUntil(WAIT, "all published", r -> r.distinctIds().size() >= bulkKeys + 2);
      List<String> accountPayloads = new ArrayList<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        if ("bulk-acc".equals(text(record.key()))) {
          accountPayloads.add(text(record.value()));
        }
      }
      assertEquals(List.of("small", "bulk"), accountPayloads.subList(0, 2),
          "the small transaction committed first");
    }
  }

  @Test
  void concurrentTransactionsOnSharedKeysArePublishedPerKeyInCommitOrder() throws Exception {
    String topic = KafkaBroker.uniqueTopic("commit-order-many");
    broker.createTopic(topic, 3);
    List<String> accounts = List.of("a", "b", "c");
    for (String account : accounts) {
      db.execute("INSERT INTO account VALUES ('" + account + "', 0)");
    }
    int writers = 6;
    int transactionsPerWriter = 30;
    try (HikariDataSource writerPool = db.newDataSource(writers);
        HikariDataSource relayPool = db.newDataSource(3);
        OutboxRelay relay = relay(relayPool, broker).batchSize(10).build();
        TopicReader reader = new TopicReader(broker, topic)) {
      relay.start();
      ExecutorService pool = Executors.newFixedThreadPool(writers);
      List<Future<?>> done = new ArrayList<>();
      for (int w = 0; w < writers; w++) {
        int writer = w;
        done.add(pool.submit(() -> {
          Random random = new Random(writer);
          for (int t = 0; t < transactionsPerWriter; t++) {
            String account = accounts.get(random.nextInt(accounts.size()));
            String tag = "w" + writer + "-t" + t;
            try (Connection connection = writerPool.getConnection()) {
              connection.setAutoCommit(false);
              // The JPA pattern: the outbox row first, the business row lock at flush.
              WRITER.send(connection, OutboxMessage.to(topic).key(account).payload(tag).build());
              Thread.sleep(random.nextInt(5));
              long version = lockAccount(connection, account);
              try (PreparedStatement log = connection.prepareStatement(
                  "INSERT INTO commit_log VALUES (?, ?, ?)")) {
                log.setString(1, tag);
                log.setString(2, account);
                log.setLong(3, version);
                log.executeUpdate();
              }
              connection.commit();
            }
          }
          return null;
        }));
      }
      for (Future<?> future : done) {
        future.get(120, TimeUnit.SECONDS);
      }
      pool.shutdown();
      int total = writers * transactionsPerWriter;
      reader.pollUntil(WAIT, "every row published", r -> r.distinctIds().size() >= total);

      Map<String, Long> versionOfTag = new HashMap<>();
      try (Connection connection = db.connect();
          PreparedStatement query = connection.prepareStatement("SELECT tag, version FROM commit_log");
          ResultSet rows = query.executeQuery()) {
        while (rows.next()) {
          versionOfTag.put(rows.getString(1), rows.getLong(2));
        }
      }
      Map<String, Long> lastVersion = new HashMap<>();
      List<String> seen = new ArrayList<>();
      for (ConsumerRecord<byte[], byte[]> record : reader.records()) {
        String tag = text(record.value());
        if (seen.contains(tag)) {
          continue; // a resend: the inbox keeps the first copy only
        }
        seen.add(tag);
        String account = text(record.key());
        long version = versionOfTag.get(tag);
        Long previous = lastVersion.put(account, version);
        assertTrue(previous == null || previous < version, "account " + account + ": tag " + tag
            + " committed as version " + version + " but published after version " + previous);
      }
      assertEquals(total, seen.size());
    }
  }

  @Test
  void transactionsSendingTheSameKeysInOppositeOrdersNeverDeadlock() throws Exception {
    String topic = KafkaBroker.uniqueTopic("commit-order-deadlock");
    broker.createTopic(topic, 1);
    try (HikariDataSource writerPool = db.newDataSource(2)) {
      for (int round = 0; round < 20; round++) {
        CountDownLatch bothSent = new CountDownLatch(2);
        ExecutorService pool = Executors.newFixedThreadPool(2);
        List<Future<?>> done = new ArrayList<>();
        for (List<String> keys : List.of(List.of("x", "y"), List.of("y", "x"))) {
          done.add(pool.submit(() -> {
            try (Connection connection = writerPool.getConnection()) {
              connection.setAutoCommit(false);
              for (String key : keys) {
                WRITER.send(connection, OutboxMessage.to(topic).key(key).payload(key).build());
              }
              bothSent.countDown();
              bothSent.await(10, TimeUnit.SECONDS);
              connection.commit(); // both commit at once, keys in opposite orders
            }
            return null;
          }));
        }
        for (Future<?> future : done) {
          future.get(30, TimeUnit.SECONDS); // a deadlock (40P01) would surface here
        }
        pool.shutdown();
      }
    }
    assertEquals(80L, db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE topic = ?", topic));
  }

  private static long lockAccount(Connection connection, String account) throws Exception {
    try (PreparedStatement update = connection.prepareStatement(
        "UPDATE account SET version = version + 1 WHERE id = ? RETURNING version")) {
      update.setString(1, account);
      try (ResultSet rows = update.executeQuery()) {
        rows.next();
        return rows.getLong(1);
      }
    }
  }
}
