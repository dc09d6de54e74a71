package org.txkafka.inbox.internal;

/** Carries a handler's failure, and which record of the batch failed, out of a transaction. */
final class HandlerException extends Exception {
  private static final long serialVersionUID = 1L;

  /** Index of the failing record in the batch. */
  final int index;

  HandlerException(int index, Throwable cause) {
    super("handler failed on record " + index + " of the batch", cause);
    this.index = index;
  }
}
