package org.txkafka.demo;

import java.io.PrintStream;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Chaos mode: kills a random worker process with SIGKILL every 1.5 to 4 seconds, waits a little and
 * starts it again. It keeps going while orders are placed and until at least {@code minKills} kills
 * were done, then lets the pipeline drain.
 */
final class Chaos {
  private final Workers workers;
  private final Random random;
  private final int minKills;
  private final PrintStream out;
  private final AtomicInteger kills = new AtomicInteger();
  private final int[] killsPerService = new int[Workers.SERVICES.length];
  private final AtomicBoolean mayFinish = new AtomicBoolean();
  private final AtomicBoolean stop = new AtomicBoolean();
  private final Thread thread;
  private volatile boolean finished;
  private volatile Throwable failure;

  Chaos(Workers workers, Random random, int minKills, PrintStream out) {
    this.workers = workers;
    this.random = random;
    this.minKills = minKills;
    this.out = out;
    this.thread = new Thread(this::run, "chaos");
    this.thread.setDaemon(true);
  }

  void start() {
    thread.start();
  }

  /** Orders are all placed: chaos may end once it has done its minimum of kills. */
  void allowFinish() {
    mayFinish.set(true);
  }

  boolean finished() {
    return finished;
  }

  int kills() {
    return kills.get();
  }

  void stop() throws InterruptedException {
    stop.set(true);
    thread.join();
  }

  String describe() {
    StringBuilder text = new StringBuilder(kills.get() + " SIGKILLs (");
    for (int i = 0; i < Workers.SERVICES.length; i++) {
      text.append(i == 0 ? "" : ", ").append(Workers.SERVICES[i]).append("-worker ").append(killsPerService[i]);
    }
    text.append("), every kill followed by a restart");
    if (failure != null) {
      text.append("; chaos stopped early: ").append(failure);
    }
    return text.toString();
  }

  private void run() {
    try {
      while (!stop.get() && !(mayFinish.get() && kills.get() >= minKills)) {
        long wakeAt = System.nanoTime() + (1500 + random.nextInt(2500)) * 1_000_000L;
        while (System.nanoTime() < wakeAt && !stop.get() && !(mayFinish.get() && kills.get() >= minKills)) {
          Thread.sleep(50);
        }
        if (stop.get() || (mayFinish.get() && kills.get() >= minKills)) {
          break;
        }
        int victim = random.nextInt(Workers.SERVICES.length);
        workers.kill(victim);
        kills.incrementAndGet();
        killsPerService[victim]++;
        Thread.sleep(200 + random.nextInt(800));
        workers.start(victim);
        out.println("chaos: restarted " + Workers.SERVICES[victim] + "-worker");
      }
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } catch (RuntimeException e) {
      failure = e;
      out.println("chaos failed: " + e);
    } finally {
      finished = true;
    }
  }
}
