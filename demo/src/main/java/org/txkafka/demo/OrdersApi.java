package org.txkafka.demo;

import java.util.ArrayList;
import java.util.List;
import java.util.Random;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import org.txkafka.demo.orders.OrdersService;

/**
 * The orders service's API side, as load: {@code threads} request threads place {@code total}
 * orders, paced together at {@code rate} per second (order {@code i} is due at start + i/rate).
 * A placement that fails rolled back as a whole: nothing was written and nothing will be sent.
 */
final class OrdersApi {
  private final OrdersService service;
  private final int total;
  private final long intervalNanos;
  private final int threads;
  private final long seed;
  private final AtomicLong tickets = new AtomicLong();
  private final AtomicLong failures = new AtomicLong();
  private final AtomicBoolean running = new AtomicBoolean(true);
  private final List<Thread> workers = new ArrayList<>();
  private long start;

  OrdersApi(OrdersService service, int total, int rate, int threads, long seed) {
    this.service = service;
    this.total = total;
    this.intervalNanos = 1_000_000_000L / rate;
    this.threads = threads;
    this.seed = seed;
  }

  void start() {
    start = System.nanoTime();
    for (int t = 0; t < threads; t++) {
      Random amounts = new Random(seed + t);
      Thread thread = new Thread(() -> place(amounts), "orders-api-" + t);
      workers.add(thread);
      thread.start();
    }
  }

  /** Whether some request thread is still placing orders. */
  boolean isAlive() {
    return workers.stream().anyMatch(Thread::isAlive);
  }

  long failures() {
    return failures.get();
  }

  void stop() throws InterruptedException {
    running.set(false);
    for (Thread thread : workers) {
      thread.join();
    }
  }

  private void place(Random amounts) {
    while (running.get()) {
      long ticket = tickets.getAndIncrement();
      if (ticket >= total) {
        return;
      }
      long wait = start + ticket * intervalNanos - System.nanoTime();
      if (wait > 0) {
        try {
          Thread.sleep(wait / 1_000_000, (int) (wait % 1_000_000));
        } catch (InterruptedException e) {
          return;
        }
      }
      try {
        service.placeOrder("customer-" + amounts.nextInt(500), 100 + amounts.nextInt(100_000));
      } catch (RuntimeException e) {
        failures.incrementAndGet();
      }
    }
  }
}
