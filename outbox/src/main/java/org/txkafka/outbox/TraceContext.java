package org.txkafka.outbox;

/**
 * The seam through which the outbox writer captures the caller's W3C trace context (<a
 * href="https://www.w3.org/TR/trace-context/">Trace Context</a>) and stores it with the message,
 * so that the record the relay publishes later carries the {@value #TRACEPARENT} (and {@value
 * #TRACESTATE}) headers of the business transaction that wrote it.
 *
 * <p>txkafka depends on no tracing library. Adapt yours in one line, for example with OpenTelemetry:
 *
 * <pre>{@code
 * TraceContext otel = () -> {
 *   SpanContext span = Span.current().getSpanContext();
 *   return span.isValid()
 *       ? "00-" + span.getTraceId() + "-" + span.getSpanId() + "-" + span.getTraceFlags().asHex()
 *       : null;
 * };
 * OutboxWriter writer = Outbox.writer("public", otel);
 * }</pre>
 *
 * <p>Implementations are called on the writer's calling thread, once per message, and must be
 * thread-safe and cheap. A value that is not a valid {@code traceparent} is ignored (never fails the
 * business transaction); a message that already has a {@value #TRACEPARENT} header keeps its own.
 */
@FunctionalInterface
public interface TraceContext {

  /** Header name of the W3C trace parent. */
  String TRACEPARENT = "traceparent";

  /** Header name of the W3C trace state. */
  String TRACESTATE = "tracestate";

  /** Captures nothing: the default of {@link Outbox#writer()}. */
  TraceContext NONE = () -> null;

  /**
   * The {@code traceparent} of the caller's current span, for example {@code
   * 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01}, or null when there is none.
   */
  String traceparent();

  /** The {@code tracestate} that goes with {@link #traceparent()}, or null (the default). */
  default String tracestate() {
    return null;
  }
}
