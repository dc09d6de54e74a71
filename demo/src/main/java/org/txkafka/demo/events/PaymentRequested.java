package org.txkafka.demo.events;

import java.util.UUID;

/**
 * Orders to payments: please capture {@code amountCents} for order {@code orderId}. Published
 * through the orders service's outbox to {@link Topics#paymentRequested()}, keyed by the order id.
 */
public record PaymentRequested(UUID orderId, String customer, long amountCents) {

  /** The wire form: a small JSON object. */
  public String toJson() {
    return "{\"orderId\":\"" + orderId + "\",\"customer\":\"" + Json.escape(customer)
        + "\",\"amountCents\":" + amountCents + "}";
  }

  /**
   * Reads the wire form.
   *
   * @throws IllegalArgumentException if a field is missing or malformed
   */
  public static PaymentRequested fromJson(String json) {
    return new PaymentRequested(
        UUID.fromString(Json.string(json, "orderId")),
        Json.string(json, "customer"),
        Json.number(json, "amountCents"));
  }
}
