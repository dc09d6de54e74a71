package org.txkafka.demo;

import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import javax.sql.DataSource;

/**
 * The final check, computed from the two databases with SQL, never from counters in memory.
 *
 * <ul>
 *   <li>lost: orders committed but not paid (a request or a reply that never arrived).
 *   <li>duplicated: payments beyond one per order, plus confirmations beyond one per order (a
 *       request or a reply applied twice).
 * </ul>
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
    long deadLetters) {

  long lost() {
    return orders - paid;
  }

  long duplicated() {
    return (payments - paymentOrders) + extraConfirmations;
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
      return new Verification(
          orderCount, paid, confirmations, extra, paymentCount, paymentOrders, orderedCents,
          paidCents, captured, p50, p99, ordersPending, paymentsPending, parked, deadLetters);
    }
  }
}
