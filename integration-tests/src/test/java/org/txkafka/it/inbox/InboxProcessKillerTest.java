package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
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
 * A record whose handler ends the process every time it meets it (as a native crash or a
 * container's out-of-memory kill would; here {@code Runtime.halt} after writing its business row)
 * must not make the group crash-loop for ever: it is dead-lettered after {@code maxAttempts} starts,
 * and every other record is applied exactly once.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class InboxProcessKillerTest {
  private static final int MAX_ATTEMPTS = 3;
  private static final int MESSAGES = 300;
  private static final int KILLER_INDEX = 120;
  private static final int MAX_LIVES = 10;

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
  void recordThatKillsTheProcessEveryTimeIsDeadLetteredAfterMaxAttemptsStarts() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-killer");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("killer-", MESSAGES);
    String killer = messages.get(KILLER_INDEX).messageId();
    InboxTestSupport.produce(broker, topic, messages);
    String group = "killer-" + topic;

    int deaths = 0;
    boolean finished = false;
    List<String> lives = new ArrayList<>();
    for (int life = 1; life <= MAX_LIVES && !finished; life++) {
      try (ChildJvm member = start(broker, topic, group, killer)) {
        member.awaitLine("READY", Duration.ofSeconds(60));
        long deadline = System.nanoTime() + Duration.ofSeconds(90).toNanos();
        while (true) {
          if (!member.isAlive()) {
            assertTrue(
                member.output().contains("HALT " + killer),
                "the member died on the killer record, not otherwise:\n" + member.output());
            deaths++;
            lives.add("life " + life + ": halted");
            break;
          }
          if (storedOffset(topic) == MESSAGES) {
            finished = true;
            lives.add("life " + life + ": finished");
            member.kill();
            break;
          }
          assertTrue(
              System.nanoTime() < deadline,
              "life " + life + " neither died nor finished:\n" + member.output());
          Thread.sleep(100);
        }
      }
    }
    System.out.println("lives: " + lives);
    assertTrue(finished, "the partition got past the killer record within " + MAX_LIVES + " lives");
    // The first death is in a batch (marked before it ran); each following life applies the lost
    // batch one record at a time and dies on the killer's start mark number 1, 2 .. maxAttempts;
    // the next one finds maxAttempts earlier starts and dead-letters it.
    assertEquals(MAX_ATTEMPTS + 1, deaths, "deaths (" + lives + ")");

    assertEquals(
        1,
        db.queryLong(
            "SELECT count(*) FROM txkafka_inbox_dead_letter WHERE message_id = ? AND attempts = ?"
                + " AND last_error LIKE 'started " + MAX_ATTEMPTS + " times without completing%'",
            killer,
            MAX_ATTEMPTS),
        "the killer record is dead-lettered with its starts as the reason");
    assertEquals(
        1,
        db.queryLong(
            "SELECT count(*) FROM txkafka_inbox WHERE message_id = ? AND status = 'DEAD_LETTERED'",
            killer));
    assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", killer),
        "the killer's business row never committed");
    assertEquals(MESSAGES - 1, db.queryLong("SELECT count(*) FROM ledger"), "ledger rows");
    assertEquals(
        MESSAGES - 1,
        db.queryLong("SELECT count(DISTINCT message_id) FROM ledger"),
        "each other record applied once");
    assertEquals(
        InboxTestSupport.sum(messages) - messages.get(KILLER_INDEX).amount(),
        db.queryLong("SELECT sum(amount) FROM ledger"));
  }

  private static long storedOffset(String topic) {
    return db.queryLong(
        "SELECT coalesce(max(next_offset), 0) FROM txkafka_inbox_offset WHERE topic = ?", topic);
  }

  private static ChildJvm start(KafkaBroker broker, String topic, String group, String killer) {
    return ChildJvm.builder(InboxMemberMain.class)
        .systemProperty("bootstrap", broker.bootstrapServers())
        .systemProperty("jdbcUrl", db.jdbcUrl())
        .systemProperty("jdbcUser", db.user())
        .systemProperty("jdbcPassword", db.password() == null ? "" : db.password())
        .systemProperty("topic", topic)
        .systemProperty("group", group)
        .systemProperty("label", "killer")
        .systemProperty("instanceId", "killer-member")
        .systemProperty("maxBatchSize", "40")
        .systemProperty("maxAttempts", String.valueOf(MAX_ATTEMPTS))
        .systemProperty("haltMessageId", killer)
        .maxHeap("192m")
        .start();
  }
}
