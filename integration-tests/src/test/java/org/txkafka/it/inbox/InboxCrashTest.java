package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The consumer JVM is killed with SIGKILL at random moments while thousands of records flow; after
 * the last restart every record's business effect is present exactly once.
 */
@Timeout(value = 5, unit = TimeUnit.MINUTES)
class InboxCrashTest {
  private static final int KILLS = 6;
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

  @Test
  void consumerKilledAtRandomMomentsAppliesEveryRecordExactlyOnce() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-crash");
    broker.createTopic(topic, 4);
    List<Message> unique = InboxTestSupport.messages("crash-", 5000);
    List<Message> all = new ArrayList<>(unique);
    // Resends of earlier ids (as an outbox relay does after its own crash): applied once.
    for (int i = 0; i < 300; i++) {
      Message message = unique.get(i * 7);
      all.add(i * 16, message);
    }
    String group = "crash-" + topic;
    Random random = new Random();
    // All records up front; a member applies at most about 500 per second (4 ms each, 2 workers),
    // so the backlog outlasts the six lives below (each killed at most ~1.7 s after its first
    // commit) and every kill lands while records are being applied.
    InboxTestSupport.produce(broker, topic, all);
    List<Long> appliedAtKill = new ArrayList<>();
    long applied = 0;
    for (int kill = 0; kill < KILLS; kill++) {
      try (ChildJvm member = start(broker, topic, group)) {
        member.awaitLine("READY", Duration.ofSeconds(60));
        // Kill it while it is applying records: after it made progress, at a random moment.
        long before = applied;
        try {
          await(
              "the restarted member to apply records",
              Duration.ofSeconds(90),
              () -> db.queryLong("SELECT count(*) FROM ledger") > before);
        } catch (AssertionError e) {
          System.out.println("member output:\n" + member.output());
          throw e;
        }
        Thread.sleep(random.nextInt(1500));
        member.kill();
        applied = db.queryLong("SELECT count(*) FROM ledger");
        appliedAtKill.add(applied);
      }
    }
    try (ChildJvm member = start(broker, topic, group)) {
      member.awaitLine("READY", Duration.ofSeconds(60));
      await(
          "every record to be applied after the last restart",
          Duration.ofSeconds(150),
          () ->
              db.queryLong(
                      "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic ="
                          + " ?",
                      topic)
                  == all.size());
      member.kill();
    }
    System.out.println("ledger rows at each SIGKILL: " + appliedAtKill);
    // The scenario really happened: kills landed while records were still being applied (how many
    // depends on the machine's speed; the last one may come after the backlog is drained).
    assertTrue(
        appliedAtKill.stream().filter(rows -> rows < unique.size()).count() >= KILLS - 1,
        "at least " + (KILLS - 1) + " kills hit the consumer mid-run: " + appliedAtKill);
    assertEquals(unique.size(), db.queryLong("SELECT count(*) FROM ledger"), "ledger rows");
    assertEquals(
        unique.size(), db.queryLong("SELECT count(DISTINCT message_id) FROM ledger"), "ids");
    assertEquals(InboxTestSupport.sum(unique), db.queryLong("SELECT sum(amount) FROM ledger"));
    assertEquals(unique.size(), db.queryLong("SELECT count(*) FROM txkafka_inbox"));
    assertTrue(
        db.queryLong("SELECT min(owner_epoch) FROM txkafka_inbox_offset WHERE topic = ?", topic)
            > 1,
        "every partition was claimed again after a crash");
  }

  private static ChildJvm start(KafkaBroker broker, String topic, String group) {
    return InboxMemberMain.builder(db, broker, topic, group, "crash")
        .systemProperty("instanceId", "crash-member")
        .systemProperty("maxBatchSize", "40")
        .systemProperty("handlerDelayMillis", "4")
        .start();
  }
}
