package org.txkafka.inbox;

/**
 * The service's code that applies one record. It runs inside the inbox's database transaction:
 * everything it writes through {@link InboxContext#connection()}, {@link
 * InboxContext#entityManager()} or {@link InboxContext#send} commits atomically with the inbox row
 * and the stored offset, or not at all.
 *
 * <p>Contract: never commit, roll back or close the connection or entity manager; never change
 * auto-commit. Throw to reject the record: the transaction rolls back and the record is retried
 * with backoff, then dead-lettered after {@link InboxBuilder#maxAttempts(int)} attempts. An
 * exception caused by a transient database error (connection lost, serialization failure, deadlock)
 * is retried without counting an attempt. The handler is called from worker threads, at most one at
 * a time per partition, but concurrently for different partitions: it must be thread-safe. It may
 * be called again for the same record after a rolled-back attempt, so effects outside the
 * transaction (HTTP calls, e-mails) are not covered by the inbox's guarantees.
 */
@FunctionalInterface
public interface InboxHandler {

  /**
   * Applies {@code record} in the running transaction.
   *
   * @param record the record, with its resolved message id
   * @param context the running transaction: connection, entity manager, outbox
   * @throws Exception to roll back and retry (see the interface contract)
   */
  void handle(InboxRecord record, InboxContext context) throws Exception;
}
