package org.txkafka.demo.events;

import java.util.UUID;

/**
 * Payments to orders: the payment {@code paymentId} for order {@code orderId} was captured.
 * Published through the payments service's outbox to {@link Topics#paymentCompleted()}, in the same
 * transaction that stored the payment, keyed by the order id.
 */
public record PaymentCompleted(UUID orderId, UUID paymentId, long amountCents) {

  /** The wire form: a small JSON object. */
  public String toJson() {
    return "{\"orderId\":\"" + orderId + "\",\"paymentId\":\"" + paymentId + "\",\"amountCents\":"
        + amountCents + "}";
  }

  /**
   * Reads the wire form.
   *
   * @throws IllegalArgumentException if a field is missing or malformed
   */
  public static PaymentCompleted fromJson(String json) {
    return new PaymentCompleted(
        UUID.fromString(Json.string(json, "orderId")),
        UUID.fromString(Json.string(json, "paymentId")),
        Json.number(json, "amountCents"));
  }
}
