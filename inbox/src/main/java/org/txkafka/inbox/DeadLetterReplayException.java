package org.txkafka.inbox;

import org.txkafka.TxKafkaException;

/**
 * Replaying a dead letter failed: the handler threw again (the cause) and its transaction rolled
 * back, so the dead letter stays pending. With {@link Inbox#replayAll()}, further failures are
 * attached as suppressed exceptions.
 */
public class DeadLetterReplayException extends TxKafkaException {
  private static final long serialVersionUID = 1L;

  private final long deadLetterId;

  /** The failure of dead letter {@code deadLetterId}. */
  public DeadLetterReplayException(long deadLetterId, String message, Throwable cause) {
    super(message, cause);
    this.deadLetterId = deadLetterId;
  }

  /** The id of the dead letter whose replay failed (the first one, for replayAll). */
  public long deadLetterId() {
    return deadLetterId;
  }
}
