package org.txkafka.demo.events;

/**
 * The two topics of the pipeline. Their names carry a run id, so that runs that share a broker
 * (the tests) never read each other's records.
 *
 * @param paymentRequested orders service to payments service
 * @param paymentCompleted payments service to orders service
 */
public record Topics(String paymentRequested, String paymentCompleted) {

  /** The topics of run {@code runId}. */
  public static Topics forRun(String runId) {
    return new Topics("demo.payment-requested." + runId, "demo.payment-completed." + runId);
  }
}
