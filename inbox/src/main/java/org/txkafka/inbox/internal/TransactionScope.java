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
}
