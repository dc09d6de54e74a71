package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.asStrings;
import static org.txkafka.it.outbox.OutboxFixtures.assertAllPresent;
import static org.txkafka.it.outbox.OutboxFixtures.assertPerKeyOrderAfterDedup;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;

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
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The relay runs in a child JVM that is killed with SIGKILL at random moments while thousands of
 * messages are written; after the last restart every message reached Kafka at least once, and a
 * receiver that removes duplicates by message id sees every key in order.
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
  }

  @AfterAll
  static void tearDown() {
    db.close();
  }

  @Test
  void relayKilledAtRandomMomentsStillPublishesEveryCommittedMessageAtLeastOnceInKeyOrder()
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
          // Kill it while it publishes: once it has finished a batch, at a random later moment.
          relay.awaitLine("EVENT", WAIT);
          relay.awaitLine(" END ", WAIT);
          OutboxFixtures.sleep(random.nextInt(1000));
          relay.kill();
          kills++;
          System.out.printf(
              "crash: round %d killed after %d batches, %d rows pending%n",
              round, relay.output().split(" END ", -1).length - 1, pendingRows(db));
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
        assertTrue(
            relay.output().contains("org.txkafka.outbox.internal.JdbcOutboxRelay"),
            "class loading is logged");
        assertFalse(
            relay.output().contains("io.micrometer"),
            "a relay without a meter registry loads no Micrometer class (it is optional)");
        System.out.printf(
            "crash: seed %d, %d messages, %d SIGKILLs, %d rows pending after the last kill, %d"
                + " duplicate copies in Kafka%n",
            seed, expected.size(), kills, pendingAfterKills, duplicates);
        assertTrue(expected.size() >= MESSAGES);
      }
    }
  }
}
