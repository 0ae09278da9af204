package dev.outboxrelay.client;

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.Statement;
import java.time.Duration;
import java.util.UUID;

/**
 * Writes three messages with the library, as an application would, and prints their ids: a JSON
 * message with enqueue, a bytes message with enqueue, and a two-phase message prepared, run through
 * a local transaction and confirmed. The relay's end-to-end test (tests/clients_e2e.rs) runs it and
 * checks what reaches RabbitMQ. Arguments: outbox JDBC URL, local JDBC URL, destination.
 */
public final class ExampleWriter {
  private ExampleWriter() {}

  public static void main(String[] args) throws Exception {
    String destination = args[2];
    try (Connection outbox = DriverManager.getConnection(args[0]);
        Connection local = DriverManager.getConnection(args[1])) {
      outbox.setAutoCommit(false);
      UUID json =
          Outbox.enqueue(outbox, Message.json(destination, "{\"lang\": \"java\"}").withKey("k"));
      UUID bytes =
          Outbox.enqueue(
              outbox,
              Message.bytes(destination, new byte[] {0, -1, 'j', 'v'}, "application/x-bytes")
                  .withKey("k"));
      outbox.commit();
      UUID prepared =
          Outbox.prepare(
              outbox,
              Message.json(destination, "{\"two_phase\": true}").withKey("k"),
              "writer",
              Duration.ofMinutes(5));
      outbox.commit();
      try (Statement s = local.createStatement()) {
        s.execute(Outbox.BARRIER_SCHEMA);
      }
      local.setAutoCommit(false);
      Outbox.inLocalTx(local, prepared);
      local.commit();
      Outbox.confirm(outbox, prepared);
      outbox.commit();
      System.out.println(json + " " + bytes + " " + prepared);
    }
  }
}
