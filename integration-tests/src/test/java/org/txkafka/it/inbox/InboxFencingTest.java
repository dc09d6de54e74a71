package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxListener;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.testkit.ChildJvm;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * A member frozen (SIGSTOP, like a long GC pause) in the middle of a batch, past its session
 * timeout, while another member takes its partition: after it wakes up it commits nothing for the
 * partition any more, no record is applied twice, and the stored offset never moves backwards.
 */
@Timeout(value = 4, unit = TimeUnit.MINUTES)
class InboxFencingTest {
  private TestDatabase db;

  @BeforeEach // a database per test: each counts the same tables
  void setUp() {
    db = TestPostgres.shared().createDatabase().migrate();
    InboxTestSupport.createLedger(db);
    // An audit of every change of a stored offset, to catch a regression or a stale-epoch write.
    db.execute(
        "CREATE TABLE offset_audit (id BIGSERIAL PRIMARY KEY, kafka_partition INT,"
            + " old_offset BIGINT, new_offset BIGINT, old_epoch BIGINT, new_epoch BIGINT,"
            + " owner_id TEXT)",
        "CREATE FUNCTION audit_offset() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            + " INSERT INTO offset_audit (kafka_partition, old_offset, new_offset, old_epoch,"
            + " new_epoch, owner_id) VALUES (NEW.kafka_partition, OLD.next_offset,"
            + " NEW.next_offset, OLD.owner_epoch, NEW.owner_epoch, NEW.owner_id);"
            + " RETURN NEW; END $$",
        "CREATE TRIGGER audit_offset AFTER UPDATE ON txkafka_inbox_offset"
            + " FOR EACH ROW EXECUTE FUNCTION audit_offset()");
  }

  @AfterEach
  void tearDown() {
    db.close();
  }

  @Test
  void memberStalledPastSessionTimeoutCannotCommitAfterAnotherMemberTookItsPartition()
      throws Exception {
    stalledMemberIsFenced("classic");
  }

  /**
   * The same on Kafka's consumer group protocol (KIP-848): the broker expires the stalled member's
   * session (6 s on the test broker) and gives its partition to the successor; woken, the zombie
   * is told its member epoch is fenced and loses its partitions, but its batch in flight must
   * still fail in the database.
   */
  @Test
  void memberStalledPastSessionTimeoutOnTheConsumerGroupProtocolCannotCommitAfterATakeover()
      throws Exception {
    stalledMemberIsFenced("consumer");
  }

  private void stalledMemberIsFenced(String groupProtocol) throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-fencing-" + groupProtocol);
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("fence-", 400);
    InboxTestSupport.produce(broker, topic, messages);
    String group = "fencing-" + topic;
    String stallId = "fence-120";
    CountDownLatch takenOver = new CountDownLatch(1);
    InboxListener listener =
        new InboxListener() {
          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> partitions) {
            takenOver.countDown();
          }
        };
    try (ChildJvm zombie =
            InboxMemberMain.builder(db, broker, topic, group, "zombie")
                .systemProperty("groupProtocol", groupProtocol)
                .systemProperty("stallMessageId", stallId)
                .systemProperty("stallMillis", "3000")
                .systemProperty("maxBatchSize", "20")
                .start();
        HikariDataSource dataSource = db.newDataSource(3)) {
      zombie.awaitLine("STALL " + stallId, Duration.ofSeconds(60));
      zombie.suspend();
      long zombieAppliedBeforeTakeover =
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'zombie'");
      Map<String, Object> properties = InboxTestSupport.consumerProperties(broker, groupProtocol);
      try (Inbox successor =
          Inbox.builder()
              .kafkaProperties(properties)
              .groupId(group)
              .topics(topic)
              .dataSource(dataSource)
              .handler(InboxTestSupport.ledgerHandler("successor"))
              .maxBatchSize(20)
              .listener(listener)
              .build()) {
        successor.start();
        // The zombie's session expires (6 s) and the successor gets its partition.
        assertTrue(takenOver.await(60, TimeUnit.SECONDS), "the successor got the partition");
        zombie.resume();
        await(
            "every record to be applied",
            Duration.ofSeconds(90),
            () -> db.queryLong("SELECT count(DISTINCT message_id) FROM ledger") == messages.size());
        await(
            "the stored offset to reach the end",
            Duration.ofSeconds(30),
            () ->
                InboxTestSupport.storedOffsetSum(db, group)
                    == messages.size());
        // Give the woken zombie time to try (and fail) to commit more.
        Thread.sleep(3000);
        assertEquals(messages.size(), db.queryLong("SELECT count(*) FROM ledger"), "no doubles");
        assertEquals(
            InboxTestSupport.sum(messages), db.queryLong("SELECT sum(amount) FROM ledger"));
        long zombieMax =
            db.queryLong("SELECT max(kafka_offset) FROM ledger WHERE applied_by = 'zombie'");
        long successorMin =
            db.queryLong("SELECT min(kafka_offset) FROM ledger WHERE applied_by = 'successor'");
        assertTrue(
            zombieMax < successorMin,
            "the zombie applied nothing after the successor's start: zombie max offset "
                + zombieMax
                + ", successor min offset "
                + successorMin);
        assertTrue(
            db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'zombie'")
                >= zombieAppliedBeforeTakeover,
            "the zombie's work before the takeover is kept");
        assertEquals(
            0,
            db.queryLong("SELECT count(*) FROM offset_audit WHERE new_offset < old_offset"),
            "the stored offset never moved backwards");
        assertEquals(
            0,
            db.queryLong("SELECT count(*) FROM offset_audit WHERE new_epoch < old_epoch"),
            "the owner epoch never moved backwards");
        assertTrue(
            db.queryLong("SELECT max(new_epoch) FROM offset_audit") >= 2,
            "the successor claimed a new epoch");
        System.out.println(
            "zombie output after resume:\n"
                + zombie
                    .output()
                    .lines()
                    .filter(
                        line ->
                            line.contains("FENCED")
                                || line.contains("LOST")
                                || line.contains("STALL")
                                || line.contains("fenced"))
                    .reduce("", (a, b) -> a + b + "\n"));
      }
    }
  }
}
