package org.txkafka.outbox.internal;

import java.sql.Array;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;
import java.sql.Types;
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
    return replay(id, "replay parked outbox row " + id) > 0;
  }

  @Override
  public int replayAll() {
    return replay(null, "replay parked outbox rows");
  }

  @Override
  public boolean discard(long id) {
    // In a transaction of its own, committed here: on a pool that hands out connections with
    // auto-commit off, a bare DELETE was rolled back when the connection went back to the pool.
    try (Connection connection = dataSource.getConnection()) {
      boolean autoCommit = connection.getAutoCommit();
      connection.setAutoCommit(false);
      try (PreparedStatement delete = connection.prepareStatement(sql.discardOne())) {
        delete.setLong(1, id);
        int rows = delete.executeUpdate();
        connection.commit();
        return rows > 0;
      } catch (SQLException | RuntimeException e) {
        connection.rollback();
        throw e;
      } finally {
        connection.setAutoCommit(autoCommit);
      }
    } catch (SQLException e) {
      throw new TxKafkaException("could not discard parked outbox row " + id + ": " + e.getMessage(), e);
    }
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
   * Replays one parked row ({@code id}) or all ({@code null}) in a transaction of its own, committed
   * here whatever the auto-commit setting of the pool's connections: reads the ids of the parked
   * rows, takes their order locks in the order trigger's order, renumbers exactly those rows, and
   * wakes the relays if any changed. A row parked after the ids were read waits for the next call.
   */
  private int replay(Long id, String what) {
    try (Connection connection = dataSource.getConnection()) {
      boolean autoCommit = connection.getAutoCommit();
      connection.setAutoCommit(false);
      try {
        List<Long> parked = new ArrayList<>();
        try (PreparedStatement select = connection.prepareStatement(sql.parkedIds())) {
          if (id == null) {
            select.setNull(1, Types.BIGINT);
            select.setNull(2, Types.BIGINT);
          } else {
            select.setLong(1, id);
            select.setLong(2, id);
          }
          try (ResultSet rs = select.executeQuery()) {
            while (rs.next()) {
              parked.add(rs.getLong(1));
            }
          }
        }
        int rows = 0;
        if (!parked.isEmpty()) {
          Array ids = connection.createArrayOf("bigint", parked.toArray());
          lockForReplay(connection, ids);
          try (PreparedStatement update = connection.prepareStatement(sql.replayIds())) {
            update.setArray(1, ids);
            rows = update.executeUpdate();
          }
          if (rows > 0) {
            try (PreparedStatement wake = connection.prepareStatement(sql.notifyRelays())) {
              wake.setString(1, sql.schema);
              wake.executeQuery().close();
            }
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
   * Takes the order locks of the rows a replay gives new ids to, in the order trigger's order,
   * before their ids are drawn (see {@link OutboxSql#lockSharesForReplay()}): their shares shared
   * and their keys exclusive, or, above 256 keys, their shares exclusive.
   */
  private void lockForReplay(Connection connection, Array ids) throws SQLException {
    boolean bulk;
    try (PreparedStatement count = connection.prepareStatement(sql.countReplayKeys())) {
      count.setArray(1, ids);
      try (ResultSet keys = count.executeQuery()) {
        keys.next();
        bulk = keys.getLong(1) > 256;
      }
    }
    try (PreparedStatement lock = connection.prepareStatement(sql.lockSharesForReplay())) {
      lock.setBoolean(1, bulk);
      lock.setString(2, sql.schema);
      lock.setString(3, sql.schema);
      lock.setArray(4, ids);
      lock.executeQuery().close();
    }
    if (!bulk) {
      try (PreparedStatement lock = connection.prepareStatement(sql.lockKeysForReplay())) {
        lock.setString(1, sql.schema);
        lock.setArray(2, ids);
        lock.executeQuery().close();
      }
    }
  }

  private static java.time.Instant instant(Timestamp timestamp) {
    return timestamp == null ? null : timestamp.toInstant();
  }
}
