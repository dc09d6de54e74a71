package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertDoesNotThrow;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.util.List;
import org.junit.jupiter.api.Test;
import org.opentest4j.AssertionFailedError;

/**
 * The failover test's lease checks can fail: they catch a share held by two relays at once and a
 * batch published outside a lease (synthetic event logs, no broker needed).
 */
class RelayEventsTest {

  @Test
  void handOverWithoutOverlapPasses() {
    RelayEvents a =
        new RelayEvents(
            "a",
            "EVENT 100 ACQUIRED 1,2\nEVENT 110 BEGIN 1\nEVENT 120 END 1\nEVENT 200 RELEASED 2\n",
            1_000,
            1_000);
    RelayEvents b =
        new RelayEvents(
            "b", "EVENT 200 ACQUIRED 2\nEVENT 210 BEGIN 2\nEVENT 220 END 2\n", 1_000, 1_000);
    assertDoesNotThrow(() -> RelayEvents.assertNoShareHeldByTwoAtOnce(List.of(a, b)));
    assertDoesNotThrow(a::assertPublishedOnlyHeldShares);
    assertDoesNotThrow(b::assertPublishedOnlyHeldShares);
  }

  @Test
  void shareHeldByTwoRelaysAtOnceFails() {
    RelayEvents a =
        new RelayEvents("a", "EVENT 100 ACQUIRED 1,2\nEVENT 300 RELEASED 2\n", 1_000, 1_000);
    RelayEvents b = new RelayEvents("b", "EVENT 250 ACQUIRED 2\n", 1_000, 1_000);
    assertThrows(
        AssertionFailedError.class, () -> RelayEvents.assertNoShareHeldByTwoAtOnce(List.of(a, b)));
  }

  @Test
  void batchOutsideTheLeaseFails() {
    RelayEvents a =
        new RelayEvents(
            "a",
            "EVENT 100 ACQUIRED 3\nEVENT 150 RELEASED 3\nEVENT 160 BEGIN 3\nEVENT 170 END 3\n",
            1_000,
            1_000);
    assertThrows(AssertionFailedError.class, a::assertPublishedOnlyHeldShares);
  }

  /** A pipelined relay starts the next batch before the one before it ended: END is the oldest. */
  @Test
  void overlappingBatchesArePairedOldestFirst() {
    String output =
        "EVENT 100 ACQUIRED 1\nEVENT 105 BEGIN 1\nEVENT 112 ACQUIRED 2\nEVENT 113 BEGIN 2\n"
            + "EVENT 150 END 1\nEVENT 160 END 2\n";
    RelayEvents a = new RelayEvents("a", output, 1_000, 1_000);
    assertDoesNotThrow(a::assertPublishedOnlyHeldShares);
    // The second batch of share 1 began before the lease: caught even though it overlaps another.
    RelayEvents b =
        new RelayEvents(
            "b",
            "EVENT 100 BEGIN 1\nEVENT 105 ACQUIRED 1\nEVENT 106 BEGIN 1\nEVENT 120 END 1\n"
                + "EVENT 130 END 1\n",
            1_000,
            1_000);
    assertThrows(AssertionFailedError.class, b::assertPublishedOnlyHeldShares);
    assertThrows(
        AssertionFailedError.class,
        () -> new RelayEvents("c", "EVENT 100 ACQUIRED 1\nEVENT 120 END 1\n", 1_000, 1_000));
  }
}
