package org.txkafka.demo;

import java.sql.SQLException;
import javax.sql.DataSource;

/** The live progress figures, counted in the two databases. */
final class Progress {
  private final DataSource orders;
  private final DataSource payments;

  /** sent: orders committed; published: their requests the relay has sent; applied: payments. */
  record Snapshot(long sent, long published, long applied, long paid) {}

  Progress(DataSource orders, DataSource payments) {
    this.orders = orders;
    this.payments = payments;
  }

  Snapshot snapshot() throws SQLException {
    long sent = Demo.queryLong(orders, "SELECT count(*) FROM purchase_order");
    long pending = Demo.queryLong(orders, "SELECT count(*) FROM txkafka_outbox");
    long paid = Demo.queryLong(orders, "SELECT count(*) FROM purchase_order WHERE status = 'PAID'");
    long applied = Demo.queryLong(payments, "SELECT count(*) FROM payment");
    return new Snapshot(sent, Math.max(0, sent - pending), applied, paid);
  }
}
