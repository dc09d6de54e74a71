package org.txkafka.benchmarks;

import java.io.PrintStream;
import java.time.Duration;
import java.util.concurrent.Callable;

/**
 * The seven rows of issue 5, each our side beside its baseline on the same messages. A side that
 * throws is reported as not run with the error (and its stack trace on standard error): one broken
 * side never hides the other rows.
 */
final class Rows {
  private final BenchContext ctx;
  private final PrintStream out;
  private final Profiler profiler;
  private Outcome inboxOutcome;
  private int currentRow;

  /** {@code profiler} is null unless {@code --profile} was given. */
  Rows(BenchContext ctx, PrintStream out, Profiler profiler) {
    this.ctx = ctx;
    this.out = out;
    this.profiler = profiler;
  }

  RowResult run(int row) {
    currentRow = row;
    out.println("-- row " + row + " ...");
    out.flush();
    return switch (row) {
      case 1 -> inboxVsNaive();
      case 2 -> inboxVsCeiling();
      case 3 -> relayVsRawProducer();
      case 4 -> relayVsGruelbox();
      case 5 -> endToEndLatency();
      case 6 -> writerOverhead();
      case 7 -> inboxMemory();
      default -> throw new IllegalArgumentException("no row " + row);
    };
  }

  private Outcome side(String label, Callable<Outcome> side) {
    jdk.jfr.Recording recording = null;
    try {
      recording = profiler == null ? null : profiler.start();
      Outcome outcome = side.call();
      if (recording != null) {
        profiler.stopAndSummarise(recording, "row" + currentRow + "-" + label);
        recording = null;
      }
      out.println(
          "   " + label + ": " + (outcome instanceof Outcome.NotRun n ? "not run: " + n.reason() : "done"));
      return outcome;
    } catch (Exception | AssertionError e) {
      e.printStackTrace();
      return new Outcome.NotRun(label, "failed: " + e);
    } finally {
      if (recording != null) {
        recording.close();
      }
    }
  }

  /**
   * Runs a side once on the first {@code count} messages of a set of its own (fresh topics,
   * tables, consumer group), unmeasured, so that the measured run finds this JVM's JIT done with
   * the side's code, as in a service that has been running for a while. Every side of rows 1 to 4
   * gets the same share of warm-up, ours and the baselines alike. Without it the first side of a
   * run paid for the compilation (session 8: in a cold `--rows 2`, the JIT compiler threads used
   * 1.8 of the benchmark JVM's 3.1 CPU-seconds of the inbox's drain, the inbox's own threads 0.7).
   */
  private void warmUp(String label, int count, WarmUp side) {
    if (count == 0) {
      return;
    }
    long start = System.nanoTime();
    try {
      side.run(ctx.config.messageSet(100 + currentRow).withCount(count));
      out.printf(
          java.util.Locale.ROOT,
          "   warm-up %s: %d messages in %.1f s, not counted%n",
          label,
          count,
          (System.nanoTime() - start) / 1e9);
    } catch (Exception | AssertionError e) {
      e.printStackTrace();
      out.println("   warm-up " + label + ": failed (" + e + "); the measured side runs cold");
    }
  }

  @FunctionalInterface
  private interface WarmUp {
    void run(MessageSet set) throws Exception;
  }

  private RowResult inboxVsNaive() {
    MessageSet set = ctx.config.messageSet(1);
    String topic = ctx.topic("bench-inbox");
    ctx.produce(topic, set);
    String inboxTable = ctx.businessTable("bench_event_inbox");
    String naiveTable = ctx.businessTable("bench_event_naive");
    warmUp("inbox", ctx.config.warmupCount(set.count()), warm -> {
      String warmTopic = ctx.topic("warmup-inbox");
      ctx.produce(warmTopic, warm);
      OurComponents.inbox(ctx, warmTopic, ctx.businessTable("warmup_event_inbox"), warm.count());
    });
    warmUp("naive consumer", ctx.config.warmupCount(ctx.config.naiveLimit()), warm -> {
      String warmTopic = ctx.topic("warmup-naive");
      ctx.produce(warmTopic, warm);
      NaiveConsumer.run(
          ctx, warmTopic, ctx.businessTable("warmup_event_naive"), warm.count(), Duration.ofMinutes(20));
    });
    inboxOutcome =
        side("inbox", () -> OurComponents.inbox(ctx, topic, inboxTable, set.count()));
    Outcome naive =
        side(
            "naive consumer",
            () -> NaiveConsumer.run(ctx, topic, naiveTable, ctx.config.naiveLimit(), Duration.ofMinutes(20)));
    return new RowResult(1, "inbox vs naive consumer")
        .side(inboxOutcome)
        .side(naive)
        .ratio(
            "inbox_vs_naive_throughput",
            RowResult.throughputRatio(inboxOutcome, naive),
            ">= 10",
            true,
            10)
        .note(
            "naive: KafkaConsumer, one JDBC tx per record, commitSync per poll (at-least-once);"
                + " it applies the first " + ctx.config.naiveLimit() + " of the same records");
  }

  private RowResult inboxVsCeiling() {
    MessageSet set = ctx.config.messageSet(1);
    String table = ctx.businessTable("bench_event_ceiling");
    warmUp("JDBC ceiling", ctx.config.warmupCount(set.count()), warm ->
        JdbcBatchCeiling.run(ctx, warm, ctx.businessTable("warmup_event_ceiling")));
    Outcome ceiling = side("JDBC ceiling", () -> JdbcBatchCeiling.run(ctx, set, table));
    return new RowResult(2, "inbox vs JDBC batch ceiling")
        .side(inboxOutcome)
        .side(ceiling)
        .ratio(
            "inbox_vs_jdbc_ceiling_throughput",
            RowResult.throughputRatio(inboxOutcome, ceiling),
            ">= 0.5",
            true,
            0.5)
        .note(
            "ceiling: the same business rows, plain JDBC batches of " + ctx.config.dbBatch()
                + " per tx on " + ctx.config.dbConnections() + " connections, no Kafka/inbox/offsets");
  }

  private RowResult relayVsRawProducer() {
    MessageSet set = ctx.config.messageSet(3);
    String relayTopic = ctx.topic("bench-relay");
    String rawTopic = ctx.topic("bench-raw");
    warmUp("outbox relay", ctx.config.warmupCount(set.count()), warm ->
        OurComponents.relayDrain(ctx, warm, ctx.topic("warmup-relay")));
    warmUp("raw producer", ctx.config.warmupCount(set.count()), warm ->
        RawProducer.run(ctx, warm, ctx.topic("warmup-raw")));
    Outcome relay = side("outbox relay", () -> OurComponents.relayDrain(ctx, set, relayTopic));
    Outcome raw = side("raw producer", () -> RawProducer.run(ctx, set, rawTopic));
    return new RowResult(3, "outbox relay vs raw KafkaProducer")
        .side(relay)
        .side(raw)
        .ratio(
            "relay_vs_raw_producer_throughput",
            RowResult.throughputRatio(relay, raw),
            ">= 0.6",
            true,
            0.6)
        .note(
            "relay drains a prefilled outbox of the messages; raw producer sends them from memory;"
                + " latency of the raw side is send to ack");
  }

  private RowResult relayVsGruelbox() {
    MessageSet set = ctx.config.messageSet(4).withCount(ctx.config.liveMessages());
    String relayTopic = ctx.topic("bench-relay-live");
    String gruelboxTopic = ctx.topic("bench-gruelbox");
    warmUp("outbox relay", ctx.config.warmupCount(set.count()), warm ->
        OurComponents.relayLive(ctx, warm, ctx.topic("warmup-relay-live")));
    warmUp("gruelbox", ctx.config.warmupCount(set.count()), warm ->
        GruelboxOutbox.run(ctx, warm, ctx.topic("warmup-gruelbox")));
    Outcome relay = side("outbox relay", () -> OurComponents.relayLive(ctx, set, relayTopic));
    Outcome gruelbox = side("gruelbox", () -> GruelboxOutbox.run(ctx, set, gruelboxTopic));
    return new RowResult(4, "outbox relay vs gruelbox outbox")
        .side(relay)
        .side(gruelbox)
        .ratio(
            "relay_vs_gruelbox_throughput",
            RowResult.throughputRatio(relay, gruelbox),
            ">= 5",
            true,
            5)
        .note(
            "both: one writer thread commits " + ctx.config.writerBatch()
                + " messages per tx while the publisher runs; time until all are on Kafka;"
                + " gruelbox: " + ctx.config.gruelboxThreads() + " executor threads, send().get()");
  }

  private RowResult endToEndLatency() {
    java.util.List<String> splits = new java.util.ArrayList<>();
    Outcome notify = side("relay LISTEN/NOTIFY", () -> OurComponents.endToEnd(ctx, true, splits));
    Outcome polling = side("relay polling only", () -> OurComponents.endToEnd(ctx, false, splits));
    double p99 = notify instanceof Outcome.Measured m ? m.p99Millis() : Double.NaN;
    double ratio =
        notify instanceof Outcome.Measured n && polling instanceof Outcome.Measured p
            ? n.p99Millis() / p.p99Millis()
            : Double.NaN;
    RowResult result = new RowResult(5, "e2e latency commit -> far inbox commit");
    splits.forEach(result::note);
    return result
        .side(notify)
        .side(polling)
        .ratio("e2e_p99_ms", p99, "<= 50 ms", false, 50)
        .ratio("e2e_p99_notify_vs_polling", ratio, "<= 1", false, 1)
        .note(
            "steady load " + ctx.config.e2eRate() + " msg/s for " + ctx.config.e2eDuration().toSeconds()
                + " s per side, one message per writer tx; latency from the writer's commit to the"
                + " far inbox's commit of the business row (InboxListener.onCommitted)");
  }

  private RowResult writerOverhead() {
    MessageSet set = ctx.config.messageSet(6);
    String topic = ctx.topic("bench-writer");
    Outcome[] sides = new Outcome[4];
    try {
      sides = WriterOverhead.run(ctx, set, topic);
    } catch (Exception | AssertionError e) {
      e.printStackTrace();
      sides[0] = new Outcome.NotRun("tx + outbox send", "failed: " + e);
      sides[1] = new Outcome.NotRun("tx without outbox", "failed: " + e);
      sides[2] = new Outcome.NotRun("(outbox, relay waits)", "failed: " + e);
      sides[3] = new Outcome.NotRun("(insert, no trigger)", "failed: " + e);
    }
    double ratio = meanTimeRatio(sides[0], sides[1]);
    double floor = meanTimeRatio(sides[3], sides[1]);
    return new RowResult(6, "writer overhead")
        .side(sides[0])
        .side(sides[1])
        .side(sides[2])
        .side(sides[3])
        .ratio("writer_overhead_tx_time", ratio, "<= 1.2", false, 1.2)
        .note(
            "one connection, tx = insert one order row (+ one OutboxWriter.send), commit;"
                + " sides interleaved in blocks of 200; ratio of mean tx time (first two sides);"
                + " no relay runs, so no NOTIFY is sent; the last two sides are diagnosis only:"
                + " the send while a relay waits (NOTIFY at commit), and the same INSERT with"
                + " every outbox trigger disabled")
        .note(
            Double.isNaN(floor)
                ? "floor: not run"
                : String.format(
                    java.util.Locale.ROOT,
                    "floor: the INSERT alone (no trigger) already costs %.3f x the transaction"
                        + " without outbox; any outbox writing a row in the business transaction"
                        + " pays it",
                    floor));
  }

  /** Mean transaction time of {@code ours} over {@code baseline}, or NaN if either did not run. */
  private static double meanTimeRatio(Outcome ours, Outcome baseline) {
    return ours instanceof Outcome.Measured o && baseline instanceof Outcome.Measured b
        ? o.latencies().meanMillis() / b.latencies().meanMillis()
        : Double.NaN;
  }

  private RowResult inboxMemory() {
    int backlog = ctx.config.backlog();
    Outcome full = side("inbox full backlog", () -> OurComponents.inboxDrainHeap(ctx, backlog));
    Outcome tenth =
        side("inbox tenth backlog", () -> OurComponents.inboxDrainHeap(ctx, backlog / 10));
    boolean measured =
        full instanceof Outcome.Measured f
            && tenth instanceof Outcome.Measured t
            && f.heap() != null
            && t.heap() != null
            && f.heap().peakLiveBytes() > 0
            && t.heap().peakLiveBytes() > 0;
    double growth = Double.NaN;
    double sameCountGrowth = Double.NaN;
    int samples = 0;
    String thirds = "not run";
    if (measured) {
      HeapMonitor.HeapPeak f = ((Outcome.Measured) full).heap();
      HeapMonitor.HeapPeak t = ((Outcome.Measured) tenth).heap();
      growth = (double) f.peakLiveBytes() / t.peakLiveBytes();
      samples = t.liveSamples().size();
      // Diagnosis only: the full side runs about ten times longer and so takes more samples.
      sameCountGrowth = samples > 0 ? f.expectedPeakOf(samples) / t.peakLiveBytes() : Double.NaN;
      thirds = peaksByThird(f.liveSamples()) + " (full) and " + peaksByThird(t.liveSamples()) + " (tenth)";
    }
    return new RowResult(7, "inbox peak heap vs backlog")
        .side(full)
        .side(tenth)
        .ratio("inbox_live_heap_backlog_x10", growth, "<= 1.5", false, 1.5)
        .note(
            "each side drains its backlog in a child JVM with -Xmx" + ctx.config.heapMax()
                + "; bounded = 10x the backlog needs no more than 1.5x the live heap")
        .note(
            String.format(
                java.util.Locale.ROOT,
                "live heap = after a full collection every 200 ms; peak over all samples (%d on the"
                    + " tenth side); diagnosis: the full side's expected peak over %d random samples"
                    + " of its own gives %.3f",
                samples,
                samples,
                sameCountGrowth))
        .note(
            "peak live MB in the first, second and last third of each run (growth through the"
                + " run would be a leak; a flat profile is the configured bound): "
                + thirds);
  }

  /** The largest live sample of each third of the run, in MB, as "a / b / c". */
  private static String peaksByThird(java.util.List<Long> samples) {
    if (samples.size() < 3) {
      return "too few samples (" + samples.size() + ")";
    }
    StringBuilder text = new StringBuilder();
    for (int third = 0; third < 3; third++) {
      int from = samples.size() * third / 3;
      int to = samples.size() * (third + 1) / 3;
      long peak = 0;
      for (long sample : samples.subList(from, to)) {
        peak = Math.max(peak, sample);
      }
      text.append(third == 0 ? "" : " / ")
          .append(String.format(java.util.Locale.ROOT, "%.1f", peak / (1024.0 * 1024.0)));
    }
    return text.toString();
  }
}
