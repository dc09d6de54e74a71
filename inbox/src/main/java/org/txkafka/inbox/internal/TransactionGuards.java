package org.txkafka.inbox.internal;

import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityTransaction;
import java.lang.reflect.InvocationHandler;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Proxy;
import java.sql.Connection;
import java.util.Set;

/**
 * Views of the transaction's connection and entity manager that refuse to end the transaction. A
 * handler that committed by itself would commit the batch's offset before the batch's later records
 * were applied, so a crash right after would lose them; these views make that mistake fail loudly
 * (as a handler failure) instead.
 */
final class TransactionGuards {
  private static final Set<String> CONNECTION_REFUSED =
      Set.of("commit", "close", "setAutoCommit", "abort");
  private static final Set<String> ENTITY_MANAGER_REFUSED = Set.of("close");
  private static final Set<String> TRANSACTION_REFUSED = Set.of("commit", "rollback", "begin");

  private TransactionGuards() {}

  /** The connection, refusing commit, rollback of the whole transaction, close, auto-commit. */
  static Connection connection(Connection connection) {
    return (Connection)
        Proxy.newProxyInstance(
            Connection.class.getClassLoader(),
            new Class<?>[] {Connection.class},
            (proxy, method, args) -> {
              String name = method.getName();
              boolean wholeRollback = name.equals("rollback") && (args == null || args.length == 0);
              if (wholeRollback || CONNECTION_REFUSED.contains(name)) {
                throw refused("Connection." + name);
              }
              return invoke(connection, method, args);
            });
  }

  /** The entity manager, refusing close and ending its transaction. */
  static EntityManager entityManager(EntityManager entityManager) {
    InvocationHandler handler =
        (proxy, method, args) -> {
          String name = method.getName();
          if (ENTITY_MANAGER_REFUSED.contains(name)) {
            throw refused("EntityManager." + name);
          }
          if (name.equals("getTransaction")) {
            return transaction(entityManager.getTransaction());
          }
          return invoke(entityManager, method, args);
        };
    return (EntityManager)
        Proxy.newProxyInstance(
            EntityManager.class.getClassLoader(), new Class<?>[] {EntityManager.class}, handler);
  }

  private static EntityTransaction transaction(EntityTransaction transaction) {
    return (EntityTransaction)
        Proxy.newProxyInstance(
            EntityTransaction.class.getClassLoader(),
            new Class<?>[] {EntityTransaction.class},
            (proxy, method, args) -> {
              if (TRANSACTION_REFUSED.contains(method.getName())) {
                throw refused("EntityTransaction." + method.getName());
              }
              return invoke(transaction, method, args);
            });
  }

  private static Object invoke(Object target, Method method, Object[] args) throws Throwable {
    try {
      return method.invoke(target, args);
    } catch (InvocationTargetException e) {
      throw e.getCause();
    }
  }

  private static IllegalStateException refused(String call) {
    return new IllegalStateException(
        call
            + " is not allowed in an inbox handler: the inbox owns the transaction and commits"
            + " or rolls it back after the batch (throw to roll back)");
  }
}
