package org.txkafka.demo.events;

import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Just enough JSON for the demo's flat events (a real service would use its JSON library; the
 * txkafka outbox and inbox carry bytes and do not choose one).
 */
final class Json {
  private Json() {}

  static String escape(String value) {
    return value.replace("\\", "\\\\").replace("\"", "\\\"");
  }

  static String string(String json, String field) {
    Matcher matcher =
        Pattern.compile("\"" + field + "\"\\s*:\\s*\"((?:[^\"\\\\]|\\\\.)*)\"").matcher(json);
    if (!matcher.find()) {
      throw new IllegalArgumentException("field " + field + " missing in " + json);
    }
    return matcher.group(1).replace("\\\"", "\"").replace("\\\\", "\\");
  }

  static long number(String json, String field) {
    Matcher matcher = Pattern.compile("\"" + field + "\"\\s*:\\s*(-?\\d+)").matcher(json);
    if (!matcher.find()) {
      throw new IllegalArgumentException("field " + field + " missing in " + json);
    }
    return Long.parseLong(matcher.group(1));
  }
}
