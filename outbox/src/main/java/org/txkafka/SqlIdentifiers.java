package org.txkafka;

import java.util.regex.Pattern;

/**
 * Validation of schema names that come from configuration. Only lower-case unquoted PostgreSQL
 * identifiers are accepted, and they are always used quoted, so configuration can never inject SQL.
 */
public final class SqlIdentifiers {
  // As TxKafkaMigrations: no "$$", which would end a dollar-quoted body the name is written into.
  private static final Pattern IDENTIFIER = Pattern.compile("(?!.*[$][$])[a-z_][a-z0-9_$]{0,62}");

  private SqlIdentifiers() {}

  /**
   * Returns {@code value} if it is a lower-case unquoted PostgreSQL identifier of at most 63
   * characters.
   *
   * @param setting the name of the setting, used in the message
   * @throws IllegalArgumentException naming the setting, the value and the rule, if it is not
   */
  public static String requireIdentifier(String setting, String value) {
    if (value == null || !IDENTIFIER.matcher(value).matches()) {
      throw new IllegalArgumentException(
          setting
              + " must be a lower-case unquoted PostgreSQL identifier ([a-z_][a-z0-9_$]*, no $$, at most"
              + " 63 characters), was "
              + (value == null ? "null" : "'" + value + "'"));
    }
    return value;
  }

  /** The identifier in double quotes, after {@link #requireIdentifier}. */
  public static String quoted(String setting, String value) {
    return '"' + requireIdentifier(setting, value) + '"';
  }
}
