package org.txkafka.inbox.internal;

/**
 * Who owns the transaction: the seam that lets a service on Spring or JTA plug its own transaction
 * manager in later. An implementation begins a transaction, hands the work a {@link
 * TransactionScope} whose connection is the transaction's own connection (every SQL statement of
 * the inbox runs on it), commits if the work returns (unless it asked for rollback) and rolls back
 * if the work throws, then rethrows. Implementations are thread-safe; each call is one transaction
 * on the calling thread.
 *
 * <p>Two defaults: {@link DataSourceTransactionOwner} (JDBC) and {@link JpaTransactionOwner}
 * (resource-local JPA).
 */
public interface TransactionOwner {

  /**
   * Runs {@code work} in a new transaction.
   *
   * @throws Exception what the work threw (after rollback), or the commit's failure
   */
  <T> T inTransaction(TransactionWork<T> work) throws Exception;

  /** Work inside a transaction. */
  @FunctionalInterface
  interface TransactionWork<T> {
    /** Does the work; throw to roll back. */
    T run(TransactionScope scope) throws Exception;
  }
}
