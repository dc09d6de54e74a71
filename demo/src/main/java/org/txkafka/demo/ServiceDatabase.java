package org.txkafka.demo;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import jakarta.persistence.EntityManagerFactory;
import java.util.List;
import org.flywaydb.core.Flyway;
import org.hibernate.cfg.AvailableSettings;
import org.hibernate.jpa.HibernatePersistenceConfiguration;
import org.txkafka.migrations.TxKafkaMigrations;

/**
 * The database side of one service, set up the way a JPA service sets itself up: a HikariCP pool,
 * the service's own Flyway migrations (its own history table), the txkafka migrations (their own
 * history table), and a Hibernate {@link EntityManagerFactory} on the pool. Closing it closes the
 * factory and the pool.
 */
public final class ServiceDatabase implements AutoCloseable {
  /**
   * Connections of each service process: a small pool, shared by its JPA code, inbox and relay, sized
   * as the README says: the inbox's concurrency (4) + 1, the relay's 1 + 1 at close, and 1 for the
   * service's own transactions (the orders the orders service places).
   */
  public static final int POOL_SIZE = 8;

  private final HikariDataSource dataSource;
  private final EntityManagerFactory entityManagerFactory;

  private ServiceDatabase(HikariDataSource dataSource, EntityManagerFactory entityManagerFactory) {
    this.dataSource = dataSource;
    this.entityManagerFactory = entityManagerFactory;
  }

  /**
   * Connects to the service's database, migrates it if {@code migrate} and builds the entity
   * manager factory for {@code entities}.
   *
   * @param service the service name: its Flyway location is {@code classpath:db/<service>}
   */
  public static ServiceDatabase open(
      String service, DbCoordinates db, boolean migrate, List<Class<?>> entities) {
    HikariConfig hikari = new HikariConfig();
    hikari.setJdbcUrl(db.jdbcUrl());
    hikari.setUsername(db.user());
    hikari.setPassword(db.password());
    hikari.setMaximumPoolSize(POOL_SIZE);
    hikari.setMinimumIdle(1);
    hikari.setPoolName(service);
    HikariDataSource dataSource = new HikariDataSource(hikari);
    try {
      if (migrate) {
        Flyway.configure()
            .dataSource(dataSource)
            .locations("classpath:db/" + service)
            .load()
            .migrate();
        TxKafkaMigrations.migrate(dataSource, "public");
      }
      HibernatePersistenceConfiguration jpa =
          new HibernatePersistenceConfiguration(service)
              .managedClasses(entities)
              .property(AvailableSettings.JAKARTA_NON_JTA_DATASOURCE, dataSource)
              .property(AvailableSettings.HBM2DDL_AUTO, "none");
      return new ServiceDatabase(dataSource, jpa.createEntityManagerFactory());
    } catch (RuntimeException e) {
      dataSource.close();
      throw e;
    }
  }

  /** The pool (for the relay, and for the demo's SQL checks). */
  public HikariDataSource dataSource() {
    return dataSource;
  }

  /** The JPA entity manager factory of the service. */
  public EntityManagerFactory entityManagerFactory() {
    return entityManagerFactory;
  }

  @Override
  public void close() {
    try {
      entityManagerFactory.close();
    } finally {
      dataSource.close();
    }
  }

  /** Where a service's database is. */
  public record DbCoordinates(String jdbcUrl, String user, String password) {}
}
