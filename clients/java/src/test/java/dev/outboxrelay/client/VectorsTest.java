package dev.outboxrelay.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.time.Duration;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.UUID;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/** The shared test vectors (clients/test-vectors.json), which every client library runs. */
class VectorsTest {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static TestDbs dbs;

  @BeforeAll
  static void databases() throws Exception {
    dbs = new TestDbs();
  }

  @AfterAll
  static void drop() throws Exception {
    dbs.close();
  }

  @TestFactory
  Stream<DynamicTest> vectors() throws Exception {
    JsonNode cases = JSON.readTree(Path.of("../test-vectors.json").toFile()).get("cases");
    Stream.Builder<DynamicTest> tests = Stream.builder();
    for (JsonNode v : cases) {
      tests.add(DynamicTest.dynamicTest(v.get("name").asText(), () -> run(v)));
    }
    return tests.build();
  }

  private static Message message(JsonNode m) throws Exception {
    Message msg =
        m.has("payload_hex")
            ? Message.bytes(
                m.get("destination").asText(),
                HexFormat.of().parseHex(m.get("payload_hex").asText()),
                m.get("content_type").asText())
            : Message.json(
                m.get("destination").asText(), JSON.writeValueAsString(m.get("payload")));
    if (m.has("key")) {
      msg = msg.withKey(m.get("key").asText());
    }
    if (m.has("routing_key")) {
      msg = msg.withRoutingKey(m.get("routing_key").asText());
    }
    if (m.has("headers")) {
      Map<String, String> headers = new LinkedHashMap<>();
      m.get("headers").properties().forEach(e -> headers.put(e.getKey(), e.getValue().asText()));
      msg = msg.withHeaders(headers);
    }
    return msg;
  }

  private static void run(JsonNode v) throws Exception {
    JsonNode expect = v.get("expect");
    UUID id;
    try (Connection c = dbs.writer()) {
      Message m = message(v.get("message"));
      id =
          v.get("call").asText().equals("enqueue")
              ? Outbox.enqueue(c, m)
              : Outbox.prepare(
                  c,
                  m,
                  v.has("producer") ? v.get("producer").asText() : null,
                  Duration.ofSeconds(v.get("ttl_seconds").asLong()));
    } catch (SQLException e) {
      JsonNode error = expect.get("error");
      assertNotNull(error, "unexpected error: " + e);
      assertEquals(error.get("sqlstate").asText(), e.getSQLState());
      assertTrue(e.getMessage().contains(error.get("message_contains").asText()), e.getMessage());
      return;
    }
    JsonNode row = expect.get("row");
    assertNotNull(row, "expected an error");
    try (Connection owner = dbs.owner();
        PreparedStatement s =
            owner.prepareStatement(
                "SELECT status::text, destination, message_key, routing_key, headers::text,"
                    + " content_type, payload, producer FROM outbox.messages WHERE message_id = ?")) {
      s.setObject(1, id);
      try (ResultSet r = s.executeQuery()) {
        assertTrue(r.next());
        assertEquals(row.get("status").asText(), r.getString(1));
        assertEquals(row.get("destination").asText(), r.getString(2));
        assertEquals(text(row.get("message_key")), r.getString(3));
        assertEquals(text(row.get("routing_key")), r.getString(4));
        assertEquals(row.get("headers"), JSON.readTree(r.getString(5)));
        assertEquals(row.get("content_type").asText(), r.getString(6));
        if (row.has("payload_hex")) {
          assertEquals(row.get("payload_hex").asText(), HexFormat.of().formatHex(r.getBytes(7)));
        } else {
          assertEquals(row.get("payload"), JSON.readTree(r.getBytes(7)));
        }
        assertEquals(text(row.get("producer")), r.getString(8));
      }
    }
  }

  private static String text(JsonNode n) {
    return n == null || n.isNull() ? null : n.asText();
  }
}
