package org.txkafka.outbox.internal;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import javax.sql.DataSource;
import org.txkafka.TxKafkaException;
import org.txkafka.outbox.OutboxAdmin;
import org.txkafka.outbox.ParkedMessage;

/**
 * The default {@link OutboxAdmin}. Each call is one short transaction; a replay notifies the relays
 * in that transaction, so they wake when it commits.
 */
public final class JdbcOutboxAdmin implements OutboxAdmin {
  private final DataSource dataSource;
  private final OutboxSql sql;

  /** Admin operations on {@code schema}'s outbox. */
  public JdbcOutboxAdmin(DataSource dataSource, String schema) {
    if (dataSource == null) {
      throw new IllegalArgumentException("dataSource must be set, was null");
    }
    this.dataSource = dataSource;
    this.sql = new OutboxSql(schema);
  }

  @Override
  public List<ParkedMessage> parked(int limit) {
    if (limit < 1 || limit > MAX_LIST) {
      throw new IllegalArgumentException(
          "limit must be between 1 and " + MAX_LIST + ", was " + limit);
    }
    try (Connection connection = dataSource.getConnection();
        PreparedStatement list = connection.prepareStatement(sql.listParked())) {
      list.setInt(1, limit);
      List<ParkedMessage> parked = new ArrayList<>();
      try (ResultSet rs = list.executeQuery()) {
        while (rs.next()) {
          int partition = rs.getInt(5);
          Integer explicitPartition = rs.wasNull() ? null : partition;
          int size = rs.getInt(7);
          int payloadSize = rs.wasNull() ? -1 : size;
          parked.add(
              new ParkedMessage(
                  rs.getLong(1),
                  rs.getObject(2, UUID.class),
                  rs.getInt(3),
                  rs.getString(4),
                  rs.getBytes(6),
                  explicitPartition,
                  payloadSize,
                  rs.getInt(8),
                  rs.getString(9),
                  instant(rs.getTimestamp(10)),
                  instant(rs.getTimestamp(11))));
        }
      }
      return parked;
    } catch (SQLException e) {
      throw new TxKafkaException("could not list parked outbox rows: " + e.getMessage(), e);
    }
  }

  @Override
  public boolean replay(long id) {
    return update(sql.replayOne(), id, "replay parked outbox row " + id, true) > 0;
  }

  @Override
  public int replayAll() {
    return update(sql.replayAll(), null, "replay parked outbox rows", true);
  }

  @Override
  public boolean discard(long id) {
    // In a transaction of its own, committed here: on a pool that hands out connections with
    // auto-commit off, a bare DELETE was rolled back when the connection went back to the pool.
    return update(sql.discardOne(), id, "discard parked outbox row " + id, false) > 0;
  }

  @Override
  public long pendingCount() {
    try (Connection connection = dataSource.getConnection();
        PreparedStatement count = connection.prepareStatement(sql.countPending());
        ResultSet rs = count.executeQuery()) {
      rs.next();
      return rs.getLong(1);
    } catch (SQLException e) {
      throw new TxKafkaException("could not count pending outbox rows: " + e.getMessage(), e);
    }
  }

  /**
   * Runs {@code update} in a transaction of its own and commits it, whatever the auto-commit
   * setting of the pool's connections; with {@code notify}, wakes the relays if rows changed.
   */
  private int update(String update, Long id, String what, boolean notify) {
    try (Connection connection = dataSource.getConnection()) {
      boolean autoCommit = connection.getAutoCommit();
      connection.setAutoCommit(false);
      try {
        if (notify) {
          lockForReplay(connection, id);
        }
        int rows;
        try (PreparedStatement statement = connection.prepareStatement(update)) {
          if (id != null) {
            statement.setLong(1, id);
          }
          rows = statement.executeUpdate();
        }
        if (rows > 0 && notify) {
          try (PreparedStatement wake = connection.prepareStatement(sql.notifyRelays())) {
            wake.setString(1, sql.schema);
            wake.executeQuery().close();
          }
        }
        connection.commit();
        return rows;
      } catch (SQLException | RuntimeException e) {
        connection.rollback();
        throw e;
      } finally {
        connection.setAutoCommit(autoCommit);
      }
    } catch (SQLException e) {
      throw new TxKafkaException("could not " + what + ": " + e.getMessage(), e);
    }
  }

  /**
   * Takes the order locks of the rows a replay gives new ids to (one row: {@code id}; all parked
   * rows: null), in the order trigger's order, before their ids are drawn (see {@link
   * OutboxSql#lockForReplayOne()}).
   */
  private void lockForReplay(Connection connection, Long id) throws SQLException {
    if (id != null) {
      try (PreparedStatement lock = connection.prepareStatement(sql.lockForReplayOne())) {
        lock.setString(1, sql.schema);
        lock.setString(2, sql.schema);
        lock.setLong(3, id);
        lock.executeQuery().close();
      }
      return;
    }
    boolean bulk;
    try (PreparedStatement count = connection.prepareStatement(sql.countParkedKeys());
        ResultSet keys = count.executeQuery()) {
      keys.next();
      bulk = keys.getLong(1) > 256;
    }
    try (PreparedStatement lock = connection.prepareStatement(sql.lockSharesForReplayAll())) {
      lock.setBoolean(1, bulk);
      lock.setString(2, sql.schema);
      lock.setString(3, sql.schema);
      lock.executeQuery().close();
    }
    if (!bulk) {
      try (PreparedStatement lock = connection.prepareStatement(sql.lockKeysForReplayAll())) {
        lock.setString(1, sql.schema);
        lock.executeQuery().close();
      }
    }
  }

  private static java.time.Instant instant(Timestamp timestamp) {
    return timestamp == null ? null : timestamp.toInstant();
  }
}
