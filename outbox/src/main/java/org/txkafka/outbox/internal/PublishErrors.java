package org.txkafka.outbox.internal;

import org.apache.kafka.common.InvalidRecordException;
import org.apache.kafka.common.errors.AuthorizationException;
import org.apache.kafka.common.errors.ClusterAuthorizationException;
import org.apache.kafka.common.errors.InvalidTopicException;
import org.apache.kafka.common.errors.RecordBatchTooLargeException;
import org.apache.kafka.common.errors.RecordTooLargeException;
import org.apache.kafka.common.errors.SerializationException;

/** Sorts publish errors into those that can never succeed for a row (park it) and the others. */
final class PublishErrors {
  private PublishErrors() {}

  /**
   * Whether {@code error} means this row can never be sent as it is: too large, an invalid topic
   * name, not authorised for its topic, refused by the broker's record validation. Such a row is parked instead
   * of blocking its share. Everything else (timeouts, unavailable brokers, unknown errors) is
   * treated as transient: the row stays pending and is tried again. So is a record the broker
   * refused for its timestamp ({@link #isTimestampRefusal}).
   */
  static boolean isPoison(Throwable error) {
    Throwable cause = error;
    for (int depth = 0; cause != null && depth < 5; depth++, cause = cause.getCause()) {
      if (isTimestampRefusal(cause)) {
        return false;
      }
      if (cause instanceof ClusterAuthorizationException) {
        // The producer's principal may not write idempotently at all (ACLs not set up yet): no
        // row's fault, and the producer is left unusable. Pending, the rows are sent by a new
        // producer once the ACLs are there; parked, every row of every topic would wait for an
        // operator.
        return false;
      }
      if (cause instanceof RecordTooLargeException
          || cause instanceof RecordBatchTooLargeException
          || cause instanceof InvalidTopicException
          || cause instanceof AuthorizationException
          || cause instanceof InvalidRecordException
          || cause instanceof SerializationException
          || cause instanceof MissingPartitionException) {
        return true;
      }
    }
    return false;
  }

  /**
   * Whether the broker refused the record for its timestamp (out of the topic's {@code
   * message.timestamp.before.max.ms} / {@code after.max.ms}). Kafka reports it as an invalid
   * record, but the producer stamps each record when the relay sends it: the relay host's clock is
   * off, not the row. Parked, every row would wait for an operator while the clock was off; left
   * pending, they are sent once it is right.
   */
  static boolean isTimestampRefusal(Throwable error) {
    String message = error.getMessage();
    return error instanceof InvalidRecordException
        && message != null
        && message.startsWith("Timestamp ")
        && message.contains("out of range");
  }

  /**
   * A row addressed to a partition its topic does not have. Kafka reports it as a metadata timeout
   * (the producer waits for metadata that would show the partition); the relay tells it apart by
   * the topic's partition count after that wait, and parks the row rather than block its share.
   */
  static final class MissingPartitionException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    MissingPartitionException(String topic, int partition, int partitions) {
      super(
          "partition "
              + partition
              + " of topic "
              + topic
              + " does not exist (the topic has "
              + partitions
              + " partitions); replay the row once the topic has it, or discard it");
    }
  }

  /** A short description for the last_error column: class and message of the root error. */
  static String describe(Throwable error) {
    Throwable cause = error;
    while (cause instanceof java.util.concurrent.ExecutionException
        && cause.getCause() != null
        && cause.getCause() != cause) {
      cause = cause.getCause();
    }
    String text = cause.getClass().getName() + ": " + cause.getMessage();
    return text.length() > 2000 ? text.substring(0, 2000) : text;
  }
}
