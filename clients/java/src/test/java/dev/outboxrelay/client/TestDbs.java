package dev.outboxrelay.client;

import java.net.URI;
import java.nio.file.Files;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.UUID;
import org.postgresql.ds.PGSimpleDataSource;

/**
 * Fresh databases on the Postgres the relay's tests use (scripts/services.sh up postgres): an
 * outbox migrated by the relay binary, written to as a member of outbox_writer, and the writer's
 * own database with the barrier and an orders table. Dropped by {@link #close}.
 */
final class TestDbs implements AutoCloseable {
  static final String WRITER_LOGIN = "outbox_writer_test";
  private static final URI ADMIN =
      URI.create(
          System.getenv()
              .getOrDefault(
                  "OUTBOX_TEST_DATABASE_URL", "postgres://postgres@127.0.0.1:54329/postgres"));

  final String outboxName;
  final String localName;

  TestDbs() throws Exception {
    String id = UUID.randomUUID().toString().replace("-", "");
    outboxName = "java_" + id;
    localName = "java_local_" + id;
    try (Connection admin = connect("postgres", null);
        Statement s = admin.createStatement()) {
      s.execute("CREATE DATABASE " + outboxName);
      s.execute("CREATE DATABASE " + localName);
    }
    String bin =
        System.getenv()
            .getOrDefault(
                "OUTBOX_TEST_RELAY_BIN",
                Path.of("../../target/debug/outbox-relay").toAbsolutePath().toString());
    if (!Files.exists(Path.of(bin))) {
      throw new IllegalStateException("no relay binary at " + bin + " (cargo build)");
    }
    ProcessBuilder migrate = new ProcessBuilder(bin, "migrate").redirectErrorStream(true);
    migrate.environment().put("OUTBOX_RELAY__DATABASE__URL", url(outboxName));
    migrate.environment().put("OUTBOX_RELAY__LOG__FORMAT", "text");
    Process p = migrate.start();
    String out = new String(p.getInputStream().readAllBytes());
    if (p.waitFor() != 0) {
      throw new IllegalStateException("outbox-relay migrate failed:\n" + out);
    }
    try (Connection owner = owner();
        Statement s = owner.createStatement()) {
      s.execute(
          "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '"
              + WRITER_LOGIN
              + "') THEN CREATE ROLE "
              + WRITER_LOGIN
              + " LOGIN IN ROLE outbox_writer; END IF;"
              + " EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$");
    }
    try (Connection local = local();
        Statement s = local.createStatement()) {
      s.execute(Outbox.BARRIER_SCHEMA);
      s.execute("CREATE TABLE orders (id bigint PRIMARY KEY)");
    }
  }

  private static String url(String database) {
    return "postgres://" + ADMIN.getRawAuthority() + "/" + database;
  }

  private static Connection connect(String database, String user) throws SQLException {
    String u = user == null ? ADMIN.getUserInfo() : user;
    return DriverManager.getConnection(
        "jdbc:postgresql://" + ADMIN.getHost() + ":" + ADMIN.getPort() + "/" + database, u, null);
  }

  /** As a member of outbox_writer, in autocommit mode. */
  Connection writer() throws SQLException {
    return connect(outboxName, WRITER_LOGIN);
  }

  /** As the owner, to read rows back. */
  Connection owner() throws SQLException {
    return connect(outboxName, null);
  }

  Connection local() throws SQLException {
    return connect(localName, null);
  }

  PGSimpleDataSource localDataSource() {
    PGSimpleDataSource ds = new PGSimpleDataSource();
    ds.setServerNames(new String[] {ADMIN.getHost()});
    ds.setPortNumbers(new int[] {ADMIN.getPort()});
    ds.setDatabaseName(localName);
    ds.setUser(ADMIN.getUserInfo());
    return ds;
  }

  @Override
  public void close() throws SQLException {
    try (Connection admin = connect("postgres", null);
        Statement s = admin.createStatement()) {
      s.execute("DROP DATABASE IF EXISTS " + outboxName + " WITH (FORCE)");
      s.execute("DROP DATABASE IF EXISTS " + localName + " WITH (FORCE)");
    }
  }
}
