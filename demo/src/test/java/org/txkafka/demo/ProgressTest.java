package org.txkafka.demo;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.StringSerializer;
import org.junit.jupiter.api.Test;
import org.txkafka.demo.payments.Payment;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * The demo verifies only once nothing is in flight; what is unconsumed is read from the real broker's
 * end offsets and the inbox's stored offsets, so a record still in a topic keeps the demo waiting.
 */
class ProgressTest {

  @Test
  void recordsBeyondTheStoredOffsetsAreUnconsumed() throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("progress");
    broker.createTopic(topic, 2);
    Properties props = new Properties();
    props.put("bootstrap.servers", broker.bootstrapServers());
    try (KafkaProducer<String, String> producer =
        new KafkaProducer<>(props, new StringSerializer(), new StringSerializer())) {
      for (int i = 0; i < 5; i++) {
        producer.send(new ProducerRecord<>(topic, i % 2, null, "m" + i)).get();
      }
    }
    try (TestDatabase db = TestPostgres.shared().createDatabase();
        ServiceDatabase service =
            ServiceDatabase.open(
                "payments",
                new ServiceDatabase.DbCoordinates(db.jdbcUrl(), db.user(), db.password()),
                true,
                List.of(Payment.class))) {
      assertEquals(5, Progress.unconsumed(service.dataSource(), topic, broker), "no offset stored yet");

      db.execute("INSERT INTO txkafka_inbox_offset (consumer_group, topic, kafka_partition, next_offset)"
          + " VALUES ('g', '" + topic + "', 0, 3), ('g', 'another-topic', 0, 100)");
      assertEquals(2, Progress.unconsumed(service.dataSource(), topic, broker), "partition 1 not read");

      db.execute("INSERT INTO txkafka_inbox_offset (consumer_group, topic, kafka_partition, next_offset)"
          + " VALUES ('g', '" + topic + "', 1, 2)");
      assertEquals(0, Progress.unconsumed(service.dataSource(), topic, broker));
    }
  }
}
