package org.txkafka.demo.payments;

import jakarta.persistence.EntityManager;
import java.time.Clock;
import java.util.UUID;
import org.txkafka.demo.events.PaymentCompleted;
import org.txkafka.demo.events.PaymentRequested;
import org.txkafka.demo.events.Topics;
import org.txkafka.inbox.InboxContext;
import org.txkafka.inbox.InboxRecord;
import org.txkafka.outbox.OutboxMessage;

/**
 * The payments service's business code: an inbox handler that captures a payment for each
 * {@link PaymentRequested} and replies with {@link PaymentCompleted} through the outbox, both in
 * the inbox's transaction (consume, change state, produce: effectively once). Thread-safe.
 */
public final class PaymentsService {
  private final Topics topics;
  private final Clock clock;

  /** The service replying to {@code topics}, with {@code clock} for payment timestamps. */
  public PaymentsService(Topics topics, Clock clock) {
    this.topics = topics;
    this.clock = clock;
  }

  /** Inbox handler for {@link PaymentRequested}. */
  public void onPaymentRequested(InboxRecord record, InboxContext context) {
    PaymentRequested request = PaymentRequested.fromJson(record.valueAsString());
    EntityManager em = context.entityManager();
    Payment payment =
        new Payment(UUID.randomUUID(), request.orderId(), request.amountCents(), clock.instant());
    em.persist(payment);
    context.send(
        OutboxMessage.to(topics.paymentCompleted())
            .key(request.orderId().toString())
            .payload(
                new PaymentCompleted(request.orderId(), payment.getId(), request.amountCents())
                    .toJson())
            .header("content-type", "application/json")
            .build());
  }
}
