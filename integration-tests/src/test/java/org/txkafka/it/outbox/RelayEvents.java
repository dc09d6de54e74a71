package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.fail;

import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;

/**
 * The lease and batch events a {@link RelayProcessMain} printed, turned into intervals: when it held
 * each share, and when it was publishing which shares. Times are epoch milliseconds of the one
 * machine clock all processes share.
 *
 * <p>Recorded hold intervals lie inside the true ones: ACQUIRED is printed after the lock was
 * taken, RELEASED just before it is given back. So two relays' recorded intervals can overlap only
 * if their true ones did.
 */
final class RelayEvents {
  /** A closed-open interval [from, to) of one relay. */
  record Interval(String relay, long from, long to) {
    boolean overlaps(Interval other) {
      return from < other.to && other.from < to;
    }

    boolean contains(long start, long end) {
      return from <= start && end <= to;
    }
  }

  final String relay;
  private final Map<Integer, List<Interval>> held = new HashMap<>();
  private final Map<Integer, List<Interval>> publishing = new HashMap<>();
  private final Set<Integer> holding = new TreeSet<>();

  /**
   * Parses {@code output}. Shares still held at the end are held until {@code endOfHold}; a batch
   * that began and never ended (killed) ends at {@code endOfBatch}.
   */
  RelayEvents(String relay, String output, long endOfHold, long endOfBatch) {
    this.relay = relay;
    Map<Integer, Long> heldSince = new HashMap<>();
    // Open batches, oldest first: a relay may start the next batch before the one before it ended
    // (at most two), and END reports the oldest.
    ArrayDeque<Long> batchStarts = new ArrayDeque<>();
    ArrayDeque<Set<Integer>> batchShareSets = new ArrayDeque<>();
    for (String line : output.split("\n")) {
      if (!line.startsWith("EVENT ")) {
        continue;
      }
      String[] parts = line.split(" ");
      long time = Long.parseLong(parts[1]);
      String type = parts[2];
      Set<Integer> shares = new TreeSet<>();
      if (parts.length > 3 && !parts[3].isEmpty()) {
        for (String share : parts[3].split(",")) {
          shares.add(Integer.parseInt(share));
        }
      }
      switch (type) {
        case "ACQUIRED" -> {
          for (int share : shares) {
            heldSince.put(share, time);
            holding.add(share);
          }
        }
        case "RELEASED", "LOST" -> {
          for (int share : shares) {
            Long since = heldSince.remove(share);
            if (since == null) {
              fail(relay + " released share " + share + " it never acquired");
            }
            held.computeIfAbsent(share, s -> new ArrayList<>()).add(new Interval(relay, since, time));
            holding.remove(share);
          }
        }
        case "BEGIN" -> {
          batchStarts.addLast(time);
          batchShareSets.addLast(shares);
        }
        case "END" -> {
          if (batchStarts.isEmpty()) {
            fail(relay + " ended a batch it never began: " + line);
          }
          long batchStart = batchStarts.removeFirst();
          for (int share : batchShareSets.removeFirst()) {
            publishing
                .computeIfAbsent(share, s -> new ArrayList<>())
                .add(new Interval(relay, batchStart, time));
          }
        }
        default -> fail("unknown event " + line);
      }
    }
    heldSince.forEach(
        (share, since) ->
            held.computeIfAbsent(share, s -> new ArrayList<>())
                .add(new Interval(relay, since, endOfHold)));
    while (!batchStarts.isEmpty()) {
      long batchStart = batchStarts.removeFirst();
      for (int share : batchShareSets.removeFirst()) {
        publishing
            .computeIfAbsent(share, s -> new ArrayList<>())
            .add(new Interval(relay, batchStart, endOfBatch));
      }
    }
  }

  /** Shares held at the end of the output. */
  Set<Integer> holding() {
    return holding;
  }

  /** Fails unless every batch of every share ran while this relay held that share. */
  void assertPublishedOnlyHeldShares() {
    publishing.forEach(
        (share, batches) -> {
          for (Interval batch : batches) {
            boolean covered = false;
            for (Interval hold : held.getOrDefault(share, List.of())) {
              covered |= hold.contains(batch.from(), batch.to());
            }
            if (!covered) {
              fail(relay + " published share " + share + " outside its lease: " + batch
                  + ", leases " + held.get(share));
            }
          }
        });
  }

  /** Fails if two relays ever held (and so could publish) the same share at the same time. */
  static void assertNoShareHeldByTwoAtOnce(List<RelayEvents> relays) {
    for (int i = 0; i < relays.size(); i++) {
      for (int j = i + 1; j < relays.size(); j++) {
        RelayEvents a = relays.get(i);
        RelayEvents b = relays.get(j);
        a.held.forEach(
            (share, aIntervals) -> {
              for (Interval x : aIntervals) {
                for (Interval y : b.held.getOrDefault(share, List.of())) {
                  if (x.overlaps(y)) {
                    fail("share " + share + " held by two relays at once: " + x + " and " + y);
                  }
                }
              }
            });
      }
    }
  }

  /** How many batches this relay ran. */
  int batches() {
    int count = 0;
    for (List<Interval> intervals : publishing.values()) {
      count += intervals.size();
    }
    return count;
  }
}
