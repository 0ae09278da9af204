package dev.outboxrelay.client;

import java.util.UUID;

/** Confirm or cancel found no prepared message with that id: decided already, or expired. */
public final class NotPreparedException extends Exception {
  private static final long serialVersionUID = 1L;

  public NotPreparedException(UUID id) {
    super("outbox: message " + id + " is not prepared (decided already, or expired)");
  }
}
