package org.txkafka.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.txkafka.demo.orders.PurchaseOrder;
import org.txkafka.demo.payments.Payment;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The demo's final check must be able to fail: an order never paid counts as lost, a second payment
 * or a second confirmation of one order counts as duplicated; a payment for an order that does not
 * exist, a paid order without a payment, a message left in an outbox, parked or dead-lettered are
 * problems even when nothing is lost or duplicated. Real PostgreSQL, rows written by SQL, two
 * fresh databases per test.
 */
class VerificationTest {
  private TestDatabase ordersDb;
  private TestDatabase paymentsDb;
  private ServiceDatabase orders;
  private ServiceDatabase payments;

  @BeforeEach
  void databases() {
    ordersDb = TestPostgres.shared().createDatabase();
    paymentsDb = TestPostgres.shared().createDatabase();
    orders = ServiceDatabase.open("orders", coordinates(ordersDb), true, List.of(PurchaseOrder.class));
    payments = ServiceDatabase.open("payments", coordinates(paymentsDb), true, List.of(Payment.class));
  }

  @AfterEach
  void close() {
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
    assertEquals(0, verification.unknownOrderPayments());
    assertEquals(0, verification.paidWithoutPayment());
    assertEquals(2, verification.problems().size(), verification.problems().toString());
  }

  @Test
  void correctRunHasNoProblems() throws Exception {
    ordersDb.execute(
        "INSERT INTO purchase_order (id, customer, amount_cents, status, created_at, paid_at, confirmations) VALUES"
            + " ('00000000-0000-0000-0000-00000000000a', 'x', 10, 'PAID', now(), now(), 1),"
            + " ('f0000000-0000-0000-0000-00000000000b', 'x', 20, 'PAID', now(), now(), 1)");
    paymentsDb.execute(
        "INSERT INTO payment (id, order_id, amount_cents, status, created_at) VALUES"
            + " (gen_random_uuid(), 'f0000000-0000-0000-0000-00000000000b', 20, 'CAPTURED', now()),"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 10, 'CAPTURED', now())");

    Verification verification = Verification.run(orders.dataSource(), payments.dataSource());

    assertEquals(List.of(), verification.problems());
    assertEquals(2, verification.paid());
  }

  @Test
  void paymentForAnUnknownOrderAndPaidOrderWithoutPaymentAreProblemsThoughCountsMatch() throws Exception {
    // Two orders, two paid, two payments for two distinct orders: lost=0 and duplicated=0. But the
    // payment of order b went to an order that does not exist (d), so b is paid without a payment.
    ordersDb.execute(
        "INSERT INTO purchase_order (id, customer, amount_cents, status, created_at, paid_at, confirmations) VALUES"
            + " ('00000000-0000-0000-0000-00000000000a', 'x', 10, 'PAID', now(), now(), 1),"
            + " ('00000000-0000-0000-0000-00000000000b', 'x', 20, 'PAID', now(), now(), 1)");
    paymentsDb.execute(
        "INSERT INTO payment (id, order_id, amount_cents, status, created_at) VALUES"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 10, 'CAPTURED', now()),"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000d', 20, 'CAPTURED', now())");

    Verification verification = Verification.run(orders.dataSource(), payments.dataSource());

    assertEquals(0, verification.lost());
    assertEquals(0, verification.duplicated());
    assertEquals(1, verification.unknownOrderPayments());
    assertEquals(1, verification.paidWithoutPayment());
    assertEquals(
        List.of("1 payments for orders the orders database does not have", "1 orders marked paid without a payment"),
        verification.problems());
  }

  @Test
  void messageLeftInAnOutboxParkedOrDeadLetteredIsAProblem() throws Exception {
    ordersDb.execute(
        "INSERT INTO purchase_order (id, customer, amount_cents, status, created_at, paid_at, confirmations) VALUES"
            + " ('00000000-0000-0000-0000-00000000000a', 'x', 10, 'PAID', now(), now(), 1)");
    paymentsDb.execute(
        "INSERT INTO payment (id, order_id, amount_cents, status, created_at) VALUES"
            + " (gen_random_uuid(), '00000000-0000-0000-0000-00000000000a', 10, 'CAPTURED', now())");
    ordersDb.execute(
        "INSERT INTO txkafka_outbox (message_id, share, topic, parked_at, last_error)"
            + " VALUES (gen_random_uuid(), 0, 't', now(), 'too large')");
    paymentsDb.execute(
        "INSERT INTO txkafka_inbox_dead_letter (consumer_group, message_id, topic, kafka_partition, kafka_offset,"
            + " attempts, last_error) VALUES ('g', 'm', 't', 0, 0, 3, 'boom')");

    Verification verification = Verification.run(orders.dataSource(), payments.dataSource());

    assertEquals(0, verification.lost());
    assertEquals(0, verification.duplicated());
    assertEquals(
        List.of("1 messages still in an outbox", "1 outbox messages parked", "1 inbox dead letters"),
        verification.problems());
    assertTrue(verification.unknownOrderPayments() == 0 && verification.paidWithoutPayment() == 0);
  }
}
