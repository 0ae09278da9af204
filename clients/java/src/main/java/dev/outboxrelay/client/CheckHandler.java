package dev.outboxrelay.client;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpHandler;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Connection;
import java.sql.SQLException;
import java.sql.Statement;
import java.time.Duration;
import java.util.UUID;
import java.util.function.Consumer;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.sql.DataSource;

/**
 * Answers the relay's check-back POST from the barrier in the service's own database, as a JDK
 * {@code HttpServer} handler: {@code server.createContext("/outbox/check", new
 * CheckHandler(localDataSource, token))}. Mount it at the url of your {@code
 * [check_back.producers.<name>]}. Each check takes a connection from {@code localDb} and returns
 * it; a database error is answered {@code unknown}, so the relay asks again later. A check waits
 * for a local transaction still open at most the lock timeout (4 s unless given; keep it below the
 * relay's {@code timeout} for this producer), then answers {@code unknown}. {@code HttpServer} runs
 * handlers on one thread unless given an executor: give it one ({@code
 * server.setExecutor(Executors.newFixedThreadPool(8))}), so that one waiting check does not hold up
 * the others.
 */
public final class CheckHandler implements HttpHandler {
  private static final Pattern MESSAGE_ID =
      Pattern.compile("\"message_id\"\\s*:\\s*\"([0-9a-fA-F-]{36})\"");
  private static final int MAX_BODY = 64 * 1024;

  private final DataSource localDb;
  private final String token;
  private final Consumer<SQLException> onError;
  private final Duration lockTimeout;

  /**
   * @param localDb the service's own database, where the barrier table is
   * @param token the bearer token the relay sends (its {@code token_file}), or null for none
   */
  public CheckHandler(DataSource localDb, String token) {
    this(localDb, token, Duration.ofSeconds(4), e -> {});
  }

  /**
   * As above, waiting at most {@code lockTimeout} for a local transaction still open; {@code
   * onError} receives the errors answered {@code unknown}.
   */
  public CheckHandler(
      DataSource localDb, String token, Duration lockTimeout, Consumer<SQLException> onError) {
    this.localDb = localDb;
    this.token = token;
    this.lockTimeout = lockTimeout;
    this.onError = onError;
  }

  @Override
  public void handle(HttpExchange exchange) throws IOException {
    try (exchange) {
      if (!"POST".equals(exchange.getRequestMethod())) {
        reply(exchange, 405, "{\"error\":\"POST only\"}");
        return;
      }
      if (token != null && !authorized(exchange.getRequestHeaders().getFirst("Authorization"))) {
        reply(exchange, 401, "{\"error\":\"unauthorized\"}");
        return;
      }
      Matcher m = MESSAGE_ID.matcher(body(exchange.getRequestBody()));
      UUID id;
      try {
        id = m.find() ? UUID.fromString(m.group(1)) : null;
      } catch (IllegalArgumentException e) {
        id = null;
      }
      if (id == null) {
        reply(exchange, 400, "{\"error\":\"message_id is not a uuid\"}");
        return;
      }
      Outcome outcome;
      try (Connection c = localDb.getConnection();
          Statement s = c.createStatement()) {
        c.setAutoCommit(true);
        s.execute("SET lock_timeout = " + Math.max(1, lockTimeout.toMillis()));
        try {
          outcome = Outbox.check(c, id);
        } finally {
          s.execute("RESET lock_timeout");
        }
      } catch (SQLException e) {
        onError.accept(e);
        outcome = Outcome.UNKNOWN;
      }
      reply(exchange, 200, "{\"status\":\"" + outcome.wire() + "\"}");
    }
  }

  private boolean authorized(String header) {
    byte[] got = (header == null ? "" : header).getBytes(StandardCharsets.UTF_8);
    byte[] want = ("Bearer " + token).getBytes(StandardCharsets.UTF_8);
    return MessageDigest.isEqual(got, want);
  }

  private static String body(InputStream in) throws IOException {
    return new String(in.readNBytes(MAX_BODY), StandardCharsets.UTF_8);
  }

  private static void reply(HttpExchange exchange, int code, String json) throws IOException {
    byte[] bytes = json.getBytes(StandardCharsets.UTF_8);
    exchange.getResponseHeaders().set("Content-Type", "application/json");
    exchange.sendResponseHeaders(code, bytes.length);
    exchange.getResponseBody().write(bytes);
  }
}
