package org.txkafka.demo;

import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import javax.sql.DataSource;
import org.txkafka.testkit.KafkaBroker;

/** The live progress figures, counted in the two databases. */
final class Progress {
  private final DataSource orders;
  private final DataSource payments;

  /** sent: orders committed; published: their requests the relay has sent; applied: payments. */
  record Snapshot(long sent, long published, long applied, long paid) {}

  Progress(DataSource orders, DataSource payments) {
    this.orders = orders;
    this.payments = payments;
  }

  Snapshot snapshot() throws SQLException {
    long sent = Demo.queryLong(orders, "SELECT count(*) FROM purchase_order");
    long pending = Demo.queryLong(orders, "SELECT count(*) FROM txkafka_outbox");
    long paid = Demo.queryLong(orders, "SELECT count(*) FROM purchase_order WHERE status = 'PAID'");
    long applied = Demo.queryLong(payments, "SELECT count(*) FROM payment");
    return new Snapshot(sent, Math.max(0, sent - pending), applied, paid);
  }

  /**
   * Records of {@code topic} that the inbox storing its offsets in {@code db} has not consumed yet:
   * the topic's end offsets minus the inbox's stored next offsets (a partition with no stored offset
   * counts from 0). Zero when the inbox has read everything ever appended, duplicates included.
   */
  static long unconsumed(DataSource db, String topic, KafkaBroker broker) throws SQLException {
    long stored;
    try (Connection connection = db.getConnection();
        PreparedStatement statement =
            connection.prepareStatement(
                "SELECT coalesce(sum(next_offset), 0) FROM txkafka_inbox_offset WHERE topic = ?")) {
      statement.setString(1, topic);
      try (ResultSet rs = statement.executeQuery()) {
        rs.next();
        stored = rs.getLong(1);
      }
    }
    return broker.endOffsetSum(topic) - stored;
  }
}
