package org.txkafka.outbox.internal;

import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.UUID;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.txkafka.outbox.Outbox;

/** One pending outbox row as the relay reads it. */
record OutboxRow(
    long id,
    UUID messageId,
    int share,
    String topic,
    Integer partition,
    byte[] key,
    byte[] payload,
    String[] headerNames,
    byte[][] headerValues,
    int attempts) {

  /** Reads the current row of a {@link OutboxSql#selectPending()} result. */
  static OutboxRow read(ResultSet rs) throws SQLException {
    int partition = rs.getInt("kafka_partition");
    Integer explicitPartition = rs.wasNull() ? null : partition;
    String[] names = null;
    byte[][] values = null;
    Array nameArray = rs.getArray("header_names");
    if (nameArray != null) {
      Object[] rawNames = (Object[]) nameArray.getArray();
      Object[] rawValues = (Object[]) rs.getArray("header_values").getArray();
      names = new String[rawNames.length];
      values = new byte[rawNames.length][];
      for (int i = 0; i < rawNames.length; i++) {
        names[i] = (String) rawNames[i];
        values[i] = (byte[]) rawValues[i];
      }
    }
    return new OutboxRow(
        rs.getLong("id"),
        rs.getObject("message_id", UUID.class),
        rs.getInt("share"),
        rs.getString("topic"),
        explicitPartition,
        rs.getBytes("record_key"),
        rs.getBytes("payload"),
        names,
        values,
        rs.getInt("attempts"));
  }

  /**
   * The Kafka record: topic, explicit partition if any, key, payload, the message-id header first
   * and then the stored headers in their order. The timestamp is left to the producer.
   */
  ProducerRecord<byte[], byte[]> toRecord() {
    RecordHeaders headers = new RecordHeaders();
    headers.add(
        Outbox.MESSAGE_ID_HEADER, messageId.toString().getBytes(StandardCharsets.UTF_8));
    if (headerNames != null) {
      for (int i = 0; i < headerNames.length; i++) {
        headers.add(headerNames[i], headerValues[i]);
      }
    }
    return new ProducerRecord<>(topic, partition, null, key, payload, headers);
  }
}
