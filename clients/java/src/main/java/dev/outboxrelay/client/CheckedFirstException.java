package dev.outboxrelay.client;

import java.util.UUID;

/**
 * Check-back answered "rolled back" before this local transaction wrote its barrier row: the local
 * transaction must roll back.
 */
public final class CheckedFirstException extends Exception {
  private static final long serialVersionUID = 1L;

  public CheckedFirstException(UUID id) {
    super("outbox: check-back answered rolled_back for " + id + " before this local transaction");
  }
}
