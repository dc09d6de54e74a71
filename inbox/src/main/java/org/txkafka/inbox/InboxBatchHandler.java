package org.txkafka.inbox;

import java.util.List;

/**
 * The service's code that applies the new records of one batch at once, for example with one
 * multi-row statement: the alternative to {@link InboxHandler} when one database round trip per
 * record is too slow. Set it with {@link InboxBuilder#batchHandler}.
 *
 * <p>Contract: {@code records} are the new (not duplicate) records of one partition, in offset
 * order; the list is never empty and must not be modified or kept after the call. Everything the
 * handler writes through {@link InboxContext#connection()}, {@link InboxContext#entityManager()} or
 * {@link InboxContext#send} commits atomically with those records' inbox rows and the stored
 * offset, or not at all. Never commit, roll back or close the connection or entity manager; never
 * change auto-commit.
 *
 * <p>Throw to reject the call: the whole transaction rolls back and the inbox retries the records
 * one at a time, each call then getting a one-record list, so that attempts, backoff and
 * dead-lettering after {@link InboxBuilder#maxAttempts(int)} stay per record and one bad record
 * never holds back the others. An exception caused by a transient database error (connection lost,
 * serialization failure, deadlock) retries the same records with backoff without counting an
 * attempt. The handler is called from worker threads, at most one at a time per partition, but
 * concurrently for different partitions: it must be thread-safe. A record may be passed again after
 * a rolled-back call, so effects outside the transaction are not covered by the inbox's guarantees.
 * {@link Inbox#replay} passes a dead letter as a one-record list.
 */
@FunctionalInterface
public interface InboxBatchHandler {

  /**
   * Applies {@code records} in the running transaction.
   *
   * @param records the new records of one partition, in offset order, with their resolved message
   *     ids; never empty
   * @param context the running transaction: connection, entity manager, outbox
   * @throws Exception to roll back and retry the records one at a time (see the interface contract)
   */
  void handle(List<InboxRecord> records, InboxContext context) throws Exception;
}
