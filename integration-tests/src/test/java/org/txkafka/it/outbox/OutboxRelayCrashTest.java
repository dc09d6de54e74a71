package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertAllPresent;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;

import java.sql.PreparedStatement;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The relay runs in a child JVM that is killed with SIGKILL at random moments while thousands of
 * messages are written; after the last restart every message reached Kafka at least once, a receiver
 * that removes duplicates by message id sees every key in order, and a downstream txkafka inbox
 * applies every message exactly once, each key in order.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class OutboxRelayCrashTest {
  private static final Duration WAIT = Duration.ofSeconds(90);
  private static final int MESSAGES = 4_000;
  private static final int KILLS = 4;

  private static TestDatabase db;
  private static KafkaBroker broker;

  @BeforeAll
  static void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    broker = KafkaBroker.shared();
    // The downstream service's effects. No unique constraint: a message applied twice would show
    // as two rows instead of an error.
    db.execute(
        "CREATE TABLE crash_applied (applied BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            + " message_id TEXT NOT NULL, record_key TEXT NOT NULL, seq INT NOT NULL)");
    // Widen the window between Kafka's acknowledgement and the removal of the rows, where a kill
    // leaves published rows behind: deletes take 50 ms, and the server abandons (rolls back) a
    // statement whose client died.
    db.execute(
        "CREATE FUNCTION slow_outbox_delete() RETURNS trigger LANGUAGE plpgsql AS"
            + " $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$",
        "CREATE TRIGGER slow_outbox_delete BEFORE DELETE ON txkafka_outbox"
            + " FOR EACH STATEMENT EXECUTE FUNCTION slow_outbox_delete()",
        "ALTER DATABASE \"" + db.name() + "\" SET client_connection_check_interval = '10ms'");
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  private static int count(String text, String part) {
    return text.split(part, -1).length - 1;
  }

  private static Inbox downstreamInbox(String topic) {
    return Inbox.builder()
        .kafkaProperty(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, broker.bootstrapServers())
        .kafkaProperty(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest")
        .groupId("crash-downstream-" + topic)
        .topics(topic)
        .dataSource(db.dataSource())
        .concurrency(2)
        .handler(
            (record, context) -> {
              String[] keyAndSeq = record.valueAsString().split("\\|");
              try (PreparedStatement insert =
                  context
                      .connection()
                      .prepareStatement(
                          "INSERT INTO crash_applied (message_id, record_key, seq)"
                              + " VALUES (?, ?, ?)")) {
                insert.setString(1, record.header(Outbox.MESSAGE_ID_HEADER));
                insert.setString(2, keyAndSeq[0]);
                insert.setInt(3, Integer.parseInt(keyAndSeq[1]));
                insert.executeUpdate();
              }
            })
        .build();
  }

  @Test
  void relayKilledAtRandomMomentsPublishesEveryMessageAtLeastOnceAndTheInboxAppliesEachOnceInOrder()
      throws Exception {
    String topic = KafkaBroker.uniqueTopic("crash");
    broker.createTopic(topic, 3);
    Random random = new Random();
    long seed = random.nextLong();
    random.setSeed(seed);
    List<UUID> written = Collections.synchronizedList(new ArrayList<>());
    ExecutorService writers = Executors.newSingleThreadExecutor();
    Future<?> writing =
        writers.submit(
            () -> {
              Random keys = new Random(seed);
              int[] seq = new int[50];
              while (written.size() < MESSAGES) {
                List<OutboxMessage> batch = new ArrayList<>();
                for (int r = 0, n = 1 + keys.nextInt(10); r < n; r++) {
                  int key = keys.nextInt(seq.length);
                  batch.add(numbered(topic, "key-" + key, seq[key]++));
                }
                written.addAll(commit(db.dataSource(), batch));
                OutboxFixtures.sleep(10);
              }
              return null;
            });

    int kills = 0;
    try (TopicReader reader = new TopicReader(broker, topic)) {
      for (int round = 0; round < KILLS; round++) {
        try (ChildJvm relay = OutboxFixtures.startRelayProcess(db, broker, "crash-" + round, 100)) {
          // Kill it while it publishes: once it has finished a batch and some random time later,
          // a few milliseconds after a new batch began (sending, awaiting acks, or deleting).
          relay.awaitLine(" END ", WAIT);
          OutboxFixtures.sleep(random.nextInt(700));
          int begun = count(relay.output(), " BEGIN ");
          await(WAIT, "another batch", () -> count(relay.output(), " BEGIN ") > begun);
          OutboxFixtures.sleep(random.nextInt(80));
          relay.kill();
          kills++;
          System.out.printf(
              "crash: round %d killed after %d batches, %d rows pending%n",
              round, count(relay.output(), " END "), pendingRows(db));
        }
      }
      writing.get(WAIT.toSeconds(), TimeUnit.SECONDS);
      writers.shutdown();
      long pendingAfterKills = pendingRows(db);

      try (ChildJvm relay =
          OutboxFixtures.startRelayProcess(
              db, broker, "crash-final", 100, "-Xlog:class+load=info:stdout")) {
        relay.awaitLine("READY", WAIT);
        Set<String> expected = asStrings(written);
        reader.awaitIds(WAIT, expected);
        await(WAIT, "outbox emptied", () -> pendingRows(db) == 0);
        assertAllPresent(expected, reader.distinctIds());
        int duplicates = assertPerKeyOrderAfterDedup(reader.records());
        relay.terminate();

        // A downstream inbox applies every message exactly once, each key in order, although
        // the relay's crashes left duplicates in the topic.
        try (Inbox inbox = downstreamInbox(topic)) {
          inbox.start();
          await(
              WAIT,
              () -> "inbox applied " + db.queryLong("SELECT count(*) FROM crash_applied"),
              () -> db.queryLong("SELECT count(DISTINCT message_id) FROM crash_applied")
                  >= expected.size());
          // Every record of the topic, duplicates included, was read: a wrong second
          // application would have landed by now.
          long records = broker.endOffsetSum(topic);
          await(
              WAIT,
              "the inbox to store offsets at the topic's end (" + records + " records)",
              () -> db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset"
                          + " WHERE consumer_group = ?",
                      "crash-downstream-" + topic)
                  == records);
        }
        assertEquals(expected.size(), db.queryLong("SELECT count(*) FROM crash_applied"),
            "each message applied exactly once");
        assertEquals(
            0L,
            db.queryLong(
                "SELECT count(*) FROM (SELECT seq < lag(seq) OVER (PARTITION BY record_key"
                    + " ORDER BY applied) AS backwards FROM crash_applied) a WHERE backwards"),
            "every key applied in order");
        assertTrue(
            relay.output().contains("org.txkafka.outbox.internal.JdbcOutboxRelay"),
            "class loading is logged");
        assertFalse(
            relay.output().contains("io.micrometer"),
            "a relay without a meter registry loads no Micrometer class (it is optional)");
        System.out.printf(
            "crash: seed %d, %d messages, %d SIGKILLs, %d rows pending after the last kill, %d"
                + " duplicate copies in Kafka, each applied once by the inbox%n",
            seed, expected.size(), kills, pendingAfterKills, duplicates);
        assertTrue(expected.size() >= MESSAGES);
      }
    }
  }
}
