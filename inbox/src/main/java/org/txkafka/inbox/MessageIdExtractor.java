package org.txkafka.inbox;

import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Objects;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.common.header.Header;
import org.txkafka.outbox.Outbox;

/**
 * Finds the message id the inbox deduplicates on. Implementations must be thread-safe and
 * deterministic: the same record must always give the same id.
 *
 * <p>Return null when the record has no id: the inbox then uses an id derived from topic, partition
 * and offset, which removes redelivery of the same offset but not a producer's resend. Throw {@link
 * MalformedMessageIdException} when the record carries an id that cannot be used; the record then
 * goes straight to the dead-letter path with that reason. Ids that are empty, longer than {@value
 * #MAX_LENGTH} characters or contain a NUL character are malformed too.
 */
@FunctionalInterface
public interface MessageIdExtractor {

  /** The longest message id accepted, in characters. */
  int MAX_LENGTH = 255;

  /**
   * The message id of {@code record}, or null if it has none.
   *
   * @throws MalformedMessageIdException if the record carries an unusable id
   */
  String messageId(ConsumerRecord<byte[], byte[]> record);

  /**
   * The default: the last header {@link Outbox#MESSAGE_ID_HEADER} (set by the txkafka outbox
   * relay), decoded as strict UTF-8.
   */
  static MessageIdExtractor outboxHeader() {
    return header(Outbox.MESSAGE_ID_HEADER);
  }

  /**
   * The last header named {@code headerName}, decoded as strict UTF-8. A missing header gives null;
   * a header with a null value or bytes that are not valid UTF-8 is malformed.
   */
  static MessageIdExtractor header(String headerName) {
    Objects.requireNonNull(headerName, "headerName");
    return record -> {
      Header header = record.headers().lastHeader(headerName);
      if (header == null) {
        return null;
      }
      if (header.value() == null) {
        throw new MalformedMessageIdException("header " + headerName + " has a null value");
      }
      try {
        return StandardCharsets.UTF_8
            .newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .onUnmappableCharacter(CodingErrorAction.REPORT)
            .decode(ByteBuffer.wrap(header.value()))
            .toString();
      } catch (CharacterCodingException e) {
        throw new MalformedMessageIdException(
            "header " + headerName + " is not valid UTF-8 (" + header.value().length + " bytes)");
      }
    };
  }
}
