package org.txkafka.demo.payments;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import java.time.Instant;
import java.util.UUID;

/** A captured payment of the payments service. */
@Entity
@Table(name = "payment")
public class Payment {

  @Id private UUID id;

  @Column(name = "order_id", nullable = false)
  private UUID orderId;

  @Column(name = "amount_cents", nullable = false)
  private long amountCents;

  @Column(nullable = false)
  private String status;

  @Column(name = "created_at", nullable = false)
  private Instant createdAt;

  /** For JPA. */
  protected Payment() {}

  /** A payment captured now. */
  public Payment(UUID id, UUID orderId, long amountCents, Instant createdAt) {
    this.id = id;
    this.orderId = orderId;
    this.amountCents = amountCents;
    this.status = "CAPTURED";
    this.createdAt = createdAt;
  }

  /** The payment id. */
  public UUID getId() {
    return id;
  }

  /** The order this payment is for. */
  public UUID getOrderId() {
    return orderId;
  }

  /** The amount captured, in cents. */
  public long getAmountCents() {
    return amountCents;
  }
}
