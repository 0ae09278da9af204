package dev.outboxrelay.client;

/** Check-back's answer. */
public enum Outcome {
  COMMITTED("committed"),
  ROLLED_BACK("rolled_back"),
  UNKNOWN("unknown");

  private final String wire;

  Outcome(String wire) {
    this.wire = wire;
  }

  /** The value of {@code status} in the answer's JSON. */
  public String wire() {
    return wire;
  }

  static Outcome of(String wire) {
    for (Outcome o : values()) {
      if (o.wire.equals(wire)) {
        return o;
      }
    }
    throw new IllegalArgumentException("not an outcome: " + wire);
  }
}
