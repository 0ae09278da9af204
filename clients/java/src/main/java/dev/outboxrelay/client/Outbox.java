package dev.outboxrelay.client;

import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Timestamp;
import java.sql.Types;
import java.time.Duration;
import java.util.Optional;
import java.util.UUID;

/**
 * Writes messages into an outbox-relay outbox in Postgres over JDBC. Every method takes the
 * caller's {@link Connection} and never commits, rolls back or closes it, so it joins the caller's
 * transaction: inside a Spring {@code @Transactional} method pass {@code
 * DataSourceUtils.getConnection(dataSource)}.
 *
 * <ul>
 *   <li>{@link #enqueue} inside the transaction that changes your business data, when that data is
 *       in the outbox's database: the message commits with it, atomically.
 *   <li>The two-phase flow, when your local transaction runs in another database: {@link #prepare}
 *       in the outbox, {@link #inLocalTx} inside your local transaction (the check-back barrier
 *       row), then {@link #confirm} or {@link #cancel}. If your process dies before confirming, the
 *       relay asks your service, and {@link CheckHandler} answers from the barrier.
 * </ul>
 *
 * <p>The SQL API's argument errors arrive as the driver's {@link SQLException} (SQLState 22023)
 * with their message intact, and nothing is written.
 */
public final class Outbox {
  /** Creates the check-back barrier table in the writer's own database (idempotent). */
  public static final String BARRIER_SCHEMA = resource("barrier.sql");

  private static final String ENQUEUE =
      "SELECT outbox.enqueue(?, ?::jsonb, ?, ?, ?::jsonb, ?::timestamptz)";
  private static final String ENQUEUE_BYTES =
      "SELECT outbox.enqueue_bytes(?, ?, ?, ?, ?, ?::jsonb, ?::timestamptz)";
  private static final String PREPARE =
      "SELECT outbox.prepare(?, ?::jsonb, ?, ?, ?::jsonb, ?::bigint * interval '1 millisecond',"
          + " ?, ?::timestamptz)";
  private static final String PREPARE_BYTES =
      "SELECT outbox.prepare_bytes(?, ?, ?, ?, ?, ?::jsonb, ?::bigint * interval '1 millisecond',"
          + " ?, ?::timestamptz)";
  private static final String BARRIER =
      "WITH inserted AS (INSERT INTO outbox_barrier (message_id, outcome) VALUES (?, '%s')"
          + " ON CONFLICT (message_id) DO NOTHING RETURNING 1) SELECT count(*)::int FROM inserted";

  private Outbox() {}

  /**
   * Writes a committed message in {@code tx}'s current transaction: it is published if and only if
   * that transaction commits. Returns its id, which consumers de-duplicate on.
   */
  public static UUID enqueue(Connection tx, Message m) throws SQLException {
    try (PreparedStatement s = tx.prepareStatement(m.isBytes() ? ENQUEUE_BYTES : ENQUEUE)) {
      int i = payload(s, m);
      s.setString(i++, m.key());
      s.setString(i++, m.routingKey());
      s.setString(i++, m.headersJson());
      timestamp(s, i, m);
      return one(s, UUID.class);
    }
  }

  /**
   * Writes a prepared message, published only once confirmed. {@code producer} names your service
   * in the relay's {@code [check_back.producers]} (null: no check-back; the message rolls back at
   * {@code ttl}).
   */
  public static UUID prepare(Connection c, Message m, String producer, Duration ttl)
      throws SQLException {
    try (PreparedStatement s = c.prepareStatement(m.isBytes() ? PREPARE_BYTES : PREPARE)) {
      int i = payload(s, m);
      s.setString(i++, m.key());
      s.setString(i++, m.routingKey());
      s.setString(i++, m.headersJson());
      s.setLong(i++, ttl.toMillis());
      s.setString(i++, producer);
      timestamp(s, i, m);
      return one(s, UUID.class);
    }
  }

  /**
   * Writes the barrier row saying the local transaction of {@code localTx} commits message {@code
   * id}. Call it inside that transaction, before its commit.
   *
   * @throws CheckedFirstException when check-back answered first: roll the local transaction back
   */
  public static void inLocalTx(Connection localTx, UUID id)
      throws SQLException, CheckedFirstException {
    if (barrier(localTx, id, Outcome.COMMITTED) == 0) {
      throw new CheckedFirstException(id);
    }
  }

  /** Commits prepared message {@code id}: the relay publishes it. */
  public static void confirm(Connection c, UUID id) throws SQLException, NotPreparedException {
    if (!bool(c, "SELECT outbox.commit(?)", id)) {
      throw new NotPreparedException(id);
    }
  }

  /** Rolls back prepared message {@code id}: it is never published. */
  public static void cancel(Connection c, UUID id) throws SQLException, NotPreparedException {
    if (!bool(c, "SELECT outbox.rollback(?)", id)) {
      throw new NotPreparedException(id);
    }
  }

  /** Prepared message {@code id} now expires {@code ttl} from now; false if not prepared. */
  public static boolean extend(Connection c, UUID id, Duration ttl) throws SQLException {
    try (PreparedStatement s =
        c.prepareStatement("SELECT outbox.extend(?, ?::bigint * interval '1 millisecond')")) {
      s.setObject(1, id);
      s.setLong(2, ttl.toMillis());
      return one(s, Boolean.class);
    }
  }

  /** What became of message {@code id}; empty for an unknown id. */
  public static Optional<Status> status(Connection c, UUID id) throws SQLException {
    try (PreparedStatement s =
        c.prepareStatement(
            "SELECT status::text, attempts, last_error, published_at FROM outbox.status(?)")) {
      s.setObject(1, id);
      try (ResultSet r = s.executeQuery()) {
        if (!r.next()) {
          return Optional.empty();
        }
        Timestamp published = r.getTimestamp(4);
        return Optional.of(
            new Status(
                r.getString(1),
                r.getInt(2),
                r.getString(3),
                published == null ? null : published.toInstant()));
      }
    }
  }

  /**
   * Check-back's answer for message {@code id} from the barrier in {@code localDb}, which must be
   * in autocommit mode: each of the two statements commits on its own. Waits for a local
   * transaction still open; answers ROLLED_BACK only when the local transaction did not commit and
   * now never can.
   */
  public static Outcome check(Connection localDb, UUID id) throws SQLException {
    if (!localDb.getAutoCommit()) {
      throw new IllegalArgumentException("Outbox.check needs an autocommit connection");
    }
    barrier(localDb, id, Outcome.ROLLED_BACK);
    try (PreparedStatement s =
        localDb.prepareStatement("SELECT outcome FROM outbox_barrier WHERE message_id = ?")) {
      s.setObject(1, id);
      return Outcome.of(one(s, String.class));
    }
  }

  /**
   * Confirms or cancels prepared message {@code id} by what its local transaction did, as the
   * barrier in {@code localDb} (in autocommit mode) records it, and returns that. Call it once the
   * local transaction is over, whatever happened: a COMMIT that failed on a lost connection may
   * still have committed, and only the barrier knows. A message check-back decided already is left
   * as it is.
   *
   * @throws NotPreparedException if the message ended otherwise (it expired first)
   */
  public static Outcome decide(Connection outboxDb, Connection localDb, UUID id)
      throws SQLException, NotPreparedException {
    Outcome outcome = check(localDb, id);
    try {
      if (outcome == Outcome.COMMITTED) {
        confirm(outboxDb, id);
      } else {
        cancel(outboxDb, id);
      }
    } catch (NotPreparedException e) {
      String now = status(outboxDb, id).map(Status::status).orElse("unknown");
      boolean same =
          outcome == Outcome.COMMITTED
              ? now.equals("committed") || now.equals("published")
              : now.equals("rolled_back");
      if (!same) {
        throw e;
      }
    }
    return outcome;
  }

  /** Deletes barrier rows older than {@code olderThan} (more than your longest ttl). */
  public static int purgeBarrier(Connection localDb, Duration olderThan) throws SQLException {
    try (PreparedStatement s =
        localDb.prepareStatement(
            "DELETE FROM outbox_barrier WHERE created_at < now() - ?::bigint * interval '1"
                + " millisecond'")) {
      s.setLong(1, olderThan.toMillis());
      return s.executeUpdate();
    }
  }

  private static int payload(PreparedStatement s, Message m) throws SQLException {
    s.setString(1, m.destination());
    if (m.isBytes()) {
      s.setBytes(2, m.bytes());
      s.setString(3, m.contentType());
      return 4;
    }
    s.setString(2, m.json());
    return 3;
  }

  private static void timestamp(PreparedStatement s, int i, Message m) throws SQLException {
    if (m.deliverAt() == null) {
      s.setNull(i, Types.TIMESTAMP_WITH_TIMEZONE);
    } else {
      s.setObject(i, m.deliverAt().atOffset(java.time.ZoneOffset.UTC));
    }
  }

  private static int barrier(Connection c, UUID id, Outcome outcome) throws SQLException {
    try (PreparedStatement s = c.prepareStatement(String.format(BARRIER, outcome.wire()))) {
      s.setObject(1, id);
      return one(s, Integer.class);
    }
  }

  private static boolean bool(Connection c, String sql, UUID id) throws SQLException {
    try (PreparedStatement s = c.prepareStatement(sql)) {
      s.setObject(1, id);
      return one(s, Boolean.class);
    }
  }

  private static <T> T one(PreparedStatement s, Class<T> type) throws SQLException {
    try (ResultSet r = s.executeQuery()) {
      if (!r.next()) {
        throw new SQLException("outbox: the statement returned no row");
      }
      return r.getObject(1, type);
    }
  }

  private static String resource(String name) {
    try (InputStream in = Outbox.class.getResourceAsStream(name)) {
      if (in == null) {
        throw new IllegalStateException("missing resource " + name);
      }
      return new String(in.readAllBytes(), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }
}
