package org.txkafka.inbox;

import java.util.List;

/**
 * An effectively-once Kafka consumer: for every record, the handler's business changes, an inbox
 * row (unique on consumer group and message id) and the partition's stored offset commit in one
 * PostgreSQL transaction. Build one with {@link #builder()}, {@link #start()} it, {@link #close()}
 * it.
 *
 * <pre>{@code
 * Inbox inbox = Inbox.builder()
 *     .kafkaProperties(Map.of("bootstrap.servers", "localhost:9092"))
 *     .groupId("payments")
 *     .topics("orders.placed")
 *     .entityManagerFactory(emf)
 *     .handler((record, context) -> {
 *       context.entityManager().persist(new Payment(record.valueAsString()));
 *       context.send(OutboxMessage.to("payments.requested").payload(record.value()).build());
 *     })
 *     .build();
 * inbox.start();
 * }</pre>
 *
 * <p>Guarantees (with the limits documented on {@link InboxBuilder}): each message id is applied at
 * most once per consumer group within the dedup retention window, every record is applied or
 * dead-lettered, records of one partition are applied in offset order, and the offset stored in the
 * database never moves backwards. Instances are thread-safe.
 */
public interface Inbox extends AutoCloseable {

  /** A builder with every default; see {@link InboxBuilder} for the settings. */
  static InboxBuilder builder() {
    return new InboxBuilder();
  }

  /**
   * Subscribes and starts polling on a new thread. Returns at once; partitions are claimed and
   * processed in the background. The poll thread is not a daemon thread: call {@link #close()} (a
   * JVM shutdown hook is a good place) so that the JVM can exit.
   *
   * @throws IllegalStateException if it was started or closed before
   */
  void start();

  /**
   * True from {@link #start()} until {@link #close()} or until the poll thread stopped on an
   * unrecoverable error (see {@link #failure()}).
   */
  boolean isRunning();

  /** The unrecoverable error that stopped the poll thread, or null. */
  Throwable failure();

  /**
   * Pending (not yet replayed) dead letters of this consumer group, oldest first.
   *
   * @param limit the maximum number to return, at least 1
   * @throws java.sql.SQLException wrapped in {@link org.txkafka.TxKafkaException} on a database
   *     error
   */
  List<DeadLetter> deadLetters(int limit);

  /**
   * Runs the handler for dead letter {@code deadLetterId} in its own transaction and marks it
   * replayed (inbox row status {@code REPLAYED}) in that transaction. The replayed record is
   * applied out of its partition's order. Works whether or not the inbox is started.
   *
   * @return true if it was replayed; false if there is no pending dead letter with that id for this
   *     consumer group (unknown, or already replayed)
   * @throws DeadLetterReplayException if the handler failed or PostgreSQL refused the commit (a
   *     deferred constraint, a serialization failure): it stays pending
   */
  boolean replay(long deadLetterId);

  /**
   * Replays every pending dead letter of this consumer group, oldest first, each in its own
   * transaction; one that fails stays pending and the others are still tried.
   *
   * @return how many were replayed
   * @throws DeadLetterReplayException after trying all of them, if any failed (the first failure,
   *     the others suppressed)
   */
  int replayAll();

  /**
   * Stops polling, lets in-flight batches finish (or be rolled back) within {@link
   * InboxBuilder#closeTimeout}, mirrors the committed offsets to Kafka and closes the consumer.
   * Nothing committed is lost; a batch still running when the bound expires commits or rolls back
   * atomically. Idempotent.
   */
  @Override
  void close();
}
