package org.txkafka.testkit;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.io.Writer;
import java.net.ServerSocket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.Uuid;

/**
 * A real Apache Kafka broker (KRaft, combined broker and controller, one node) run from the Maven
 * Central artifacts in a child JVM, on free loopback ports, with its data under {@code
 * java.io.tmpdir}.
 *
 * <p>{@link #shared()} is one broker for the whole test JVM; tests keep apart by creating their own
 * topics ({@link #uniqueTopic}). {@link #startDedicated()} is a broker of one's own that may be
 * stopped and started again on the same port with the same data (outage tests).
 *
 * <p>Thread-safe: control calls are synchronized.
 */
public final class KafkaBroker implements AutoCloseable {
  private static final Duration START_TIMEOUT = Duration.ofSeconds(120);
  private static KafkaBroker shared;

  private final Path dir;
  private final int port;
  private final int controllerPort;
  private ChildJvm process;
  private Admin admin;

  private KafkaBroker(Path dir, int port, int controllerPort) {
    this.dir = dir;
    this.port = port;
    this.controllerPort = controllerPort;
  }

  /** The broker of this JVM, started on first use and stopped when the JVM exits. */
  public static synchronized KafkaBroker shared() {
    if (shared == null) {
      KafkaBroker broker = startDedicated();
      Runtime.getRuntime().addShutdownHook(new Thread(broker::close, "kafka-broker-shutdown"));
      shared = broker;
    }
    return shared;
  }

  /** A new broker of the caller's own; the caller closes it. */
  public static KafkaBroker startDedicated() {
    return startDedicated(Map.of());
  }

  /**
   * A new broker of the caller's own with {@code extraConfig} added to (or overriding) its
   * server.properties; the caller closes it.
   */
  public static KafkaBroker startDedicated(Map<String, String> extraConfig) {
    try {
      Path base = Paths.get(System.getProperty("java.io.tmpdir"));
      Files.createDirectories(base);
      Path dir = Files.createTempDirectory(base, "kafka-");
      int[] ports = freePorts(2);
      KafkaBroker broker = new KafkaBroker(dir, ports[0], ports[1]);
      broker.format(extraConfig);
      broker.start();
      return broker;
    } catch (IOException e) {
      throw new UncheckedIOException("could not prepare a Kafka broker", e);
    }
  }

  /** A topic name no other test uses: {@code prefix} plus a random suffix. */
  public static String uniqueTopic(String prefix) {
    return prefix + "-" + UUID.randomUUID().toString().substring(0, 8);
  }

  /** {@code host:port} of the PLAINTEXT listener. */
  public String bootstrapServers() {
    return "127.0.0.1:" + port;
  }

  /**
   * Creates a topic with replication factor 1 and waits until every partition has a leader: a
   * producer that sends before that gets NOT_LEADER_OR_FOLLOWER, and its idempotent sequence can
   * then be stuck in OUT_OF_ORDER_SEQUENCE_NUMBER retries for minutes.
   */
  public void createTopic(String name, int partitions) {
    try {
      admin().createTopics(List.of(new NewTopic(name, partitions, (short) 1)))
          .all().get(60, TimeUnit.SECONDS);
      long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(60);
      while (!allPartitionsLed(name, partitions) || !allPartitionsOnline(name, partitions)) {
        if (System.nanoTime() > deadline) {
          throw new IllegalStateException(
              "partitions of " + name + " have no leader, or are not online, after 60 s");
        }
        Thread.sleep(50);
      }
    } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
      throw new IllegalStateException("could not create topic " + name, e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted creating topic " + name, e);
    }
  }

  private boolean allPartitionsLed(String topic, int partitions)
      throws ExecutionException, InterruptedException, java.util.concurrent.TimeoutException {
    try {
      org.apache.kafka.clients.admin.TopicDescription description =
          admin().describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS)
              .get(topic);
      return description.partitions().size() == partitions
          && description.partitions().stream()
              .allMatch(partition -> partition.leader() != null && !partition.isr().isEmpty());
    } catch (ExecutionException e) {
      if (e.getCause() instanceof org.apache.kafka.common.errors.UnknownTopicOrPartitionException) {
        return false; // not yet in the metadata of the broker that answered
      }
      throw e;
    }
  }

  /**
   * Whether the leader answers for every partition (a list-offsets request goes to the leader's
   * replica manager). Metadata can name a leader before the broker has applied the partition: a
   * produce then fails with NOT_LEADER_OR_FOLLOWER, and an idempotent producer with several
   * requests in flight can get stuck retrying the failed one with OUT_OF_ORDER_SEQUENCE_NUMBER
   * until its delivery timeout (KAFKA-15591): a test that produced at once lost records that way.
   */
  private boolean allPartitionsOnline(String topic, int partitions)
      throws InterruptedException, java.util.concurrent.TimeoutException {
    try {
      admin().listOffsets(latest(topic, partitions)).all().get(10, TimeUnit.SECONDS);
      return true;
    } catch (ExecutionException e) {
      if (e.getCause() instanceof org.apache.kafka.common.errors.RetriableException) {
        return false; // e.g. NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION: not yet
      }
      throw new IllegalStateException("listing offsets of " + topic + " failed", e.getCause());
    }
  }

  /**
   * The sum of the end offsets of every partition of {@code topic}: how many records were ever
   * appended to it (a consumer that stored these offsets has read everything).
   */
  public long endOffsetSum(String topic) {
    try {
      int partitions =
          admin().describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS)
              .get(topic).partitions().size();
      return admin().listOffsets(latest(topic, partitions)).all().get(10, TimeUnit.SECONDS).values().stream()
          .mapToLong(info -> info.offset())
          .sum();
    } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
      throw new IllegalStateException("end offsets of " + topic + " unavailable", e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted", e);
    }
  }

  /** A list-offsets request for the end of each of the {@code partitions} of {@code topic}. */
  private static Map<org.apache.kafka.common.TopicPartition, org.apache.kafka.clients.admin.OffsetSpec>
      latest(String topic, int partitions) {
    Map<org.apache.kafka.common.TopicPartition, org.apache.kafka.clients.admin.OffsetSpec> wanted =
        new java.util.HashMap<>();
    for (int p = 0; p < partitions; p++) {
      wanted.put(
          new org.apache.kafka.common.TopicPartition(topic, p),
          org.apache.kafka.clients.admin.OffsetSpec.latest());
    }
    return wanted;
  }

  /** An admin client for this broker, closed with it. */
  public synchronized Admin admin() {
    if (admin == null) {
      admin = Admin.create(Map.of(
          AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrapServers(),
          AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 60_000));
    }
    return admin;
  }

  /** Starts the broker (again) on the same ports and data and waits until it serves requests. */
  public synchronized void start() {
    if (process != null && process.isAlive()) {
      return;
    }
    process = ChildJvm.builder("kafka.Kafka")
        .name("kafka-broker-" + port)
        .maxHeap("768m")
        .jvmOption("-Xms256m")
        // The readiness line below is logged at INFO whatever the test's log configuration says.
        .systemProperty("org.slf4j.simpleLogger.log.kafka.server.BrokerServer", "info")
        .args(dir.resolve("server.properties").toString())
        .start();
    process.awaitLine("Transition from STARTING to STARTED", START_TIMEOUT);
    awaitServing();
  }

  /** Stops the broker with SIGTERM (a clean shutdown) and waits until it is gone. */
  public synchronized void stop() {
    if (process != null) {
      process.terminate();
    }
  }

  /** Kills the broker with SIGKILL. */
  public synchronized void kill() {
    if (process != null) {
      process.kill();
    }
  }

  /**
   * Freezes the broker with SIGSTOP: its sockets stay open and nothing is answered, as with a hung
   * broker or a very long pause. {@link #resume()} lets it go on.
   */
  public synchronized void suspend() {
    if (process != null) {
      process.suspend();
    }
  }

  /** Lets a {@link #suspend() suspended} broker go on (SIGCONT). */
  public synchronized void resume() {
    if (process != null) {
      process.resume();
    }
  }

  /** What the broker printed, for diagnosing a failure. */
  public synchronized String log() {
    return process == null ? "" : process.output();
  }

  /** Stops the broker and closes the admin client. Its data stays under java.io.tmpdir. */
  @Override
  public synchronized void close() {
    if (admin != null) {
      admin.close(Duration.ofSeconds(5));
      admin = null;
    }
    if (process != null) {
      process.kill();
    }
  }

  private void awaitServing() {
    long deadline = System.nanoTime() + START_TIMEOUT.toNanos();
    Properties props = new Properties();
    props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrapServers());
    try (Admin probe = Admin.create(props)) {
      while (true) {
        try {
          probe.describeCluster().nodes().get(5, TimeUnit.SECONDS);
          return;
        } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
          if (System.nanoTime() > deadline) {
            throw new IllegalStateException("Kafka broker not serving; log:\n" + log(), e);
          }
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new IllegalStateException("interrupted waiting for the broker", e);
        }
      }
    }
  }

  private void format(Map<String, String> extraConfig) throws IOException {
    Path config = dir.resolve("server.properties");
    try (Writer out = Files.newBufferedWriter(config, StandardCharsets.UTF_8)) {
      out.write(String.join("\n",
          "process.roles=broker,controller",
          "node.id=1",
          "controller.quorum.voters=1@127.0.0.1:" + controllerPort,
          "listeners=PLAINTEXT://127.0.0.1:" + port + ",CONTROLLER://127.0.0.1:" + controllerPort,
          "advertised.listeners=PLAINTEXT://127.0.0.1:" + port,
          "controller.listener.names=CONTROLLER",
          "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
          "inter.broker.listener.name=PLAINTEXT",
          "log.dirs=" + dir.resolve("data"),
          "offsets.topic.replication.factor=1",
          "offsets.topic.num.partitions=4",
          "transaction.state.log.replication.factor=1",
          "transaction.state.log.min.isr=1",
          "transaction.state.log.num.partitions=4",
          "share.coordinator.state.topic.replication.factor=1",
          "share.coordinator.state.topic.min.isr=1",
          "group.initial.rebalance.delay.ms=0",
          "group.consumer.min.session.timeout.ms=1000",
          // The consumer group protocol (KIP-848) moves partitions at members' heartbeats, every
          // 5 s by default: tests that rebalance within seconds need them more often.
          "group.consumer.min.heartbeat.interval.ms=500",
          "group.consumer.heartbeat.interval.ms=500",
          // and a killed member's partitions (and static instance id) back within seconds, as
          // the classic protocol's tests get with their 6 s session timeout (45 s by default).
          "group.consumer.session.timeout.ms=6000",
          "group.min.session.timeout.ms=1000",
          "num.partitions=1",
          "auto.create.topics.enable=false",
          "log.flush.interval.messages=9223372036854775807",
          ""));
      for (Map.Entry<String, String> setting : extraConfig.entrySet()) {
        out.write(setting.getKey() + "=" + setting.getValue() + "\n");
      }
    }
    ChildJvm tool = ChildJvm.builder("kafka.tools.StorageTool")
        .name("kafka-storage-format")
        .args("format", "-t", Uuid.randomUuid().toString(), "-c", config.toString())
        .start();
    int exit = tool.waitFor(Duration.ofSeconds(120));
    if (exit != 0) {
      throw new IllegalStateException("formatting Kafka storage failed:\n" + tool.output());
    }
  }

  /** Distinct free ports: every socket stays open until all are chosen, so none repeats. */
  private static int[] freePorts(int count) throws IOException {
    ServerSocket[] sockets = new ServerSocket[count];
    try {
      int[] ports = new int[count];
      for (int i = 0; i < count; i++) {
        sockets[i] = new ServerSocket(0);
        sockets[i].setReuseAddress(true);
        ports[i] = sockets[i].getLocalPort();
      }
      return ports;
    } finally {
      for (ServerSocket socket : sockets) {
        if (socket != null) {
          socket.close();
        }
      }
    }
  }
}
