package org.txkafka.benchmarks;

import com.gruelbox.transactionoutbox.Dialect;
import com.gruelbox.transactionoutbox.Instantiator;
import com.gruelbox.transactionoutbox.Persistor;
import com.gruelbox.transactionoutbox.Submitter;
import com.gruelbox.transactionoutbox.ThreadLocalContextTransactionManager;
import com.gruelbox.transactionoutbox.TransactionManager;
import com.gruelbox.transactionoutbox.TransactionOutbox;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.txkafka.outbox.Outbox;

/**
 * Peer of row 4: gruelbox transaction-outbox (Maven Central, {@code Dialect.POSTGRESQL_9}) used
 * the way its documentation shows: inside the business transaction the writer schedules a call,
 * {@code outbox.schedule(KafkaPublisher.class).publish(topic, key, payload, messageId)}; after
 * commit its submitter runs the call on an executor, and the call publishes to Kafka and waits for
 * the acknowledgement (without that wait a crash could lose a message it has already marked done,
 * so this is the at-least-once use, as ours). Its best settings here: {@code gruelboxThreads}
 * executor threads, a pool with a connection for each, and {@code linger.ms=0} because every send
 * is synchronous.
 */
final class GruelboxOutbox {
  private GruelboxOutbox() {}

  /** The scheduled call; gruelbox instantiates it through the instantiator below. */
  public static class KafkaPublisher {
    private final KafkaProducer<byte[], byte[]> producer;

    /** Needed by gruelbox's proxy; never used to publish. */
    public KafkaPublisher() {
      this(null);
    }

    KafkaPublisher(KafkaProducer<byte[], byte[]> producer) {
      this.producer = producer;
    }

    /** Publishes one message and waits for the broker's acknowledgement. */
    public void publish(String topic, String key, String payload, String messageId) {
      ProducerRecord<byte[], byte[]> record =
          new ProducerRecord<>(
              topic,
              key.getBytes(StandardCharsets.UTF_8),
              payload.getBytes(StandardCharsets.ISO_8859_1));
      record.headers().add(Outbox.MESSAGE_ID_HEADER, messageId.getBytes(StandardCharsets.UTF_8));
      try {
        producer.send(record).get();
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new IllegalStateException("interrupted while publishing", e);
      } catch (ExecutionException e) {
        throw new IllegalStateException("publish failed", e.getCause());
      }
    }
  }

  static Outcome run(BenchContext ctx, MessageSet set, String topic) {
    int threads = ctx.config.gruelboxThreads();
    int writerBatch = ctx.config.writerBatch();
    var producerProps = ctx.producerProperties();
    producerProps.put(ProducerConfig.LINGER_MS_CONFIG, "0");
    ThreadPoolExecutor executor =
        new ThreadPoolExecutor(
            threads, threads, 1, TimeUnit.MINUTES, new LinkedBlockingQueue<>());
    try (var pool = ctx.pool(threads + 2, "gruelbox");
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(producerProps)) {
      producer.partitionsFor(topic);
      KafkaPublisher publisher = new KafkaPublisher(producer);
      ThreadLocalContextTransactionManager transactions = TransactionManager.fromDataSource(pool);
      TransactionOutbox outbox =
          TransactionOutbox.builder()
              .transactionManager(transactions)
              .persistor(Persistor.forDialect(Dialect.POSTGRESQL_9))
              .instantiator(Instantiator.using(type -> publisher))
              .submitter(Submitter.withExecutor(executor))
              .build();
      outbox.initialize();
      HeapMonitor heap = HeapMonitor.start();
      long start = System.nanoTime();
      for (int from = 0; from < set.count(); from += writerBatch) {
        int first = from;
        int last = Math.min(set.count(), from + writerBatch);
        transactions.inTransaction(
            () -> {
              for (long i = first; i < last; i++) {
                outbox
                    .schedule(KafkaPublisher.class)
                    .publish(topic, set.key(i), set.payloadText(i), set.messageId(i).toString());
              }
            });
      }
      if (!ctx.awaitPublished(topic, set.count(), Duration.ofMinutes(30))) {
        throw new IllegalStateException("gruelbox did not publish " + set.count() + " messages");
      }
      Duration elapsed = Duration.ofNanos(System.nanoTime() - start);
      return new Outcome.Measured("gruelbox outbox", set.count(), elapsed, null, heap.stop());
    } finally {
      executor.shutdownNow();
    }
  }
}
