package org.txkafka;

/**
 * The root of every exception txkafka throws itself. Platform exceptions ({@link
 * java.sql.SQLException}, {@code jakarta.persistence.PersistenceException}, Kafka's exceptions)
 * pass through unwrapped or as the cause, never with their state hidden.
 */
public class TxKafkaException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** An exception with a message that states what happened and the state involved. */
  public TxKafkaException(String message) {
    super(message);
  }

  /** An exception with a message and the cause it keeps. */
  public TxKafkaException(String message, Throwable cause) {
    super(message, cause);
  }
}
