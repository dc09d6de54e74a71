package org.txkafka.it.outbox;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.txkafka.it.outbox.OutboxFixtures.await;
import static org.txkafka.it.outbox.OutboxFixtures.commit;
import static org.txkafka.it.outbox.OutboxFixtures.countingLostSessions;
import static org.txkafka.it.outbox.OutboxFixtures.numbered;
import static org.txkafka.it.outbox.OutboxFixtures.pendingRows;
import static org.txkafka.it.outbox.OutboxFixtures.relay;

import java.io.PrintWriter;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Proxy;
import java.sql.Connection;
import java.sql.SQLException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.logging.Logger;
import javax.sql.DataSource;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.postgresql.ds.PGSimpleDataSource;
import org.txkafka.it.outbox.OutboxFixtures.TopicReader;
import org.txkafka.outbox.OutboxMessage;
import org.txkafka.outbox.OutboxRelay;
import org.txkafka.testkit.KafkaBroker;
import org.txkafka.testkit.TestDatabase;
import org.txkafka.testkit.TestPostgres;

/**
 * Invariant: a relay that drops its lease session after a database error ends that session, so
 * that its advisory locks (the shares) go with it, whatever pool the connection came from.
 *
 * <p>The pool here behaves as JDBC allows and as Commons DBCP does: its connection's {@code
 * unwrap(Connection.class)} returns the wrapper itself, and {@code close()} gives the live session
 * back to the pool, which hands the same session out again. The relay's DELETE fails once with an
 * error that leaves the session alive (as a statement timeout or a cancel would). Before, the relay
 * only closed the wrapper: the session went back to the pool still holding every share, the relay
 * got it back, saw its own locks as another relay's and took nothing, so nothing was ever removed
 * or published again.
 */
@Timeout(value = 3, unit = TimeUnit.MINUTES)
class OutboxRelayPoolTest {
  private static final Duration WAIT = Duration.ofSeconds(60);

  @Test
  void sessionDroppedAfterAnErrorIsEndedEvenWhenThePoolReturnsItsWrapperFromUnwrap()
      throws Exception {
    KafkaBroker broker = KafkaBroker.shared();
    String topic = KafkaBroker.uniqueTopic("relay-pool");
    broker.createTopic(topic, 1);
    TestDatabase db = TestPostgres.shared().createDatabase().migrate();
    try (TopicReader reader = new TopicReader(broker, topic)) {
      db.execute(
          "CREATE SEQUENCE refuse_delete",
          "CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
              + " IF nextval('refuse_delete') = 1 THEN"
              + " RAISE EXCEPTION 'refused once' USING ERRCODE = '57014'; END IF;"
              + " RETURN OLD; END $$",
          "CREATE TRIGGER refuse_delete BEFORE DELETE ON txkafka_outbox"
              + " FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete()");
      List<OutboxMessage> messages = new ArrayList<>();
      for (int i = 0; i < 20; i++) {
        messages.add(numbered(topic, "k" + (i % 4), i));
      }
      Set<String> ids = OutboxFixtures.asStrings(commit(db.dataSource(), messages));
      ReusingPool pool = new ReusingPool(OutboxFixtures.unpooled(db));
      AtomicInteger lost = new AtomicInteger();
      try (OutboxRelay relay = relay(pool, broker).listener(countingLostSessions(lost)).build()) {
        relay.start();
        await(WAIT, "the relay to drop its session after the refused DELETE", () -> lost.get() > 0);
        await(
            WAIT,
            () -> "every row removed after the refused DELETE (pending: " + pendingRows(db) + ")",
            () -> pendingRows(db) == 0);
        await(WAIT, "the relay to hold shares again", () -> !relay.ownedShares().isEmpty());
        reader.pollUntil(WAIT, "every message on Kafka", r -> idsOf(r.records()).containsAll(ids));
      }
      assertTrue(pool.sessionsOpened() >= 2, "the dropped session was ended, a new one opened");
      assertEquals(ids, idsOf(reader.records()), "exactly these messages (resent with their ids)");
    } finally {
      db.close();
    }
  }

  private static Set<String> idsOf(List<ConsumerRecord<byte[], byte[]>> records) {
    Set<String> ids = new HashSet<>();
    for (ConsumerRecord<byte[], byte[]> record : records) {
      ids.add(OutboxFixtures.messageId(record));
    }
    return ids;
  }

  /**
   * A one-session pool: close() keeps the session for the next caller unless the session was
   * closed, and the wrapper's unwrap(Connection.class) returns the wrapper (other interfaces, such
   * as the driver's PGConnection, are unwrapped from the session).
   */
  private static final class ReusingPool implements DataSource {
    private final PGSimpleDataSource sessions;
    private Connection idle;
    private int opened;

    ReusingPool(PGSimpleDataSource sessions) {
      this.sessions = sessions;
    }

    synchronized int sessionsOpened() {
      return opened;
    }

    @Override
    public synchronized Connection getConnection() throws SQLException {
      Connection physical = idle;
      idle = null;
      if (physical == null || physical.isClosed()) {
        physical = sessions.getConnection();
        opened++;
      }
      return wrap(physical);
    }

    private synchronized void giveBack(Connection physical) throws SQLException {
      if (!physical.isClosed()) {
        if (!physical.getAutoCommit()) {
          physical.rollback();
          physical.setAutoCommit(true);
        }
        if (idle == null) {
          idle = physical;
          return;
        }
        physical.close();
      }
    }

    private Connection wrap(Connection physical) {
      boolean[] closed = {false};
      return (Connection)
          Proxy.newProxyInstance(
              Connection.class.getClassLoader(),
              new Class<?>[] {Connection.class},
              (proxy, method, args) -> {
                switch (method.getName()) {
                  case "close" -> {
                    if (!closed[0]) {
                      closed[0] = true;
                      giveBack(physical);
                    }
                    return null;
                  }
                  case "isClosed" -> {
                    return closed[0] || physical.isClosed();
                  }
                  case "unwrap" -> {
                    Class<?> type = (Class<?>) args[0];
                    return type.isInstance(proxy) ? proxy : physical.unwrap(type);
                  }
                  case "isWrapperFor" -> {
                    Class<?> type = (Class<?>) args[0];
                    return type.isInstance(proxy) || physical.isWrapperFor(type);
                  }
                  default -> {
                    try {
                      return method.invoke(physical, args);
                    } catch (InvocationTargetException e) {
                      throw e.getCause();
                    }
                  }
                }
              });
    }

    @Override
    public Connection getConnection(String user, String password) throws SQLException {
      throw new SQLException("not supported");
    }

    @Override
    public PrintWriter getLogWriter() {
      return null;
    }

    @Override
    public void setLogWriter(PrintWriter out) {}

    @Override
    public void setLoginTimeout(int seconds) {}

    @Override
    public int getLoginTimeout() {
      return 0;
    }

    @Override
    public Logger getParentLogger() {
      return Logger.getGlobal();
    }

    @Override
    public <T> T unwrap(Class<T> type) throws SQLException {
      throw new SQLException("not a wrapper");
    }

    @Override
    public boolean isWrapperFor(Class<?> type) {
      return false;
    }
  }
}
