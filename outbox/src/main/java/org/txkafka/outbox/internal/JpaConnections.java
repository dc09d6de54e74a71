package org.txkafka.outbox.internal;

import jakarta.persistence.EntityManager;
import jakarta.persistence.PersistenceException;
import java.sql.Connection;
import java.util.function.Function;

/**
 * Runs JDBC work on the connection of a JPA entity manager's running transaction. With Hibernate it
 * uses {@code Session.doReturningWork}; other providers must support {@code
 * unwrap(Connection.class)} inside a transaction (EclipseLink does).
 */
public final class JpaConnections {
  private static final boolean HIBERNATE = isPresent("org.hibernate.Session");

  private JpaConnections() {}

  /** Applies {@code work} to the entity manager's current connection. */
  public static <T> T withConnection(EntityManager entityManager, Function<Connection, T> work) {
    if (HIBERNATE) {
      return HibernateWork.apply(entityManager, work);
    }
    try {
      return work.apply(entityManager.unwrap(Connection.class));
    } catch (PersistenceException e) {
      throw new IllegalStateException(
          "the JPA provider of this EntityManager cannot give its JDBC connection; pass the"
              + " Connection of the running transaction instead",
          e);
    }
  }

  private static boolean isPresent(String className) {
    try {
      Class.forName(className, false, JpaConnections.class.getClassLoader());
      return true;
    } catch (ClassNotFoundException e) {
      return false;
    }
  }

  /** Kept apart so that Hibernate's classes load only when Hibernate is present. */
  private static final class HibernateWork {
    static <T> T apply(EntityManager entityManager, Function<Connection, T> work) {
      return entityManager.unwrap(org.hibernate.Session.class).doReturningWork(work::apply);
    }
  }
}
