package org.txkafka.it.outbox;

import jakarta.persistence.Entity;
import jakarta.persistence.GeneratedValue;
import jakarta.persistence.GenerationType;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** A business entity for {@link OutboxJpaTest}: written in the same transaction as its message. */
@Entity
@Table(name = "purchase_order")
public class PurchaseOrder {
  @Id
  @GeneratedValue(strategy = GenerationType.IDENTITY)
  private Long id;

  private String customer;

  private long amountCents;

  /** For JPA. */
  protected PurchaseOrder() {}

  /** A new order. */
  public PurchaseOrder(String customer, long amountCents) {
    this.customer = customer;
    this.amountCents = amountCents;
  }

  /** The generated id, after persist. */
  public Long getId() {
    return id;
  }

  /** Who ordered. */
  public String getCustomer() {
    return customer;
  }

  /** How much, in cents. */
  public long getAmountCents() {
    return amountCents;
  }
}
