package dev.outboxrelay.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.Statement;
import java.time.Duration;
import java.time.Instant;
import java.util.Optional;
import java.util.UUID;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

class OutboxTest {
  private static final Message ORDER = Message.json("orders", "{\"order\": 42}").withKey("o-42");
  private TestDbs dbs;

  @BeforeEach
  void databases() throws Exception {
    dbs = new TestDbs();
  }

  @AfterEach
  void drop() throws Exception {
    dbs.close();
  }

  @Test
  void enqueueCommitsOrRollsBackWithTheCallersTransaction() throws Exception {
    UUID kept;
    try (Connection tx = dbs.writer()) {
      tx.setAutoCommit(false);
      kept = Outbox.enqueue(tx, ORDER);
      tx.commit();
      Outbox.enqueue(tx, ORDER);
      tx.rollback();
    }
    try (Connection owner = dbs.owner();
        Statement s = owner.createStatement();
        ResultSet r = s.executeQuery("SELECT message_id FROM outbox.messages")) {
      assertTrue(r.next());
      assertEquals(kept, r.getObject(1, UUID.class));
      assertFalse(r.next(), "the rolled-back transaction's message is gone");
    }
  }

  @Test
  void prepareThenConfirmOrCancelOnceWithStatusAndExtend() throws Exception {
    try (Connection c = dbs.writer()) {
      for (boolean commit : new boolean[] {true, false}) {
        UUID id = Outbox.prepare(c, ORDER, "orders", Duration.ofMinutes(1));
        assertEquals(Optional.of(new Status("prepared", 0, null, null)), Outbox.status(c, id));
        assertTrue(Outbox.extend(c, id, Duration.ofHours(2)));
        if (commit) {
          Outbox.confirm(c, id);
        } else {
          Outbox.cancel(c, id);
        }
        assertEquals(commit ? "committed" : "rolled_back", Outbox.status(c, id).get().status());
        assertThrows(NotPreparedException.class, () -> Outbox.confirm(c, id));
        assertFalse(Outbox.extend(c, id, Duration.ofHours(1)));
      }
      assertEquals(Optional.empty(), Outbox.status(c, UUID.randomUUID()));
      UUID later = Outbox.enqueue(c, ORDER.withDeliverAt(Instant.now().plus(Duration.ofHours(1))));
      assertEquals("committed", Outbox.status(c, later).get().status());
    }
  }

  @Test
  void aCheckDuringTheLocalTransactionWaitsAndIsRightBothWays() throws Exception {
    for (boolean commit : new boolean[] {true, false}) {
      UUID id = UUID.randomUUID();
      try (Connection tx = dbs.local();
          Connection asker = dbs.local()) {
        tx.setAutoCommit(false);
        Outbox.inLocalTx(tx, id);
        CompletableFuture<Outcome> answer =
            CompletableFuture.supplyAsync(
                () -> {
                  try {
                    return Outbox.check(asker, id);
                  } catch (Exception e) {
                    throw new RuntimeException(e);
                  }
                });
        waitForLockWait();
        assertFalse(answer.isDone(), "answered while the local transaction was open");
        if (commit) {
          tx.commit();
        } else {
          tx.rollback();
        }
        assertEquals(
            commit ? Outcome.COMMITTED : Outcome.ROLLED_BACK, answer.get(30, TimeUnit.SECONDS));
      }
    }
  }

  private void waitForLockWait() throws Exception {
    long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
    try (Connection c = dbs.local();
        Statement s = c.createStatement()) {
      while (true) {
        try (ResultSet r =
            s.executeQuery(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    + " AND wait_event_type = 'Lock' AND query LIKE '%outbox_barrier%'")) {
          r.next();
          if (r.getInt(1) == 1) {
            return;
          }
        }
        assertTrue(System.nanoTime() < deadline, "no check waited on the local transaction");
        Thread.sleep(10);
      }
    }
  }

  @Test
  void aCheckBeforeTheLocalTransactionMakesItFail() throws Exception {
    UUID id = UUID.randomUUID();
    try (Connection c = dbs.local()) {
      assertEquals(Outcome.ROLLED_BACK, Outbox.check(c, id));
      c.setAutoCommit(false);
      assertThrows(CheckedFirstException.class, () -> Outbox.inLocalTx(c, id));
      c.rollback();
    }
  }

  @Test
  void theCheckHandlerAnswersJsonAndChecksItsToken() throws Exception {
    UUID id = UUID.randomUUID();
    try (Connection c = dbs.local()) {
      Outbox.inLocalTx(c, id);
    }
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
    server.createContext("/check", new CheckHandler(dbs.localDataSource(), "t0ken"));
    server.start();
    try {
      HttpClient client = HttpClient.newHttpClient();
      URI uri = URI.create("http://127.0.0.1:" + server.getAddress().getPort() + "/check");
      String body = "{\"message_id\": \"" + id + "\", \"destination\": \"orders\"}";
      var ask =
          (java.util.function.BiFunction<String, String, HttpResponse<String>>)
              (b, token) -> {
                HttpRequest.Builder r =
                    HttpRequest.newBuilder(uri).POST(HttpRequest.BodyPublishers.ofString(b));
                if (token != null) {
                  r.header("Authorization", "Bearer " + token);
                }
                try {
                  return client.send(r.build(), HttpResponse.BodyHandlers.ofString());
                } catch (Exception e) {
                  throw new RuntimeException(e);
                }
              };
      assertEquals(401, ask.apply(body, null).statusCode());
      assertEquals(401, ask.apply(body, "wrong").statusCode());
      assertEquals(400, ask.apply("{\"message_id\": \"x\"}", "t0ken").statusCode());
      HttpResponse<String> ok = ask.apply(body, "t0ken");
      assertEquals(200, ok.statusCode());
      assertEquals("{\"status\":\"committed\"}", ok.body());
    } finally {
      server.stop(0);
    }
  }

  @Test
  void decideFollowsTheLocalTransactionWhateverItReturned() throws Exception {
    try (Connection out = dbs.writer();
        Connection local = dbs.local()) {
      for (boolean commit : new boolean[] {true, false}) {
        UUID id = Outbox.prepare(out, ORDER, "orders", Duration.ofMinutes(1));
        local.setAutoCommit(false);
        Outbox.inLocalTx(local, id);
        if (commit) {
          local.commit();
        } else {
          local.rollback();
        }
        local.setAutoCommit(true);
        Outcome want = commit ? Outcome.COMMITTED : Outcome.ROLLED_BACK;
        assertEquals(want, Outbox.decide(out, local, id));
        assertEquals(want.wire(), Outbox.status(out, id).get().status());
        assertEquals(want, Outbox.decide(out, local, id), "deciding again changes nothing");
      }
    }
  }

  @Test
  void aCheckWaitsAtMostTheLockTimeoutThenAnswersUnknown() throws Exception {
    UUID id = UUID.randomUUID();
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
    server.createContext(
        "/check", new CheckHandler(dbs.localDataSource(), null, Duration.ofMillis(100), e -> {}));
    server.start();
    HttpClient client = HttpClient.newHttpClient();
    HttpRequest ask =
        HttpRequest.newBuilder(
                URI.create("http://127.0.0.1:" + server.getAddress().getPort() + "/check"))
            .POST(HttpRequest.BodyPublishers.ofString("{\"message_id\": \"" + id + "\"}"))
            .build();
    try (Connection tx = dbs.local()) {
      tx.setAutoCommit(false);
      Outbox.inLocalTx(tx, id);
      assertEquals(
          "{\"status\":\"unknown\"}",
          client.send(ask, HttpResponse.BodyHandlers.ofString()).body());
      tx.commit();
      assertEquals(
          "{\"status\":\"committed\"}",
          client.send(ask, HttpResponse.BodyHandlers.ofString()).body());
    } finally {
      server.stop(0);
    }
  }
}
