package org.txkafka.outbox.internal;

import java.nio.charset.StandardCharsets;
import java.sql.Array;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import org.apache.kafka.common.utils.Utils;
import org.txkafka.outbox.Outbox;

/**
 * The leases of one relay on its one lease connection: a presence lock that lets relays count each
 * other, and one lock per share it owns. All are PostgreSQL session-level advisory locks in the
 * two-int form {@code (classid, objid)}; PostgreSQL releases them when the session ends, which is
 * how a dead relay's shares become free.
 *
 * <p>Invariants:
 *
 * <ul>
 *   <li>{@link #held()} is never a share whose lock this session does not hold: a share is added
 *       only after {@code pg_try_advisory_lock} returned true on this session, and removed before
 *       or when its lock is given back. (When the session dies, PostgreSQL drops every lock; the
 *       owner then discards this object.)
 *   <li>A share is never locked twice by one session (locks would stack and survive one unlock):
 *       only shares not in {@link #held()} are tried.
 *   <li>Nothing here waits for a lock: only {@code pg_try_advisory_lock}.
 * </ul>
 *
 * <p>Not thread-safe: used by the relay thread only.
 */
final class ShareLeases {
  private final Connection connection;
  private final int shareClass;
  private final int presenceClass;
  private final Random random;
  private final TreeSet<Integer> held = new TreeSet<>();
  private int presenceId = -1;

  ShareLeases(Connection connection, String schema, Random random) {
    this.connection = connection;
    this.shareClass = shareLockClass(schema);
    this.presenceClass = shareClass + 1;
    this.random = random;
  }

  /**
   * The advisory-lock class id of the shares of {@code schema}'s outbox: stable across versions
   * and processes, non-negative, even (the presence class is the next odd number).
   */
  static int shareLockClass(String schema) {
    byte[] seed = ("txkafka.outbox." + schema).getBytes(StandardCharsets.UTF_8);
    return Utils.toPositive(Utils.murmur2(seed)) & 0x7FFF_FFFE;
  }

  /** Takes a presence lock with a free random id, so that other relays can count this one. */
  void announce() throws SQLException {
    try (PreparedStatement lock = connection.prepareStatement("SELECT pg_try_advisory_lock(?, ?)")) {
      for (int attempt = 0; attempt < 100; attempt++) {
        int candidate = random.nextInt(Integer.MAX_VALUE);
        lock.setInt(1, presenceClass);
        lock.setInt(2, candidate);
        try (ResultSet rs = lock.executeQuery()) {
          rs.next();
          if (rs.getBoolean(1)) {
            presenceId = candidate;
            return;
          }
        }
      }
    }
    throw new SQLException("no free relay presence id after 100 attempts");
  }

  /** The shares held now (a copy). */
  Set<Integer> held() {
    return Collections.unmodifiableSet(new TreeSet<>(held));
  }

  /** The presence id of this relay (for logs). */
  int presenceId() {
    return presenceId;
  }

  /** The number of running relays on this outbox (those with a presence lock), at least 1. */
  int countRelays() throws SQLException {
    try (PreparedStatement count =
        connection.prepareStatement(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                + " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                + " AND classid::bigint = ? AND objsubid = 2")) {
      count.setLong(1, presenceClass);
      try (ResultSet rs = count.executeQuery()) {
        rs.next();
        return Math.max(1, rs.getInt(1));
      }
    }
  }

  /** The fair number of shares for one of {@code relays} relays: ceil(SHARE_COUNT / relays). */
  static int fairShare(int relays) {
    return (Outbox.SHARE_COUNT + relays - 1) / relays;
  }

  /** Shares that some session holds now. */
  private Set<Integer> lockedShares() throws SQLException {
    Set<Integer> locked = new TreeSet<>();
    try (PreparedStatement query =
        connection.prepareStatement(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
                + " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                + " AND classid::bigint = ? AND objsubid = 2")) {
      query.setLong(1, shareClass);
      try (ResultSet rs = query.executeQuery()) {
        while (rs.next()) {
          locked.add((int) rs.getLong(1));
        }
      }
    }
    return locked;
  }

  /**
   * Which held shares to give back to come down to {@code target} (none if at or below it). Nothing
   * is unlocked yet: see {@link #unlock}.
   */
  Set<Integer> surplus(int target) {
    if (held.size() <= target) {
      return Set.of();
    }
    List<Integer> candidates = new ArrayList<>(held);
    Collections.shuffle(candidates, random);
    return new TreeSet<>(candidates.subList(0, held.size() - target));
  }

  /**
   * Tries to lock free shares until {@code target} are held.
   *
   * @return the shares newly acquired
   */
  Set<Integer> acquireUpTo(int target) throws SQLException {
    if (held.size() >= target) {
      return Set.of();
    }
    Set<Integer> locked = lockedShares();
    List<Integer> free = new ArrayList<>();
    for (int share = 0; share < Outbox.SHARE_COUNT; share++) {
      if (!locked.contains(share) && !held.contains(share)) {
        free.add(share);
      }
    }
    if (free.isEmpty()) {
      return Set.of();
    }
    Collections.shuffle(free, random);
    List<Integer> candidates = free.subList(0, Math.min(free.size(), target - held.size()));
    Set<Integer> acquired = new TreeSet<>();
    try (PreparedStatement lock =
        connection.prepareStatement(
            "SELECT s FROM unnest(?::int[]) AS s WHERE pg_try_advisory_lock(?, s)")) {
      Array array = connection.createArrayOf("int4", candidates.toArray(new Integer[0]));
      lock.setArray(1, array);
      lock.setInt(2, shareClass);
      try (ResultSet rs = lock.executeQuery()) {
        while (rs.next()) {
          acquired.add(rs.getInt(1));
        }
      }
    }
    held.addAll(acquired);
    return acquired;
  }

  /** Gives back the given held shares. */
  void unlock(Set<Integer> shares) throws SQLException {
    if (shares.isEmpty()) {
      return;
    }
    try (PreparedStatement unlock =
        connection.prepareStatement("SELECT pg_advisory_unlock(?, s) FROM unnest(?::int[]) AS s")) {
      unlock.setInt(1, shareClass);
      unlock.setArray(2, connection.createArrayOf("int4", shares.toArray(new Integer[0])));
      unlock.executeQuery().close();
    }
    held.removeAll(shares);
  }

  /** Gives back every share and the presence lock of this session. */
  void releaseAll() throws SQLException {
    held.clear();
    try (PreparedStatement unlockAll =
        connection.prepareStatement("SELECT pg_advisory_unlock_all()")) {
      unlockAll.executeQuery().close();
    }
  }

  /** Forgets every share without SQL: the session is gone, and PostgreSQL dropped its locks. */
  Set<Integer> forgetAll() {
    Set<Integer> lost = held();
    held.clear();
    return lost;
  }
}
