package org.txkafka.benchmarks;

import java.util.ArrayList;
import java.util.List;

/**
 * One row of the benchmark table: our side, its baseline, the ratios computed from them and the
 * targets checked against those ratios. A ratio that could not be computed (a side not run) is
 * reported as not run, never as a number.
 */
final class RowResult {

  /** A ratio and the target we hold it to. {@code value} is NaN when it could not be computed. */
  record Ratio(String name, double value, String targetText, boolean higherIsBetter, double target) {
    boolean computed() {
      return !Double.isNaN(value) && !Double.isInfinite(value);
    }

    boolean met() {
      return computed() && (higherIsBetter ? value >= target : value <= target);
    }
  }

  final int number;
  final String title;
  final List<Outcome> sides = new ArrayList<>();
  final List<Ratio> ratios = new ArrayList<>();
  final List<String> notes = new ArrayList<>();

  RowResult(int number, String title) {
    this.number = number;
    this.title = title;
  }

  RowResult side(Outcome outcome) {
    sides.add(outcome);
    return this;
  }

  RowResult ratio(String name, double value, String targetText, boolean higherIsBetter, double target) {
    ratios.add(new Ratio(name, value, targetText, higherIsBetter, target));
    return this;
  }

  RowResult note(String note) {
    notes.add(note);
    return this;
  }

  /** Throughput of {@code ours} over {@code baseline}, or NaN if either was not measured. */
  static double throughputRatio(Outcome ours, Outcome baseline) {
    if (ours instanceof Outcome.Measured o && baseline instanceof Outcome.Measured b) {
      return o.throughput() / b.throughput();
    }
    return Double.NaN;
  }
}
