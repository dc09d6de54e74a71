package org.txkafka.demo.orders;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.EnumType;
import jakarta.persistence.Enumerated;
import jakarta.persistence.Id;
import jakarta.persistence.Table;
import jakarta.persistence.Version;
import java.time.Instant;
import java.util.UUID;

/** An order of the orders service: placed, then paid when the payment confirmation arrives. */
@Entity
@Table(name = "purchase_order")
public class PurchaseOrder {

  /** The order's life cycle. */
  public enum Status {
    PLACED,
    PAID
  }

  @Id private UUID id;

  @Column(nullable = false)
  private String customer;

  @Column(name = "amount_cents", nullable = false)
  private long amountCents;

  @Enumerated(EnumType.STRING)
  @Column(nullable = false)
  private Status status;

  @Column(name = "created_at", nullable = false)
  private Instant createdAt;

  @Column(name = "paid_at")
  private Instant paidAt;

  @Column(name = "payment_id")
  private UUID paymentId;

  @Column(nullable = false)
  private int confirmations;

  @Version private long version;

  /** For JPA. */
  protected PurchaseOrder() {}

  /** A new placed order. */
  public PurchaseOrder(UUID id, String customer, long amountCents, Instant createdAt) {
    this.id = id;
    this.customer = customer;
    this.amountCents = amountCents;
    this.status = Status.PLACED;
    this.createdAt = createdAt;
  }

  /**
   * Applies a payment confirmation. Counts every confirmation applied, so that a confirmation
   * applied twice shows up in the demo's final check instead of vanishing in an idempotent update.
   */
  public void markPaid(UUID paymentId, Instant when) {
    this.confirmations++;
    this.status = Status.PAID;
    this.paymentId = paymentId;
    this.paidAt = when;
  }

  /** The order id. */
  public UUID getId() {
    return id;
  }

  /** The customer who placed the order. */
  public String getCustomer() {
    return customer;
  }

  /** The amount to pay, in cents. */
  public long getAmountCents() {
    return amountCents;
  }

  /** Placed or paid. */
  public Status getStatus() {
    return status;
  }

  /** How many payment confirmations were applied (1 once paid). */
  public int getConfirmations() {
    return confirmations;
  }
}
