package org.txkafka.it.inbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.inbox.InboxTestSupport.await;

import com.zaxxer.hikari.HikariDataSource;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.txkafka.inbox.DeadLetter;
import org.txkafka.inbox.DeadLetterReplayException;
import org.txkafka.inbox.Inbox;
import org.txkafka.inbox.InboxBuilder;
import org.txkafka.inbox.InboxHandler;
import org.txkafka.it.inbox.InboxTestSupport.Message;
import org.txkafka.outbox.Outbox;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/** A record that always fails is dead-lettered, the rest of its partition proceeds. */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class InboxPoisonTest {
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
  void alwaysFailingRecordIsDeadLetteredAfterMaxAttemptsAndReplayWorksAfterTheFix() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-poison");
    String deadLetterTopic = topic + ".dlt";
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("poison-", 60);
    InboxTestSupport.produce(broker, topic, messages);
    String poisonId = "poison-17";
    AtomicBoolean fixed = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("poison");
    InboxHandler handler =
        (record, context) -> {
          // The business write happens first: the rollback must undo it.
          ledger.handle(record, context);
          if (record.messageId().equals(poisonId) && !fixed.get()) {
            throw new IllegalStateException("cannot apply " + poisonId);
          }
        };
    String group = "poison-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxBatchSize(25)
                .maxAttempts(3)
                .retryBackoff(Duration.ofMillis(20))
                .deadLetterTopic(deadLetterTopic)
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(90),
          () ->
              InboxTestSupport.storedOffsetSum(db, group)
                  == messages.size());
      assertEquals(
          messages.size() - 1,
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'poison'"));
      assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poisonId));
      assertEquals(
          InboxTestSupport.sum(messages) - 18,
          db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'poison'"));

      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size(), "dead letters");
      DeadLetter deadLetter = deadLetters.get(0);
      assertEquals(poisonId, deadLetter.record().messageId());
      assertEquals(3, deadLetter.attempts(), "attempts before dead-lettering");
      assertTrue(
          deadLetter.lastError().contains("cannot apply " + poisonId), deadLetter.lastError());
      assertEquals("18", deadLetter.record().valueAsString(), "stored payload");
      assertEquals(poisonId, deadLetter.record().header(Outbox.MESSAGE_ID_HEADER));
      assertEquals(
          1,
          db.queryLong(
              "SELECT count(*) FROM txkafka_inbox WHERE message_id = ? AND status ="
                  + " 'DEAD_LETTERED' AND attempts = 3",
              poisonId));
      assertEquals(
          1,
          db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE topic = ?", deadLetterTopic),
          "dead letter forwarded through the outbox");

      DeadLetterReplayException stillFailing =
          assertThrows(DeadLetterReplayException.class, inbox::replayAll);
      assertEquals(deadLetter.id(), stillFailing.deadLetterId());
      assertEquals(1, inbox.deadLetters(10).size(), "a failed replay leaves it pending");
      assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poisonId));

      fixed.set(true);
      assertEquals(1, inbox.replayAll(), "replayed after the fix");
      assertEquals(1, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", poisonId));
      assertEquals(0, inbox.deadLetters(10).size(), "nothing pending after replay");
      assertEquals(
          false, inbox.replay(deadLetter.id()), "a replayed dead letter is not replayed again");
      assertEquals(
          1,
          db.queryLong(
              "SELECT count(*) FROM txkafka_inbox WHERE message_id = ? AND status = 'REPLAYED'",
              poisonId));
      assertEquals(
          1,
          db.queryLong(
              "SELECT count(*) FROM txkafka_inbox_dead_letter WHERE replayed_at IS NOT NULL"
                  + " AND consumer_group = ?",
              group));
      assertEquals(
          InboxTestSupport.sum(messages),
          db.queryLong("SELECT sum(amount) FROM ledger WHERE applied_by = 'poison'"));
    }
  }

  /**
   * A Kafka header key may hold a NUL character, which PostgreSQL's text cannot: the dead letter
   * (its header names are text) and its copy for the dead-letter topic (an outbox row) are stored
   * with U+FFFD in its place. A key may also be empty, which the outbox refuses as a header name:
   * the dead letter keeps it, the copy for the dead-letter topic carries it under
   * txkafka-dlt-blank-header-name. Before, storing them failed on every try, for good: the poison
   * record blocked its partition and the records after it were never applied.
   */
  @Test
  void poisonRecordWithANulOrBlankHeaderKeyIsDeadLetteredAndTheRecordsAfterItApplied() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-nul-header");
    String deadLetterTopic = topic + ".dlt";
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("nul-", 6);
    try (KafkaProducer<byte[], byte[]> producer = InboxTestSupport.producer(broker)) {
      for (int i = 0; i < messages.size(); i++) {
        ProducerRecord<byte[], byte[]> record = InboxTestSupport.record(topic, messages.get(i));
        if (i == 0) {
          record.headers().add("trace\u0000id", InboxTestSupport.bytes("t-1"));
          record.headers().add("", InboxTestSupport.bytes("no-name"));
        }
        producer.send(record).get(30, TimeUnit.SECONDS);
      }
    } catch (Exception e) {
      throw new AssertionError(e);
    }
    String poisonId = messages.get(0).messageId();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("nul");
    InboxHandler handler =
        (record, context) -> {
          if (record.messageId().equals(poisonId)) {
            throw new IllegalStateException("cannot apply\u0000 " + poisonId);
          }
          ledger.handle(record, context);
        };
    String group = "nul-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(2)
                .retryBackoff(Duration.ofMillis(20))
                .deadLetterTopic(deadLetterTopic)
                .build()) {
      inbox.start();
      await("the partition to move past every record", Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      assertEquals(messages.size() - 1,
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'nul'"), "the others applied");
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertEquals(poisonId, deadLetters.get(0).record().messageId());
      assertEquals("t-1", deadLetters.get(0).record().header("trace\uFFFDid"), "stored header");
      assertEquals("no-name", deadLetters.get(0).record().header(""), "stored blank header");
      assertTrue(deadLetters.get(0).lastError().contains("cannot apply? " + poisonId),
          deadLetters.get(0).lastError());
      assertEquals(1, db.queryLong(
          "SELECT count(*) FROM txkafka_outbox WHERE topic = ? AND 'trace' || chr(65533) || 'id' ="
              + " ANY(header_names)", deadLetterTopic),
          "forwarded to the dead-letter topic with the header kept");
      assertEquals(1, db.queryLong(
          "SELECT count(*) FROM txkafka_outbox WHERE topic = ?"
              + " AND 'txkafka-dlt-blank-header-name' = ANY(header_names)", deadLetterTopic),
          "the blank header forwarded under a name of its own");
    }
  }

  /**
   * A replay's handler that ends the replay's transaction itself. COMMIT sent as SQL after its
   * business write, then a failure: PostgreSQL refuses that commit (TXK01, migration 1.0.8), the
   * dead letter stays pending with nothing applied, and the replay after the fix applies it once.
   * Before, the write was committed and the dead letter stayed pending: applied twice in the end.
   * ROLLBACK sent as SQL, then a normal return: the replay fails and the dead letter stays pending.
   * Before, the mark committed in a new transaction without the effects rolled back: lost.
   */
  @Test
  void replayWhoseHandlerEndsTheTransactionItselfLeavesTheDeadLetterPendingAndAppliesItOnce() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-replay-seal");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("replay-seal-", 4);
    InboxTestSupport.produce(broker, topic, messages);
    String committing = messages.get(1).messageId();
    String rollingBack = messages.get(2).messageId();
    java.util.concurrent.atomic.AtomicReference<String> mode =
        new java.util.concurrent.atomic.AtomicReference<>("fail");
    InboxHandler ledger = InboxTestSupport.ledgerHandler("replay-seal");
    InboxHandler handler =
        (record, context) -> {
          boolean poison =
              record.messageId().equals(committing) || record.messageId().equals(rollingBack);
          ledger.handle(record, context);
          if (!poison || mode.get().equals("ok")) {
            return;
          }
          if (mode.get().equals("commit-then-fail")) {
            context.connection().createStatement().execute("COMMIT");
            throw new IllegalStateException("failed after committing");
          }
          if (mode.get().equals("rollback-and-return")) {
            context.connection().createStatement().execute("ROLLBACK");
            return;
          }
          throw new IllegalStateException("cannot apply " + record.messageId());
        };
    String group = "replay-seal-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .retryBackoff(Duration.ofMillis(20))
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      Map<String, Long> ids = new java.util.HashMap<>();
      for (DeadLetter deadLetter : inbox.deadLetters(10)) {
        ids.put(deadLetter.record().messageId(), deadLetter.id());
      }
      assertEquals(java.util.Set.of(committing, rollingBack), ids.keySet(), "dead letters");

      mode.set("commit-then-fail");
      DeadLetterReplayException refused =
          assertThrows(DeadLetterReplayException.class, () -> inbox.replay(ids.get(committing)));
      assertTrue(
          String.valueOf(refused.getCause()).contains("TXK01")
              || String.valueOf(refused.getMessage()).contains("sealed"),
          "refused at the handler's commit: " + refused.getMessage());
      assertEquals(0, ledgerRows(committing), "nothing of the refused replay committed");
      mode.set("rollback-and-return");
      assertThrows(DeadLetterReplayException.class, () -> inbox.replay(ids.get(rollingBack)));
      assertEquals(2, inbox.deadLetters(10).size(), "both stay pending");

      mode.set("ok");
      assertEquals(2, inbox.replayAll(), "replayed after the fix");
      assertEquals(1, ledgerRows(committing), "applied once");
      assertEquals(1, ledgerRows(rollingBack), "applied once");
      assertEquals(0, inbox.deadLetters(10).size(), "nothing pending after replay");
      assertEquals(
          messages.size(),
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'replay-seal'"));
    }
  }

  private static long ledgerRows(String messageId) {
    return db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", messageId);
  }

  @Test
  void malformedMessageIdsAreDeadLetteredWithTheirReasonAndTheOthersApplied() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-malformed");
    broker.createTopic(topic, 1);
    List<ProducerRecord<byte[], byte[]>> records = new ArrayList<>();
    records.add(withId(topic, "good-1", InboxTestSupport.bytes("good-1")));
    records.add(withId(topic, "empty", new byte[0]));
    records.add(withId(topic, "bad-utf8", new byte[] {(byte) 0xC3, (byte) 0x28}));
    records.add(withId(topic, "too-long", InboxTestSupport.bytes("x".repeat(256))));
    records.add(withId(topic, "good-2", InboxTestSupport.bytes("good-2")));
    try (KafkaProducer<byte[], byte[]> producer = InboxTestSupport.producer(broker)) {
      records.forEach(producer::send);
      producer.flush();
    }
    String group = "malformed-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(2);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(
                    (record, context) ->
                        context
                            .connection()
                            .createStatement()
                            .execute(
                                "INSERT INTO ledger VALUES ('"
                                    + record.messageId()
                                    + "', 't', 0, 0, 1, '"
                                    + record.keyAsString()
                                    + "')"))
                .build()) {
      inbox.start();
      await(
          "every record to be consumed",
          Duration.ofSeconds(60),
          () ->
              InboxTestSupport.storedOffsetSum(db, group)
                  == records.size());
      assertEquals(2, db.queryLong("SELECT count(*) FROM ledger WHERE applied_by LIKE 'good-%'"));
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(3, deadLetters.size());
      assertReason(deadLetters.get(0), "empty", "empty");
      assertReason(deadLetters.get(1), "bad-utf8", "not valid UTF-8");
      assertReason(deadLetters.get(2), "too-long", "256 characters");
    }
  }

  @Test
  void handlerThatSwallowsAnSqlErrorCannotCommitItsBatchHalfAppliedOrSkipped() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-swallow");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("swallow-", 80);
    InboxTestSupport.produce(broker, topic, messages);
    String sloppyId = "swallow-33";
    InboxHandler ledger = InboxTestSupport.ledgerHandler("swallow");
    InboxHandler sloppy =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals(sloppyId)) {
            try (var statement = context.connection().createStatement()) {
              statement.execute("SELECT 1 / 0");
            } catch (java.sql.SQLException ignored) {
              // The mistake under test: the error is swallowed, PostgreSQL's transaction is dead.
            }
          }
        };
    String group = "swallow-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(2);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(sloppy)
                .maxBatchSize(40)
                .maxAttempts(2)
                .retryBackoff(Duration.ofMillis(10))
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(60),
          () ->
              InboxTestSupport.storedOffsetSum(db, group)
                  == messages.size());
      assertEquals(
          messages.size() - 1,
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'swallow'"),
          "every other record applied once, none lost with the aborted batch");
      assertEquals(
          messages.size() - 1,
          db.queryLong(
              "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'swallow'"));
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertEquals(sloppyId, deadLetters.get(0).record().messageId());
      assertTrue(
          deadLetters.get(0).lastError().contains("an SQL error was caught and ignored"),
          deadLetters.get(0).lastError());
    }
  }

  @Test
  void handlerThatTriesToCommitItselfIsRefusedAndNothingIsCommittedEarly() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-selfcommit");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("selfcommit-", 30);
    InboxTestSupport.produce(broker, topic, messages);
    String eagerId = "selfcommit-12";
    InboxHandler ledger = InboxTestSupport.ledgerHandler("selfcommit");
    InboxHandler eager =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals(eagerId)) {
            context.connection().commit();
          }
        };
    String group = "selfcommit-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(2);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(eager)
                .maxAttempts(1)
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(60),
          () ->
              InboxTestSupport.storedOffsetSum(db, group)
                  == messages.size());
      assertEquals(
          messages.size() - 1,
          db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = 'selfcommit'"));
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", eagerId),
          "the refused commit committed nothing");
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertTrue(
          deadLetters.get(0).lastError().contains("Connection.commit is not allowed"),
          deadLetters.get(0).lastError());
      assertEquals(1, deadLetters.get(0).attempts());
    }
  }

  /**
   * A handler that ends the transaction with ROLLBACK sent as SQL (which the connection view cannot
   * refuse) as the unit's last statement (batches of one record here): the inbox's commit would
   * then store nothing while the member moved on, and the next batch would be fenced, for ever. The
   * record counts as failed, is dead-lettered, and every other record is applied once. (A ROLLBACK
   * followed by more statements in the same batch is not detected: README, inbox limits.)
   */
  @Test
  void handlerThatEndsTheTransactionWithSqlRollbackFailsItsRecordAndNothingIsLost() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-sqlrollback");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("sqlrollback-", 30);
    InboxTestSupport.produce(broker, topic, messages);
    String enderId = "sqlrollback-12";
    InboxHandler ledger = InboxTestSupport.ledgerHandler("sqlrollback");
    InboxHandler ender =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals(enderId)) {
            try (var statement = context.connection().createStatement()) {
              statement.execute("ROLLBACK");
            }
          }
        };
    List<DeadLetter> deadLetters;
    try (HikariDataSource dataSource = db.newDataSource(2)) {
      deadLetters = applyAll(dataSource, topic, messages.size(), ender, 2, 1);
    }
    assertOnlyDeadLetter(deadLetters, enderId, "ended the inbox's transaction");
    assertAppliedOnceExcept("sqlrollback", messages.size(), enderId);
  }

  /** How a handler ends the inbox's transaction in the middle of a batch. */
  private enum MidBatchCommit {
    /** COMMIT sent as SQL; its error reaches the inbox. */
    SQL_COMMIT_THROWS,
    /** commit() on the driver's connection behind the guarded one; its error is ignored. */
    JDBC_COMMIT_IGNORED_AND_GOES_ON,
    /** COMMIT sent as SQL, its error ignored, then the handler throws an error of its own. */
    SQL_COMMIT_THEN_OWN_ERROR,
    /**
     * Not a commit: SET CONSTRAINTS ALL IMMEDIATE runs the commit check at once, before the seal,
     * so it is refused the same way (a documented limit: name your own constraints instead).
     */
    SET_CONSTRAINTS_ALL_IMMEDIATE
  }

  /**
   * A handler that commits the inbox's transaction itself in the middle of a batch and more
   * records follow in that batch: before migration 1.0.5, that commit stored the batch's offset
   * and every inbox row with the effects of the records before it only, and the records after it
   * were lost (or, with a handler that went on, committed in a second transaction with no
   * inbox row). Now PostgreSQL refuses the early commit and the seal fails the rest: the record is
   * dead-lettered, every other record is applied exactly once.
   */
  @Test
  void handlerThatCommitsInTheMiddleOfABatchCommitsNothingEarlyAndNothingIsLostOrDoubled()
      throws Exception {
    for (MidBatchCommit mode : MidBatchCommit.values()) {
      KafkaBroker broker = KafkaBroker.shared();
      String topic = KafkaBroker.uniqueTopic("inbox-midcommit");
      broker.createTopic(topic, 1);
      String prefix = "midcommit-" + mode.ordinal() + "-";
      List<Message> messages = InboxTestSupport.messages(prefix, 30);
      InboxTestSupport.produce(broker, topic, messages);
      String committerId = prefix + "12";
      String appliedBy = "midcommit-" + mode;
      InboxHandler ledger = InboxTestSupport.ledgerHandler(appliedBy);
      // Records handled per transaction id, and the committing record's first transaction: to
      // show that it ran in the middle of a batch, after other records of its transaction.
      Map<Long, Integer> handledInTransaction = new ConcurrentHashMap<>();
      AtomicLong committerFirstTransaction = new AtomicLong(-1);
      InboxHandler committer =
          (record, context) -> {
            long xid = transactionId(context.connection());
            ledger.handle(record, context);
            if (!record.messageId().equals(committerId)) {
              handledInTransaction.merge(xid, 1, Integer::sum);
              return;
            }
            committerFirstTransaction.compareAndSet(-1, xid);
            switch (mode) {
              case SQL_COMMIT_THROWS -> {
                try (var statement = context.connection().createStatement()) {
                  statement.execute("COMMIT");
                }
              }
              case JDBC_COMMIT_IGNORED_AND_GOES_ON -> {
                try {
                  context.connection().unwrap(java.sql.Connection.class).commit();
                } catch (java.sql.SQLException ignored) {
                  // the handler carries on as if it had worked
                }
              }
              case SQL_COMMIT_THEN_OWN_ERROR -> {
                try (var statement = context.connection().createStatement()) {
                  statement.execute("COMMIT");
                } catch (java.sql.SQLException ignored) {
                  // then fails for a reason of its own
                }
                throw new IllegalStateException("the handler's own failure after its commit");
              }
              case SET_CONSTRAINTS_ALL_IMMEDIATE -> {
                try (var statement = context.connection().createStatement()) {
                  statement.execute("SET CONSTRAINTS ALL IMMEDIATE");
                }
              }
            }
          };
      List<DeadLetter> deadLetters;
      try (HikariDataSource dataSource = db.newDataSource(2)) {
        deadLetters = applyAll(dataSource, topic, messages.size(), committer, 2, 100);
      }
      assertTrue(
          handledInTransaction.getOrDefault(committerFirstTransaction.get(), 0) > 0,
          mode + ": the first commit came in the middle of a batch");
      String expectedError =
          switch (mode) {
            case SQL_COMMIT_THROWS -> "before the inbox sealed it";
            case JDBC_COMMIT_IGNORED_AND_GOES_ON -> "ended the inbox's transaction";
            case SQL_COMMIT_THEN_OWN_ERROR -> "the handler's own failure after its commit";
            case SET_CONSTRAINTS_ALL_IMMEDIATE -> "ran SET CONSTRAINTS ALL IMMEDIATE";
          };
      assertOnlyDeadLetter(deadLetters, committerId, expectedError);
      assertAppliedOnceExcept(appliedBy, messages.size(), committerId);
    }
  }

  /**
   * A handler that switches auto-commit on behind the guarded connection (on the driver's
   * connection, unwrapped) on a pool whose connections are not auto-commit: the first switch
   * commits, which the commit check refuses; the second succeeds, and the statements after it
   * commit one by one, outside the inbox's transaction. The record is dead-lettered with a clear
   * error and nothing is lost; records applied in auto-commit may be applied twice (README limits).
   */
  @Test
  void handlerThatSwitchesAutoCommitOnIsDeadLetteredAndNothingIsLost()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-autocommit");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("autocommit-", 30);
    InboxTestSupport.produce(broker, topic, messages);
    String switcherId = "autocommit-12";
    InboxHandler ledger = InboxTestSupport.ledgerHandler("autocommit");
    InboxHandler switcher =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals(switcherId)) {
            java.sql.Connection raw = context.connection().unwrap(java.sql.Connection.class);
            try {
              raw.setAutoCommit(true);
            } catch (java.sql.SQLException refused) {
              raw.setAutoCommit(true);
            }
          }
        };
    com.zaxxer.hikari.HikariConfig config = new com.zaxxer.hikari.HikariConfig();
    config.setJdbcUrl(db.jdbcUrl());
    if (db.user() != null) {
      config.setUsername(db.user());
      config.setPassword(db.password());
    }
    config.setAutoCommit(false);
    config.setMaximumPoolSize(2);
    List<DeadLetter> deadLetters;
    try (HikariDataSource dataSource = new HikariDataSource(config)) {
      deadLetters = applyAll(dataSource, topic, messages.size(), switcher, 2, 100);
    }
    assertOnlyDeadLetter(deadLetters, switcherId, "ended the inbox's transaction");
    assertEquals(0, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", switcherId));
    // Records applied in auto-commit may be applied twice: only "at least once" is promised.
    assertEquals(
        messages.size() - 1,
        db.queryLong(
            "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = 'autocommit'"),
        "every other record applied");
  }

  /**
   * A record whose handler fails only because an earlier handler of its batch ended the
   * transaction (here: the parent row it refers to was rolled back with it) is not charged: with
   * maxAttempts 1 it would otherwise be dead-lettered beside the culprit. Only a failure as the
   * first record of a unit counts.
   */
  @Test
  void recordFailingBecauseAnEarlierHandlerEndedTheTransactionIsNotCharged() {
    db.execute(
        "CREATE TABLE fk_parent (id TEXT PRIMARY KEY)",
        "CREATE TABLE fk_child (id TEXT PRIMARY KEY, parent TEXT NOT NULL REFERENCES fk_parent)");
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-innocent");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("innocent-", 3);
    InboxTestSupport.produce(broker, topic, messages);
    InboxHandler handler =
        (record, context) -> {
          try (var statement = context.connection().createStatement()) {
            switch (record.messageId()) {
              case "innocent-0" -> statement.execute("INSERT INTO fk_parent VALUES ('p0')");
              case "innocent-1" -> statement.execute("ROLLBACK");
              default -> statement.execute("INSERT INTO fk_child VALUES ('c2', 'p0')");
            }
          }
        };
    List<DeadLetter> deadLetters;
    try (HikariDataSource dataSource = db.newDataSource(2)) {
      deadLetters = applyAll(dataSource, topic, messages.size(), handler, 1, 100);
    }
    assertOnlyDeadLetter(deadLetters, "innocent-1", "ended the inbox's transaction");
    assertEquals(1, db.queryLong("SELECT count(*) FROM fk_parent WHERE id = 'p0'"));
    assertEquals(1, db.queryLong("SELECT count(*) FROM fk_child WHERE id = 'c2'"));
  }

  /**
   * A handler that closes the driver's connection under the guarded one fails its record: the next
   * statement's "connection closed" error must not read as a database outage, retried for ever.
   */
  @Test
  void handlerThatClosesTheDriversConnectionIsDeadLetteredNotRetriedForEver() {
    List<DeadLetter> deadLetters =
        applyWithOneMisbehaving(
            "closer",
            "closer-7",
            context -> context.connection().unwrap(java.sql.Connection.class).close(),
            builder -> {});
    assertOnlyDeadLetter(deadLetters, "closer-7", "connection was closed");
    assertAppliedOnceExcept("closer", 20, "closer-7");
  }

  /**
   * A handler that leaves the database idle inside its transaction for longer than {@code
   * transactionIdleTimeout} (here it sleeps; in a service: a slow remote call in the handler):
   * PostgreSQL ends the session, and the inbox charges that to the record, naming the setting,
   * instead of retrying it for ever as a database outage. It is dead-lettered after maxAttempts;
   * every other record is applied once.
   */
  @Test
  void handlerIdleLongerThanTheTransactionIdleTimeoutIsDeadLetteredNamingTheSetting() {
    List<DeadLetter> deadLetters =
        applyWithOneMisbehaving(
            "idle",
            "idle-4",
            context -> Thread.sleep(1_500),
            builder -> builder.transactionIdleTimeout(Duration.ofMillis(300)));
    assertOnlyDeadLetter(deadLetters, "idle-4", "outlived transactionIdleTimeout");
    assertAppliedOnceExcept("idle", 20, "idle-4");
  }

  /**
   * A record whose business changes break a deferred constraint: every statement succeeds, the
   * batch is sealed, and PostgreSQL refuses only the commit. That error belongs to some record of
   * the batch (the inbox cannot tell which from the commit), not to the database: the batch is
   * split until the record is found, which is dead-lettered after maxAttempts; every other record
   * is applied once. Retried as a whole, the batch would fail at commit for ever.
   */
  @Test
  void recordBreakingADeferredConstraintAtCommitIsDeadLetteredAndTheOthersApplied() {
    db.execute(
        "CREATE TABLE IF NOT EXISTS deferred_parent (id INT PRIMARY KEY);"
            + " CREATE TABLE IF NOT EXISTS deferred_child (parent INT NOT NULL REFERENCES"
            + " deferred_parent (id) DEFERRABLE INITIALLY DEFERRED)");
    List<DeadLetter> deadLetters =
        applyWithOneMisbehaving(
            "deferred",
            "deferred-11",
            context -> {
              try (var insert =
                  context
                      .connection()
                      .prepareStatement("INSERT INTO deferred_child (parent) VALUES (?)")) {
                insert.setInt(1, 404);
                insert.executeUpdate();
              }
            },
            builder -> {});
    assertOnlyDeadLetter(deadLetters, "deferred-11", "deferred_child");
    assertAppliedOnceExcept("deferred", 20, "deferred-11");
    assertEquals(
        0, db.queryLong("SELECT count(*) FROM deferred_child"), "no orphan child committed");
  }

  /**
   * Two dead letters; the replay of the first runs its handler but PostgreSQL refuses its commit
   * (a deferred constraint, as a JPA flush at commit or a serialization failure would). That is the
   * dead letter's own failure: replayAll still replays the second, then reports the first, which
   * stays pending with nothing of it committed. Before, the commit failure escaped replay() as a
   * plain exception and replayAll stopped at it, leaving the second unreplayed.
   */
  @Test
  void replayAllGoesOnPastADeadLetterWhoseCommitIsRefused() {
    db.execute(
        "CREATE TABLE IF NOT EXISTS deferred_parent (id INT PRIMARY KEY);"
            + " CREATE TABLE IF NOT EXISTS deferred_child (parent INT NOT NULL REFERENCES"
            + " deferred_parent (id) DEFERRABLE INITIALLY DEFERRED)");
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-replay-commit");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("replay-commit-", 3);
    InboxTestSupport.produce(broker, topic, messages);
    AtomicBoolean replaying = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("replay-commit");
    InboxHandler handler =
        (record, context) -> {
          String id = record.messageId();
          if (id.equals("replay-commit-1")) {
            return; // applied normally
          }
          if (!replaying.get()) {
            throw new IllegalStateException("cannot apply " + id + " yet");
          }
          ledger.handle(record, context);
          if (id.equals("replay-commit-0")) {
            try (var orphan =
                context
                    .connection()
                    .prepareStatement("INSERT INTO deferred_child (parent) VALUES (404)")) {
              orphan.executeUpdate();
            }
          }
        };
    String group = "replay-commit-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .retryBackoff(Duration.ofMillis(20))
                .build()) {
      inbox.start();
      await(
          "the partition to move past every record",
          Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == messages.size());
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(2, deadLetters.size(), "records 0 and 2 dead-lettered");
      assertEquals("replay-commit-0", deadLetters.get(0).record().messageId(), "oldest first");

      replaying.set(true);
      DeadLetterReplayException failed =
          assertThrows(DeadLetterReplayException.class, inbox::replayAll);
      assertEquals(deadLetters.get(0).id(), failed.deadLetterId());
      assertTrue(failed.getMessage().contains("1 replayed"), failed.getMessage());
      assertTrue(failed.getMessage().contains("failed at commit"), failed.getMessage());
      assertEquals(
          1,
          db.queryLong("SELECT count(*) FROM ledger WHERE message_id = 'replay-commit-2'"),
          "the dead letter after the refused one was replayed");
      assertEquals(
          0,
          db.queryLong("SELECT count(*) FROM ledger WHERE message_id = 'replay-commit-0'"),
          "nothing of the refused replay committed");
      List<DeadLetter> left = inbox.deadLetters(10);
      assertEquals(1, left.size());
      assertEquals("replay-commit-0", left.get(0).record().messageId(), "it stays pending");
      assertEquals(0, db.queryLong("SELECT count(*) FROM deferred_child"));
    }
  }

  /**
   * A replay whose commit succeeds but whose connection then fails to close (the pool's close, or
   * the answer to the commit lost) is a replay that happened: replay() reads the dead letter back
   * and returns true instead of reporting a failure for a record that was applied.
   */
  @Test
  void replayThatCommittedBeforeItsConnectionFailedToCloseCountsAsReplayed() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-replay-close");
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages("replay-close-", 1);
    InboxTestSupport.produce(broker, topic, messages);
    AtomicBoolean fixed = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("replay-close");
    InboxHandler handler =
        (record, context) -> {
          if (!fixed.get()) {
            throw new IllegalStateException("cannot apply " + record.messageId() + " yet");
          }
          ledger.handle(record, context);
        };
    String group = "replay-close-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3)) {
      long deadLetterId;
      try (Inbox inbox =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(dataSource)
              .handler(handler)
              .maxAttempts(1)
              .build()) {
        inbox.start();
        await(
            "the record dead-lettered",
            Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 1);
        deadLetterId = inbox.deadLetters(10).get(0).id();
      }
      fixed.set(true);
      // The first connection's close fails (the replay's, after its commit); later ones close.
      java.util.concurrent.atomic.AtomicInteger closeFailures =
          new java.util.concurrent.atomic.AtomicInteger();
      javax.sql.DataSource closeFails =
          (javax.sql.DataSource)
              java.lang.reflect.Proxy.newProxyInstance(
                  getClass().getClassLoader(),
                  new Class<?>[] {javax.sql.DataSource.class},
                  (proxy, method, args) -> {
                    Object result = method.invoke(dataSource, args);
                    if (!method.getName().equals("getConnection")) {
                      return result;
                    }
                    java.sql.Connection real = (java.sql.Connection) result;
                    return java.lang.reflect.Proxy.newProxyInstance(
                        getClass().getClassLoader(),
                        new Class<?>[] {java.sql.Connection.class},
                        (p, m, a) -> {
                          if (m.getName().equals("close")) {
                            real.close();
                            if (closeFailures.getAndIncrement() == 0) {
                              throw new java.sql.SQLException("connection reset while closing");
                            }
                            return null;
                          }
                          try {
                            return m.invoke(real, a);
                          } catch (java.lang.reflect.InvocationTargetException e) {
                            throw e.getCause();
                          }
                        });
                  });
      Inbox replaying =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(closeFails)
              .handler(handler)
              .build();
      try {
        assertTrue(replaying.replay(deadLetterId), "replayed: its commit happened");
        assertTrue(closeFailures.get() >= 1, "the replay's connection failed to close");
      } finally {
        replaying.close();
      }
      assertEquals(
          1, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = 'replay-close-0'"));
      try (Inbox inbox =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(dataSource)
              .handler(handler)
              .build()) {
        assertEquals(0, inbox.deadLetters(10).size(), "no longer pending");
      }
    }
  }

  /**
   * Two replayers of one dead letter. Ours runs the handler but PostgreSQL refuses its commit (a
   * deferred constraint); right after, before ours reads back what happened, the other replayer
   * replays the same dead letter and commits. Ours must still report its own refusal: it asks for
   * the outcome of its own transaction, not whether the dead letter is still pending. Before, it
   * found the dead letter replayed (by the other) and returned true for a replay of its own that
   * committed nothing.
   */
  @Test
  void refusedReplayIsReportedEvenWhenAnotherReplayerAppliedTheDeadLetterMeanwhile() throws Exception {
    db.execute(
        "CREATE TABLE IF NOT EXISTS deferred_parent (id INT PRIMARY KEY);"
            + " CREATE TABLE IF NOT EXISTS deferred_child (parent INT NOT NULL REFERENCES"
            + " deferred_parent (id) DEFERRABLE INITIALLY DEFERRED)");
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-replay-race");
    broker.createTopic(topic, 1);
    InboxTestSupport.produce(broker, topic, InboxTestSupport.messages("replay-race-", 1));
    String group = "replay-race-" + topic;
    InboxHandler ledger = InboxTestSupport.ledgerHandler("replay-race");
    AtomicBoolean armed = new AtomicBoolean();
    try (HikariDataSource dataSource = db.newDataSource(4)) {
      long deadLetterId;
      try (Inbox consuming =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(dataSource)
              .handler((record, context) -> {
                throw new IllegalStateException("cannot apply " + record.messageId() + " yet");
              })
              .maxAttempts(1)
              .build()) {
        consuming.start();
        await("the record dead-lettered", Duration.ofSeconds(60),
            () -> InboxTestSupport.storedOffsetSum(db, group) == 1);
        deadLetterId = consuming.deadLetters(10).get(0).id();
      }
      Inbox other =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(dataSource)
              .handler(ledger)
              .build();
      // Our replayer's connections: the one after the handler ran (the read-back of the refused
      // commit) first lets the other replayer replay the dead letter to the end.
      javax.sql.DataSource racing =
          (javax.sql.DataSource)
              java.lang.reflect.Proxy.newProxyInstance(
                  getClass().getClassLoader(),
                  new Class<?>[] {javax.sql.DataSource.class},
                  (proxy, method, args) -> {
                    if (method.getName().equals("getConnection") && armed.getAndSet(false)) {
                      assertTrue(other.replay(deadLetterId), "the other replayer applied it");
                    }
                    try {
                      return method.invoke(dataSource, args);
                    } catch (java.lang.reflect.InvocationTargetException e) {
                      throw e.getCause();
                    }
                  });
      Inbox mine =
          Inbox.builder()
              .kafkaProperties(InboxTestSupport.consumerProperties(broker))
              .groupId(group)
              .topics(topic)
              .dataSource(racing)
              .handler((record, context) -> {
                ledger.handle(record, context);
                try (var orphan =
                    context.connection().prepareStatement("INSERT INTO deferred_child (parent) VALUES (404)")) {
                  orphan.executeUpdate();
                }
                armed.set(true);
              })
              .build();
      try {
        DeadLetterReplayException refused =
            assertThrows(DeadLetterReplayException.class, () -> mine.replay(deadLetterId));
        assertTrue(refused.getMessage().contains("failed at commit"), refused.getMessage());
        assertFalse(armed.get(), "the other replayer ran between our commit and our read-back");
      } finally {
        mine.close();
        other.close();
      }
      assertEquals(
          1,
          db.queryLong("SELECT count(*) FROM ledger WHERE message_id = 'replay-race-0'"),
          "applied once, by the other replayer");
      assertEquals(0, db.queryLong("SELECT count(*) FROM deferred_child"), "nothing of ours committed");
    }
  }

  /**
   * A JDBC handler that catches an SQL error and returns leaves the transaction aborted: in a
   * batch, the record is dead-lettered with a reason that names the mistake; on replay, the replay
   * fails with the same reason, not only PostgreSQL's "current transaction is aborted".
   */
  @Test
  void handlerThatSwallowsAnSqlErrorIsToldSoInABatchAndOnReplay() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-swallow-replay");
    broker.createTopic(topic, 1);
    InboxTestSupport.produce(broker, topic, InboxTestSupport.messages("swallowed-", 3));
    InboxHandler ledger = InboxTestSupport.ledgerHandler("swallowed");
    InboxHandler handler =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals("swallowed-1")) {
            try (var failing = context.connection().createStatement()) {
              failing.execute("SELECT 1 / 0");
            } catch (java.sql.SQLException ignored) {
              // the mistake under test: the error is swallowed
            }
          }
        };
    String group = "swallowed-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .build()) {
      inbox.start();
      await("every record consumed", Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == 3);
      List<DeadLetter> deadLetters = inbox.deadLetters(10);
      assertEquals(1, deadLetters.size());
      assertEquals("swallowed-1", deadLetters.get(0).record().messageId());
      assertTrue(deadLetters.get(0).lastError().contains("an SQL error was caught and ignored"),
          deadLetters.get(0).lastError());
      assertEquals(2, db.queryLong("SELECT count(*) FROM ledger WHERE message_id LIKE 'swallowed-%'"));

      DeadLetterReplayException replay =
          assertThrows(DeadLetterReplayException.class, () -> inbox.replay(deadLetters.get(0).id()));
      assertTrue(replay.getMessage().contains("an SQL error was caught and ignored"), replay.getMessage());
      assertEquals(1, inbox.deadLetters(10).size(), "it stays pending");
      assertEquals(2, db.queryLong("SELECT count(*) FROM ledger WHERE message_id LIKE 'swallowed-%'"));
    }
  }

  /**
   * A handler that overflows the stack on replay: that is the dead letter's own failure, as it is
   * when a batch applies the record (BatchProcessor rethrows only OutOfMemoryError, InternalError
   * and UnknownError). replayAll goes on with the next dead letter and reports the first. Before,
   * replay() rethrew every VirtualMachineError, and the StackOverflowError stopped replayAll.
   */
  @Test
  void replayAllGoesOnPastAHandlerThatOverflowsTheStack() {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-replay-overflow");
    broker.createTopic(topic, 1);
    InboxTestSupport.produce(broker, topic, InboxTestSupport.messages("replay-overflow-", 2));
    AtomicBoolean replaying = new AtomicBoolean();
    InboxHandler ledger = InboxTestSupport.ledgerHandler("replay-overflow");
    InboxHandler handler =
        (record, context) -> {
          if (!replaying.get()) {
            throw new IllegalStateException("cannot apply " + record.messageId() + " yet");
          }
          if (record.messageId().equals("replay-overflow-0")) {
            throw new StackOverflowError("deep recursion in the handler");
          }
          ledger.handle(record, context);
        };
    String group = "replay-overflow-" + topic;
    try (HikariDataSource dataSource = db.newDataSource(3);
        Inbox inbox =
            Inbox.builder()
                .kafkaProperties(InboxTestSupport.consumerProperties(broker))
                .groupId(group)
                .topics(topic)
                .dataSource(dataSource)
                .handler(handler)
                .maxAttempts(1)
                .build()) {
      inbox.start();
      await("both records dead-lettered", Duration.ofSeconds(90),
          () -> InboxTestSupport.storedOffsetSum(db, group) == 2);
      assertEquals(2, inbox.deadLetters(10).size());

      replaying.set(true);
      DeadLetterReplayException failed =
          assertThrows(DeadLetterReplayException.class, inbox::replayAll);
      assertTrue(failed.getMessage().contains("1 replayed"), failed.getMessage());
      assertTrue(failed.getMessage().contains("StackOverflowError"), failed.getMessage());
      assertEquals(
          1, db.queryLong("SELECT count(*) FROM ledger WHERE message_id = 'replay-overflow-1'"),
          "the dead letter after the overflowing one was replayed");
      List<DeadLetter> left = inbox.deadLetters(10);
      assertEquals(1, left.size());
      assertEquals("replay-overflow-0", left.get(0).record().messageId(), "it stays pending");
      assertTrue(inbox.isRunning(), "the inbox keeps running");
    }
  }

  /**
   * The transaction that dead-letters a record fails, first with a transient error (a
   * serialization failure), then with another one, and succeeds the third time. The record is not
   * skipped meanwhile (the offset moves only with the dead letter), and it ends with exactly one
   * dead letter and one forward to the dead-letter topic: the failed attempts left nothing behind.
   */
  @Test
  void deadLetterTransactionThatFailsIsRetriedAndLeavesOneDeadLetterAndOneForward() {
    db.execute(
        "CREATE SEQUENCE refuse_dead_letter",
        "CREATE FUNCTION refuse_dead_letter() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            + " CASE nextval('refuse_dead_letter')"
            + " WHEN 1 THEN RAISE EXCEPTION 'refused once' USING ERRCODE = '40001';"
            + " WHEN 2 THEN RAISE EXCEPTION 'refused twice';"
            + " ELSE RETURN NEW; END CASE; END $$",
        "CREATE TRIGGER refuse_dead_letter BEFORE INSERT ON txkafka_inbox_dead_letter"
            + " FOR EACH ROW EXECUTE FUNCTION refuse_dead_letter()");
    String deadLetterTopic = KafkaBroker.uniqueTopic("refused-dead-letter") + ".dlt";
    try {
      List<DeadLetter> deadLetters =
          applyWithOneMisbehaving(
              "refused-dl",
              "refused-dl-6",
              context -> {
                throw new IllegalStateException("cannot apply refused-dl-6");
              },
              builder -> builder.deadLetterTopic(deadLetterTopic));
      assertOnlyDeadLetter(deadLetters, "refused-dl-6", "cannot apply refused-dl-6");
      assertAppliedOnceExcept("refused-dl", 20, "refused-dl-6");
      assertEquals(
          3,
          db.queryLong("SELECT last_value FROM refuse_dead_letter"),
          "two dead-letter transactions refused, the third stored");
      assertEquals(
          1,
          db.queryLong("SELECT count(*) FROM txkafka_outbox WHERE topic = ?", deadLetterTopic),
          "one forward to the dead-letter topic");
    } finally {
      db.execute(
          "DROP TRIGGER refuse_dead_letter ON txkafka_inbox_dead_letter",
          "DROP FUNCTION refuse_dead_letter()",
          "DROP SEQUENCE refuse_dead_letter");
    }
  }

  /** What a misbehaving handler does after writing its record's ledger row. */
  private interface Misbehaviour {
    void run(org.txkafka.inbox.InboxContext context) throws Exception;
  }

  /**
   * Produces 20 messages {@code name}-0.. to a new one-partition topic and applies them (maxAttempts
   * 2, batches of up to 100, {@code more} settings) with the ledger handler, which for {@code badId}
   * then does {@code misbehave}; returns the dead letters.
   */
  private static List<DeadLetter> applyWithOneMisbehaving(
      String name,
      String badId,
      Misbehaviour misbehave,
      java.util.function.Consumer<InboxBuilder> more) {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("inbox-" + name);
    broker.createTopic(topic, 1);
    List<Message> messages = InboxTestSupport.messages(name + "-", 20);
    InboxTestSupport.produce(broker, topic, messages);
    InboxHandler ledger = InboxTestSupport.ledgerHandler(name);
    InboxHandler handler =
        (record, context) -> {
          ledger.handle(record, context);
          if (record.messageId().equals(badId)) {
            misbehave.run(context);
          }
        };
    try (HikariDataSource dataSource = db.newDataSource(3)) {
      return applyAll(dataSource, topic, messages.size(), handler, 2, 100, more);
    }
  }

  /**
   * Runs an inbox (one worker, 10 ms retry backoff) with {@code handler} on {@code dataSource}
   * until it stored an offset past all {@code records} records of the one-partition {@code topic};
   * returns its dead letters.
   */
  private static List<DeadLetter> applyAll(
      javax.sql.DataSource dataSource,
      String topic,
      int records,
      InboxHandler handler,
      int maxAttempts,
      int maxBatchSize) {
    return applyAll(dataSource, topic, records, handler, maxAttempts, maxBatchSize, builder -> {});
  }

  /** As above, with {@code more} settings. */
  private static List<DeadLetter> applyAll(
      javax.sql.DataSource dataSource,
      String topic,
      int records,
      InboxHandler handler,
      int maxAttempts,
      int maxBatchSize,
      java.util.function.Consumer<InboxBuilder> more) {
    String group = "group-" + topic;
    InboxBuilder builder =
        Inbox.builder()
            .kafkaProperties(InboxTestSupport.consumerProperties(KafkaBroker.shared()))
            .groupId(group)
            .topics(topic)
            .dataSource(dataSource)
            .handler(handler)
            .concurrency(1)
            .maxBatchSize(maxBatchSize)
            .maxAttempts(maxAttempts)
            .retryBackoff(Duration.ofMillis(10));
    more.accept(builder);
    try (Inbox inbox = builder.build()) {
      inbox.start();
      await(
          topic + ": the partition to move past every record",
          Duration.ofSeconds(60),
          () -> InboxTestSupport.storedOffsetSum(db, group) == records);
      return inbox.deadLetters(10);
    }
  }

  /** Exactly one dead letter: {@code messageId}, its last error containing {@code error}. */
  private static void assertOnlyDeadLetter(
      List<DeadLetter> deadLetters, String messageId, String error) {
    assertEquals(1, deadLetters.size(), deadLetters.toString());
    assertEquals(messageId, deadLetters.get(0).record().messageId());
    assertTrue(deadLetters.get(0).lastError().contains(error), deadLetters.get(0).lastError());
  }

  /**
   * The ledger rows of {@code appliedBy}: one for each of the {@code records} records but {@code
   * missing}, and none of it.
   */
  private static void assertAppliedOnceExcept(String appliedBy, int records, String missing) {
    assertEquals(
        records - 1,
        db.queryLong("SELECT count(*) FROM ledger WHERE applied_by = ?", appliedBy),
        appliedBy + ": every other record applied");
    assertEquals(
        records - 1,
        db.queryLong(
            "SELECT count(DISTINCT message_id) FROM ledger WHERE applied_by = ?", appliedBy),
        appliedBy + ": each once");
    assertEquals(
        0,
        db.queryLong("SELECT count(*) FROM ledger WHERE message_id = ?", missing),
        appliedBy + ": nothing of " + missing + " stays committed");
  }

  private static long transactionId(java.sql.Connection connection) throws java.sql.SQLException {
    try (var statement = connection.createStatement();
        var rows = statement.executeQuery("SELECT txid_current()")) {
      rows.next();
      return rows.getLong(1);
    }
  }

  private static void assertReason(DeadLetter deadLetter, String key, String reason) {
    assertEquals(key, deadLetter.record().keyAsString());
    assertNotNull(deadLetter.lastError());
    assertTrue(
        deadLetter.lastError().startsWith("malformed message id")
            && deadLetter.lastError().contains(reason),
        deadLetter.lastError());
    assertEquals(0, deadLetter.attempts(), "the handler never ran");
  }

  private static ProducerRecord<byte[], byte[]> withId(String topic, String key, byte[] id) {
    ProducerRecord<byte[], byte[]> record =
        new ProducerRecord<>(topic, InboxTestSupport.bytes(key), InboxTestSupport.bytes("1"));
    record.headers().add(Outbox.MESSAGE_ID_HEADER, id);
    return record;
  }
}
