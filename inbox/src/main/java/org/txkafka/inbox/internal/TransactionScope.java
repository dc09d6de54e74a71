package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManager;
import java.sql.Connection;

/** The running transaction, as a {@link TransactionOwner} hands it to its work. */
public interface TransactionScope {

  /** The connection of the transaction, auto-commit off. */
  Connection connection();

  /** The entity manager of the transaction, or null for a JDBC-only transaction. */
  EntityManager entityManager();

  /** Makes the owner roll back instead of commit when the work returns. */
  void setRollbackOnly();

  /**
   * Ends one unit of a handler's work inside the transaction (a record, or a batch handler's
   * call), so that each record's entity changes behave as in a transaction of its own: fails if
   * the work marked the transaction rollback-only (JPA's commit would then roll back silently
   * while the inbox counted the records applied), writes the persistence context's pending changes
   * (a failure there is this unit's), and clears it (so that the next record neither discards
   * these changes, with {@code clear} or {@code refresh}, nor overwrites a change made through the
   * connection with a stale entity). Nothing for a JDBC-only transaction.
   */
  void endOfWork();
}
