package org.txkafka.it.inbox;

import jakarta.persistence.Column;
import jakarta.persistence.Entity;
import jakarta.persistence.Id;
import jakarta.persistence.Table;

/** An account of {@link InboxJpaTest}: records debit it through JPA or through JDBC. */
@Entity
@Table(name = "jpa_account")
public class Account {
  @Id
  @Column(name = "id", nullable = false)
  private String id;

  @Column(name = "balance", nullable = false)
  private long balance;

  protected Account() {}

  void debit(long amount) {
    balance -= amount;
  }
}
