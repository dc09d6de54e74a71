package org.txkafka.benchmarks;

import java.io.PrintStream;
import java.util.List;
import java.util.Locale;

/**
 * Prints the table, one {@code RATIO name=value} line per ratio and one line per missed target.
 * A side that was not run prints why, and its ratios print {@code RATIO name=not-run}: never a
 * number that was not measured.
 */
final class Report {
  private Report() {}

  static int print(PrintStream out, String machine, List<RowResult> rows) {
    out.println();
    out.println("== txkafka benchmarks: " + machine);
    out.printf(
        Locale.ROOT,
        "%-3s %-34s %-22s %10s %12s %9s %9s %10s %10s%n",
        "#", "row", "side", "count", "per second", "p50 ms", "p99 ms", "heap MB", "live MB");
    for (RowResult row : rows) {
      boolean first = true;
      for (Outcome side : row.sides) {
        String number = first ? String.valueOf(row.number) : "";
        String title = first ? row.title : "";
        first = false;
        if (side instanceof Outcome.Measured m) {
          out.printf(
              Locale.ROOT,
              "%-3s %-34s %-22s %10d %12s %9s %9s %10s %10s%n",
              number,
              title,
              m.label(),
              m.count(),
              format(m.throughput(), 1),
              format(m.p50Millis(), 2),
              format(m.p99Millis(), 2),
              format(m.heap() == null ? Double.NaN : m.heap().peakUsedMb(), 0),
              format(m.heap() == null ? Double.NaN : m.heap().peakLiveMb(), 0));
        } else if (side instanceof Outcome.NotRun n) {
          out.printf(
              Locale.ROOT,
              "%-3s %-34s %-22s NOT RUN: %s%n",
              number,
              title,
              n.label(),
              n.reason());
        }
      }
      for (RowResult.Ratio ratio : row.ratios) {
        out.printf(
            Locale.ROOT,
            "    ratio %-40s %10s   target %-12s %s%n",
            ratio.name(),
            ratio.computed() ? format(ratio.value(), 3) : "not run",
            ratio.targetText(),
            !ratio.computed() ? "NOT RUN" : ratio.met() ? "met" : "MISSED");
      }
      for (String note : row.notes) {
        out.println("    note: " + note);
      }
    }
    out.println();
    int missed = 0;
    int notRun = 0;
    for (RowResult row : rows) {
      for (RowResult.Ratio ratio : row.ratios) {
        out.println(
            "RATIO "
                + ratio.name()
                + "="
                + (ratio.computed() ? format(ratio.value(), 3) : "not-run"));
      }
    }
    for (RowResult row : rows) {
      for (RowResult.Ratio ratio : row.ratios) {
        if (!ratio.computed()) {
          notRun++;
          out.println("TARGET NOT RUN: " + ratio.name() + " (target " + ratio.targetText() + ")");
        } else if (!ratio.met()) {
          missed++;
          out.printf(
              Locale.ROOT,
              "TARGET MISSED: %s = %s, target %s%n",
              ratio.name(),
              format(ratio.value(), 3),
              ratio.targetText());
        }
      }
    }
    out.printf(
        Locale.ROOT,
        "targets: %d missed, %d not run%n",
        missed,
        notRun);
    return missed;
  }

  static String format(double value, int decimals) {
    if (Double.isNaN(value) || Double.isInfinite(value)) {
      return "-";
    }
    return String.format(Locale.ROOT, "%." + decimals + "f", value);
  }
}
