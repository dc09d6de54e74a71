package org.txkafka.demo.orders;

import jakarta.persistence.EntityManager;
import jakarta.persistence.EntityManagerFactory;
import jakarta.persistence.EntityTransaction;
import java.time.Clock;
import java.util.UUID;
import org.txkafka.demo.events.PaymentCompleted;
import org.txkafka.demo.events.PaymentRequested;
import org.txkafka.demo.events.Topics;
import org.txkafka.inbox.InboxContext;
import org.txkafka.inbox.InboxRecord;
import org.txkafka.outbox.Outbox;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxWriter;

/**
 * The orders service's business code: places orders (order row and payment request in one
 * transaction, through the outbox) and marks them paid when the payment confirmation comes in
 * (through the inbox, in the inbox's transaction). Thread-safe.
 */
public final class OrdersService {
  private final EntityManagerFactory entityManagerFactory;
  private final OutboxWriter outbox = Outbox.writer();
  private final Topics topics;
  private final Clock clock;

  /** The service on {@code entityManagerFactory}, sending to {@code topics}. */
  public OrdersService(EntityManagerFactory entityManagerFactory, Topics topics, Clock clock) {
    this.entityManagerFactory = entityManagerFactory;
    this.topics = topics;
    this.clock = clock;
  }

  /**
   * Places an order: the order row and the {@link PaymentRequested} message commit together or not
   * at all.
   */
  public UUID placeOrder(String customer, long amountCents) {
    EntityManager em = entityManagerFactory.createEntityManager();
    EntityTransaction tx = em.getTransaction();
    try {
      tx.begin();
      PurchaseOrder order =
          new PurchaseOrder(UUID.randomUUID(), customer, amountCents, clock.instant());
      em.persist(order);
      outbox.send(
          em,
          OutboxMessage.to(topics.paymentRequested())
              .key(order.getId().toString())
              .payload(new PaymentRequested(order.getId(), customer, amountCents).toJson())
              .header("content-type", "application/json")
              .build());
      tx.commit();
      return order.getId();
    } finally {
      if (tx.isActive()) {
        tx.rollback();
      }
      em.close();
    }
  }

  /**
   * Inbox handler for {@link PaymentCompleted}: marks the order paid in the inbox's transaction.
   *
   * @throws IllegalStateException if the order does not exist (retried, then dead-lettered)
   */
  public void onPaymentCompleted(InboxRecord record, InboxContext context) {
    PaymentCompleted completed = PaymentCompleted.fromJson(record.valueAsString());
    EntityManager em = context.entityManager();
    PurchaseOrder order = em.find(PurchaseOrder.class, completed.orderId());
    if (order == null) {
      throw new IllegalStateException("no order " + completed.orderId());
    }
    order.markPaid(completed.paymentId(), clock.instant());
  }
}
