package dev.outboxrelay.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.Statement;
import java.time.Duration;
import java.util.UUID;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;

/** The project README's Java snippet is placeOrder's body, and it runs. */
class ReadmeTest {
  static void placeOrder(Connection outboxDb, Connection localDb, Message msg) throws Exception {
    UUID id = Outbox.prepare(outboxDb, msg, "orders", Duration.ofMinutes(5));
    try {
      localDb.setAutoCommit(false);
      try (Statement s = localDb.createStatement()) {
        s.executeUpdate("INSERT INTO orders (id) VALUES (42)");
      }
      Outbox.inLocalTx(localDb, id); // the barrier row
      localDb.commit();
    } catch (Exception e) {
      localDb.rollback();
      throw e;
    } finally {
      localDb.setAutoCommit(true);
      // Even a failed COMMIT may have committed: the barrier knows.
      Outbox.decide(outboxDb, localDb, id); // a crash before this is what check-back covers
    }
  }

  @Test
  void theReadmeSnippetIsPlaceOrdersBody() throws Exception {
    String readme = Files.readString(Path.of("../../README.md"));
    Matcher block = Pattern.compile("```java\n(.*?)```", Pattern.DOTALL).matcher(readme);
    assertTrue(block.find(), "README.md has no Java snippet");
    String source =
        Files.readString(Path.of("src/test/java/dev/outboxrelay/client/ReadmeTest.java"));
    String body = source.split("throws Exception \\{\n", 2)[1].split("\n  }\n", 2)[0];
    String dedented = body.lines().map(l -> l.substring(4)).collect(Collectors.joining("\n"));
    assertEquals(block.group(1).strip(), dedented.strip());
  }

  @Test
  void placeOrderCommitsTheMessage() throws Exception {
    try (TestDbs dbs = new TestDbs();
        Connection outboxDb = dbs.writer();
        Connection localDb = dbs.local()) {
      placeOrder(outboxDb, localDb, Message.json("orders", "{\"order\": 42}"));
      try (Connection owner = dbs.owner();
          Statement s = owner.createStatement();
          ResultSet r = s.executeQuery("SELECT status::text, producer FROM outbox.messages")) {
        assertTrue(r.next());
        assertEquals("committed", r.getString(1));
        assertEquals("orders", r.getString(2));
      }
    }
  }
}
