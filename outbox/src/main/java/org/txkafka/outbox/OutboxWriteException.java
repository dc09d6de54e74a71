package org.txkafka.outbox;

import org.txkafka.TxKafkaException;

/** Writing a message into the outbox table failed; the cause is the {@link java.sql.SQLException}. */
public class OutboxWriteException extends TxKafkaException {
  private static final long serialVersionUID = 1L;

  /** The failure, with its cause. */
  public OutboxWriteException(String message, Throwable cause) {
    super(message, cause);
  }
}
