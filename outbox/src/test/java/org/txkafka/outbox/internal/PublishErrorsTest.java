package org.txkafka.outbox.internal;

import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.kafka.common.InvalidRecordException;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.errors.ClusterAuthorizationException;
import org.apache.kafka.common.errors.NotLeaderOrFollowerException;
import org.apache.kafka.common.errors.RecordTooLargeException;
import org.apache.kafka.common.errors.TimeoutException;
import org.apache.kafka.common.errors.TopicAuthorizationException;
import org.apache.kafka.common.errors.UnknownServerException;
import org.junit.jupiter.api.Test;

/** Which publish errors park a row (it can never be sent as it is) and which leave it pending. */
class PublishErrorsTest {

  @Test
  void errorsOfTheRowItselfParkIt() {
    assertTrue(PublishErrors.isPoison(new RecordTooLargeException("too large")));
    assertTrue(PublishErrors.isPoison(new InvalidRecordException("Compacted topic cannot accept"
        + " message without key in topic partition t-0.")));
    assertTrue(PublishErrors.isPoison(new TopicAuthorizationException("not authorised for t")));
    assertTrue(
        PublishErrors.isPoison(new KafkaException("wrapped", new RecordTooLargeException("big"))),
        "found in the cause chain");
  }

  @Test
  void errorsOfTheProducerOrTheClusterLeaveItPending() {
    assertFalse(PublishErrors.isPoison(new TimeoutException("expired")));
    assertFalse(PublishErrors.isPoison(new NotLeaderOrFollowerException("moved")));
    assertFalse(PublishErrors.isPoison(new UnknownServerException("broker bug")));
    assertFalse(
        PublishErrors.isPoison(new ClusterAuthorizationException("no IDEMPOTENT_WRITE")),
        "the producer may not write at all: no row's fault, and the next producer may");
    assertFalse(
        PublishErrors.isPoison(
            new KafkaException("aborted", new ClusterAuthorizationException("no idempotent write"))),
        "also when wrapped");
    assertFalse(
        PublishErrors.isPoison(new InvalidRecordException(
            "Timestamp 0 of message with offset 0 is out of range. The timestamp should be within"
                + " [1, 2]")),
        "refused for the relay's clock, not the row");
  }
}
