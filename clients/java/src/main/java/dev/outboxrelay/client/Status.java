package dev.outboxrelay.client;

import java.time.Instant;

/**
 * What became of a message ({@code outbox.status}).
 *
 * @param status prepared, committed, rolled_back, published or dead
 * @param attempts publish attempts so far
 * @param lastError the last failure, or null
 * @param publishedAt when the broker confirmed it, or null
 */
public record Status(String status, int attempts, String lastError, Instant publishedAt) {}
