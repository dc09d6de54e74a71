package org.txkafka.demo;

import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import javax.sql.DataSource;

/**
 * The final check, computed from the two databases with SQL, never from counters in memory.
 *
 * <ul>
 *   <li>lost: orders committed but not paid (a request or a reply that never arrived).
 *   <li>duplicated: payments beyond one per order, plus confirmations beyond one per order (a
 *       request or a reply applied twice).
 *   <li>unknown-order payments: payments whose order is not in the orders database (a request that
 *       was never committed by the orders service, or one delivered to the wrong service).
 *   <li>paid without payment: orders marked paid with no payment captured for them.
 * </ul>
 *
 * <p>The two databases are compared by a merge of their order ids, both read in the same order
 * ({@code COLLATE "C"} on the text of the ids), streamed, so a large run does not hold them in memory.
 * A run is correct only if {@link #problems()} is empty: besides lost and duplicated, nothing may be
 * left in an outbox, parked, or dead-lettered.
 */
record Verification(
    long orders,
    long paid,
    long confirmations,
    long extraConfirmations,
    long payments,
    long paymentOrders,
    long orderedCents,
    long paidOrderCents,
    long capturedCents,
    double p50Millis,
    double p99Millis,
    long ordersOutboxPending,
    long paymentsOutboxPending,
    long parked,
    long deadLetters,
    long unknownOrderPayments,
    long paidWithoutPayment) {

  long lost() {
    return orders - paid;
  }

  long duplicated() {
    return (payments - paymentOrders) + extraConfirmations;
  }

  /** Every way the run is wrong, one line each; empty when the run is correct. */
  List<String> problems() {
    List<String> problems = new ArrayList<>();
    if (lost() != 0) {
      problems.add(lost() + " orders not paid");
    }
    if (duplicated() != 0) {
      problems.add(duplicated() + " payments or confirmations applied more than once");
    }
    if (unknownOrderPayments != 0) {
      problems.add(unknownOrderPayments + " payments for orders the orders database does not have");
    }
    if (paidWithoutPayment != 0) {
      problems.add(paidWithoutPayment + " orders marked paid without a payment");
    }
    if (ordersOutboxPending + paymentsOutboxPending != 0) {
      problems.add((ordersOutboxPending + paymentsOutboxPending) + " messages still in an outbox");
    }
    if (parked != 0) {
      problems.add(parked + " outbox messages parked");
    }
    if (deadLetters != 0) {
      problems.add(deadLetters + " inbox dead letters");
    }
    return problems;
  }

  static Verification run(DataSource orders, DataSource payments) throws SQLException {
    try (Connection o = orders.getConnection();
        Connection p = payments.getConnection();
        Statement os = o.createStatement();
        Statement ps = p.createStatement()) {
      long orderCount;
      long paid;
      long confirmations;
      long extra;
      long orderedCents;
      long paidCents;
      double p50;
      double p99;
      try (ResultSet rs =
          os.executeQuery(
              "SELECT count(*), count(*) FILTER (WHERE status = 'PAID'),"
                  + " coalesce(sum(confirmations), 0), coalesce(sum(greatest(confirmations - 1, 0)), 0),"
                  + " coalesce(sum(amount_cents), 0),"
                  + " coalesce(sum(amount_cents) FILTER (WHERE status = 'PAID'), 0),"
                  + " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM paid_at - created_at)),"
                  + " percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM paid_at - created_at))"
                  + " FROM purchase_order")) {
        rs.next();
        orderCount = rs.getLong(1);
        paid = rs.getLong(2);
        confirmations = rs.getLong(3);
        extra = rs.getLong(4);
        orderedCents = rs.getLong(5);
        paidCents = rs.getLong(6);
        p50 = rs.getDouble(7) * 1000;
        p99 = rs.getDouble(8) * 1000;
      }
      long paymentCount;
      long paymentOrders;
      long captured;
      try (ResultSet rs =
          ps.executeQuery(
              "SELECT count(*), count(DISTINCT order_id), coalesce(sum(amount_cents), 0) FROM payment")) {
        rs.next();
        paymentCount = rs.getLong(1);
        paymentOrders = rs.getLong(2);
        captured = rs.getLong(3);
      }
      long ordersPending = Demo.queryLong(orders, "SELECT count(*) FROM txkafka_outbox");
      long paymentsPending = Demo.queryLong(payments, "SELECT count(*) FROM txkafka_outbox");
      long parked =
          Demo.queryLong(orders, "SELECT count(*) FROM txkafka_outbox WHERE parked_at IS NOT NULL")
              + Demo.queryLong(payments, "SELECT count(*) FROM txkafka_outbox WHERE parked_at IS NOT NULL");
      long deadLetters =
          Demo.queryLong(orders, "SELECT count(*) FROM txkafka_inbox_dead_letter")
              + Demo.queryLong(payments, "SELECT count(*) FROM txkafka_inbox_dead_letter");
      long[] mismatches = compareOrderIds(o, p);
      return new Verification(
          orderCount, paid, confirmations, extra, paymentCount, paymentOrders, orderedCents,
          paidCents, captured, p50, p99, ordersPending, paymentsPending, parked, deadLetters,
          mismatches[0], mismatches[1]);
    }
  }

  /**
   * Merges the orders' ids with the payments' order ids, both sorted the same way: returns the
   * payments whose order does not exist, and the paid orders that have no payment.
   */
  private static long[] compareOrderIds(Connection orders, Connection payments) throws SQLException {
    boolean ordersAutoCommit = orders.getAutoCommit();
    boolean paymentsAutoCommit = payments.getAutoCommit();
    // A cursor (fetch size honoured) needs a transaction in the PostgreSQL driver.
    orders.setAutoCommit(false);
    payments.setAutoCommit(false);
    try (Statement os = orders.createStatement();
        Statement ps = payments.createStatement()) {
      os.setFetchSize(10_000);
      ps.setFetchSize(10_000);
      try (ResultSet order =
              os.executeQuery(
                  "SELECT id::text COLLATE \"C\" AS k, status = 'PAID' FROM purchase_order ORDER BY k");
          ResultSet payment =
              ps.executeQuery(
                  "SELECT order_id::text COLLATE \"C\" AS k, count(*) FROM payment GROUP BY k ORDER BY k")) {
        long unknownOrderPayments = 0;
        long paidWithoutPayment = 0;
        boolean hasOrder = order.next();
        boolean hasPayment = payment.next();
        while (hasOrder || hasPayment) {
          int cmp =
              !hasOrder ? 1 : !hasPayment ? -1 : order.getString(1).compareTo(payment.getString(1));
          if (cmp < 0) {
            if (order.getBoolean(2)) {
              paidWithoutPayment++;
            }
            hasOrder = order.next();
          } else if (cmp > 0) {
            unknownOrderPayments += payment.getLong(2);
            hasPayment = payment.next();
          } else {
            hasOrder = order.next();
            hasPayment = payment.next();
          }
        }
        return new long[] {unknownOrderPayments, paidWithoutPayment};
      }
    } finally {
      orders.rollback();
      payments.rollback();
      orders.setAutoCommit(ordersAutoCommit);
      payments.setAutoCommit(paymentsAutoCommit);
    }
  }
}
