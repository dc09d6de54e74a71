package org.txkafka.it.inbox;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.GeneratedValue;
import jakarta.persistence.GenerationType;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** The business entity of {@link InboxJpaTest}: one payment per consumed order. */
@Entity
@Table(name = "jpa_payment")
public class Payment {
  @Id
  @GeneratedValue(strategy = GenerationType.IDENTITY)
  private Long id;

  @Column(name = "order_id", nullable = false)
  private String orderId;

  @Column(name = "amount", nullable = false)
  private long amount;

  protected Payment() {}

  Payment(String orderId, long amount) {
    this.orderId = orderId;
    this.amount = amount;
  }

  Long id() {
    return id;
  }

  /** Changes the amount: a dirty entity that the next flush writes with an UPDATE. */
  void amount(long amount) {
    this.amount = amount;
  }
}
