package org.txkafka.outbox;

import java.util.List;

/**
 * Operations on parked outbox rows: rows the relay could not send (too large, invalid topic, not
 * authorised). Obtain one with {@link Outbox#admin(javax.sql.DataSource)}. Every method runs in
 * its own short transaction on a connection of the data source. Thread-safe.
 *
 * <p>Replaying a row makes it pending again under a new id: the relay publishes it in its next
 * round, after rows of its key that were written before it was replayed (a parked row has left
 * per-key order).
 * Replaying a row that still cannot be sent parks it again.
 */
public interface OutboxAdmin {

  /** The most rows {@link #parked(int)} returns in one call. */
  int MAX_LIST = 10_000;

  /**
   * Parked rows, oldest id first.
   *
   * @param limit at most this many, 1 to {@value #MAX_LIST}
   * @throws IllegalArgumentException if the limit is out of range
   * @throws org.txkafka.TxKafkaException wrapping the {@link java.sql.SQLException} on a database
   *     error
   */
  List<ParkedMessage> parked(int limit);

  /**
   * Makes the parked row {@code id} pending again and wakes the relays. The row gets a new id (its
   * message id stays): the old one is no longer valid for {@link #discard(long)}.
   *
   * @return false if there is no parked row with that id
   */
  boolean replay(long id);

  /**
   * Makes every parked row pending again and wakes the relays.
   *
   * @return the number of rows replayed
   */
  int replayAll();

  /**
   * Deletes the parked row {@code id} for good: it will never be published.
   *
   * @return false if there is no parked row with that id
   */
  boolean discard(long id);

  /** The number of rows waiting to be published (not parked), over all shares. */
  long pendingCount();
}
