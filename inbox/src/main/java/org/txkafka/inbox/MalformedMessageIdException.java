package org.txkafka.inbox;

import org.txkafka.TxKafkaException;

/**
 * A record carries a message id that cannot be used (empty, too long, not valid UTF-8). The inbox
 * dead-letters such a record at once with this exception's message as the reason.
 */
public class MalformedMessageIdException extends TxKafkaException {
  private static final long serialVersionUID = 1L;

  /** The reason, stating what is wrong with the id. */
  public MalformedMessageIdException(String message) {
    super(message);
  }
}
