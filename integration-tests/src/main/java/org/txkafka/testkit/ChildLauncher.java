package org.txkafka.testkit;

import java.io.IOException;
import java.io.InputStream;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.util.Arrays;

/**
 * Entry point of every {@link ChildJvm}: starts a daemon thread that halts the JVM as soon as its
 * standard input closes (the parent JVM is gone, however it died), then runs the real main class.
 * So a test JVM that is killed never leaves brokers or consumers behind.
 */
public final class ChildLauncher {
  private ChildLauncher() {}

  /** {@code args[0]} is the main class; the rest are its arguments. */
  public static void main(String[] args) throws Throwable {
    Thread watchdog = new Thread(ChildLauncher::haltWhenParentGoes, "parent-watchdog");
    watchdog.setDaemon(true);
    watchdog.start();
    Class<?> mainClass = Class.forName(args[0]);
    Method main = mainClass.getMethod("main", String[].class);
    try {
      main.invoke(null, (Object) Arrays.copyOfRange(args, 1, args.length));
    } catch (InvocationTargetException e) {
      throw e.getCause();
    }
  }

  private static void haltWhenParentGoes() {
    InputStream in = System.in;
    try {
      while (in.read() >= 0) {
        // The parent never writes; anything read is ignored.
      }
    } catch (IOException e) {
      // Closed as well.
    }
    Runtime.getRuntime().halt(137);
  }
}
