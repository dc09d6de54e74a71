package org.txkafka.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.txkafka.demo.orders.PurchaseOrder;
import org.txkafka.demo.payments.Payment;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The demo's final check must be able to fail: an order never paid counts as lost, a second payment
 * or a second confirmation of one order counts as duplicated. Real PostgreSQL, rows written by SQL.
 */
class VerificationTest {
  private static TestDatabase ordersDb;
  private static TestDatabase paymentsDb;
  private static ServiceDatabase orders;
  private static ServiceDatabase payments;

  @BeforeAll
  static void databases() {
    ordersDb = TestPostgres.shared().createDatabase();
    paymentsDb = TestPostgres.shared().createDatabase();
    orders = ServiceDatabase.open("orders", coordinates(ordersDb), true, List.of(PurchaseOrder.class));
    payments = ServiceDatabase.open("payments", coordinates(paymentsDb), true, List.of(Payment.class));
  }

  @AfterAll
  static void close() {
    orders.close();
    payments.close();
    ordersDb.close();
    paymentsDb.close();
  }

  private static ServiceDatabase.DbCoordinates coordinates(TestDatabase db) {
    return new ServiceDatabase.DbCoordinates(db.jdbcUrl(), db.user(), db.password());
  }

  @Test
  void unpaidOrderIsLostAndSecondPaymentOrConfirmationIsDuplicated() throws Exception {
    // a: paid once, correct. b: never paid (lost). c: two payments and two confirmations.
    ordersDb.execute(
        "INSERT INTO purchase_order (id, customer, amount_cents, status, created_at, paid_at, confirmations) VALUES"
            + " ('00000000-0000-0000-0000-00000000000a', 'x', 10, 'PAID', now(), now(), 1),"
            + " ('00000000-0000-0000-0000-00000000000b', 'x', 20, 'PLACED', now(), NULL, 0),"
            + " ('00000000-0000-0000-0000-00000000000c', 'x', 30, 'PAID', now(), now(), 2)");
    paymentsDb.execute(
        "INSERT INTO payment (id, order_id, amount_cents, status, created_at) VALUES"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 10, 'CAPTURED', now()),"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000c', 30, 'CAPTURED', now()),"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000c', 30, 'CAPTURED', now())");

    Verification verification = Verification.run(orders.dataSource(), payments.dataSource());

    assertEquals(3, verification.orders());
    assertEquals(2, verification.paid());
    assertEquals(1, verification.lost());
    assertEquals(2, verification.duplicated(), "one extra payment + one extra confirmation");
  }
}
