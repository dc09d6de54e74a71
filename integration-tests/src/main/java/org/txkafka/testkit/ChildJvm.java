package org.txkafka.testkit;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.TimeUnit;

/**
 * A main class of this JVM's class path, run in a child JVM that a test can kill with SIGKILL,
 * freeze with SIGSTOP (a long GC pause, a zombie) and start again.
 *
 * <p>Invariants: a child never outlives the JVM that started it (the child watches its standard
 * input through {@link ChildLauncher} and halts when the parent goes away, even after the parent was
 * itself killed with SIGKILL); every line the child prints is kept, so a failing test can show it.
 *
 * <p>Not thread-safe for control calls ({@link #kill()}, {@link #suspend()} …); {@link #output()}
 * and {@link #awaitLine} may be called from any thread.
 */
public final class ChildJvm implements AutoCloseable {
  private static final int MAX_KEPT_CHARS = 4_000_000;

  private final String name;
  private final Process process;
  private final StringBuilder output = new StringBuilder();
  private final Thread pump;

  private ChildJvm(String name, Process process) {
    this.name = name;
    this.process = process;
    this.pump = new Thread(this::pumpOutput, "child-jvm-output-" + name);
    this.pump.setDaemon(true);
    this.pump.start();
  }

  /** A child running {@code mainClass}, which must be on this JVM's class path. */
  public static Builder builder(Class<?> mainClass) {
    return new Builder(mainClass.getName());
  }

  /** A child running the main class of that name, which must be on this JVM's class path. */
  public static Builder builder(String mainClassName) {
    return new Builder(mainClassName);
  }

  /** The operating system's process id. */
  public long pid() {
    return process.pid();
  }

  /** Whether the child is still running (a suspended child is alive). */
  public boolean isAlive() {
    return process.isAlive();
  }

  /** SIGKILL: no shutdown hook runs, nothing is flushed. Waits until the process is gone. */
  public void kill() {
    if (process.isAlive()) {
      signal("KILL");
      process.destroyForcibly();
    }
    waitForExit(Duration.ofSeconds(30));
  }

  /** SIGTERM: shutdown hooks run. Waits up to 60 s for the exit, then kills. */
  public void terminate() {
    if (process.isAlive()) {
      process.destroy();
    }
    if (!waitForExit(Duration.ofSeconds(60))) {
      kill();
    }
  }

  /** SIGSTOP: the child freezes as in a very long GC pause; its sockets stay open. */
  public void suspend() {
    signal("STOP");
  }

  /** SIGCONT: a suspended child goes on where it stopped. */
  public void resume() {
    signal("CONT");
  }

  /**
   * Waits until the child has printed a line containing {@code containing} and returns that line.
   * Lines printed before the call count too.
   *
   * @throws IllegalStateException if the child exits first or the timeout passes, with its output
   */
  public String awaitLine(String containing, Duration timeout) {
    long deadline = System.nanoTime() + timeout.toNanos();
    int from = 0;
    while (true) {
      synchronized (output) {
        int index = output.indexOf(containing, Math.max(0, from - containing.length()));
        if (index >= 0) {
          int start = output.lastIndexOf("\n", index) + 1;
          int end = output.indexOf("\n", index);
          return output.substring(start, end < 0 ? output.length() : end);
        }
        from = output.length();
        boolean pumpDone = !pump.isAlive();
        if (pumpDone && !process.isAlive()) {
          throw new IllegalStateException(
              name + " exited with " + process.exitValue() + " before printing '" + containing
                  + "'; output:\n" + tail());
        }
        long left = deadline - System.nanoTime();
        if (left <= 0) {
          throw new IllegalStateException(
              name + " did not print '" + containing + "' within " + timeout + "; output:\n"
                  + tail());
        }
        try {
          output.wait(Math.max(1, Math.min(TimeUnit.NANOSECONDS.toMillis(left), 200)));
        } catch (InterruptedException e) {
          Thread.currentThread().interrupt();
          throw new IllegalStateException("interrupted while waiting for " + name, e);
        }
      }
    }
  }

  /** Everything the child printed so far, standard output and error interleaved. */
  public String output() {
    synchronized (output) {
      return output.toString();
    }
  }

  /**
   * Waits for the child to exit and returns its exit code.
   *
   * @throws IllegalStateException if it is still running after the timeout
   */
  public int waitFor(Duration timeout) {
    if (!waitForExit(timeout)) {
      throw new IllegalStateException(name + " still running after " + timeout + "; output:\n"
          + tail());
    }
    return process.exitValue();
  }

  /** Kills the child if it is still running. */
  @Override
  public void close() {
    if (process.isAlive()) {
      resume();
      kill();
    }
  }

  private String tail() {
    String all = output();
    return all.length() <= 20_000 ? all : "…" + all.substring(all.length() - 20_000);
  }

  private boolean waitForExit(Duration timeout) {
    try {
      boolean exited = process.waitFor(timeout.toMillis(), TimeUnit.MILLISECONDS);
      if (exited) {
        pump.join(5_000);
      }
      return exited;
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      return false;
    }
  }

  private void signal(String signal) {
    if (!process.isAlive()) {
      return;
    }
    try {
      Process kill = new ProcessBuilder("kill", "-" + signal, Long.toString(process.pid()))
          .redirectErrorStream(true).start();
      kill.getInputStream().readAllBytes();
      kill.waitFor(10, TimeUnit.SECONDS);
    } catch (IOException e) {
      throw new UncheckedIOException("could not send SIG" + signal + " to " + name, e);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }

  private void pumpOutput() {
    try (BufferedReader reader =
        new BufferedReader(new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8))) {
      String line;
      while ((line = reader.readLine()) != null) {
        synchronized (output) {
          if (output.length() > MAX_KEPT_CHARS) {
            output.delete(0, output.length() - MAX_KEPT_CHARS / 2);
          }
          output.append(line).append('\n');
          output.notifyAll();
        }
      }
    } catch (IOException e) {
      // The stream closes when the child dies; what was read is kept.
    } finally {
      synchronized (output) {
        output.notifyAll();
      }
    }
  }

  /** Configures and starts a {@link ChildJvm}. Not thread-safe. */
  public static final class Builder {
    private final String mainClassName;
    private final List<String> args = new ArrayList<>();
    private final Map<String, String> systemProperties = new LinkedHashMap<>();
    private final Map<String, String> environment = new LinkedHashMap<>();
    private final List<String> jvmOptions = new ArrayList<>();
    private String maxHeap = "256m";
    private String name;

    private Builder(String mainClassName) {
      this.mainClassName = Objects.requireNonNull(mainClassName, "mainClassName");
      this.name = mainClassName.substring(mainClassName.lastIndexOf('.') + 1);
    }

    /** Program arguments. */
    public Builder args(String... values) {
      args.addAll(List.of(values));
      return this;
    }

    /** A {@code -Dkey=value} for the child. */
    public Builder systemProperty(String key, String value) {
      systemProperties.put(key, value);
      return this;
    }

    /** An environment variable for the child (the parent's environment is inherited). */
    public Builder env(String key, String value) {
      environment.put(key, value);
      return this;
    }

    /** The child's {@code -Xmx}. Defaults to 256m. */
    public Builder maxHeap(String value) {
      maxHeap = value;
      return this;
    }

    /** An extra JVM option, e.g. {@code -XX:+UseSerialGC}. */
    public Builder jvmOption(String option) {
      jvmOptions.add(option);
      return this;
    }

    /** The name used in messages. Defaults to the main class's simple name. */
    public Builder name(String value) {
      name = value;
      return this;
    }

    /** Starts the child. */
    public ChildJvm start() {
      Path java = Paths.get(System.getProperty("java.home"), "bin", "java");
      List<String> command = new ArrayList<>();
      command.add(java.toString());
      command.add("-Xmx" + maxHeap);
      command.add("-XX:+ExitOnOutOfMemoryError");
      command.add("-Djava.io.tmpdir=" + System.getProperty("java.io.tmpdir"));
      command.addAll(jvmOptions);
      systemProperties.forEach((key, value) -> command.add("-D" + key + "=" + value));
      command.add("-cp");
      command.add(System.getProperty("java.class.path"));
      command.add(ChildLauncher.class.getName());
      command.add(mainClassName);
      command.addAll(args);
      ProcessBuilder builder = new ProcessBuilder(command).redirectErrorStream(true);
      builder.environment().putAll(environment);
      try {
        return new ChildJvm(name, builder.start());
      } catch (IOException e) {
        throw new UncheckedIOException("could not start child JVM " + name, e);
      }
    }
  }
}
