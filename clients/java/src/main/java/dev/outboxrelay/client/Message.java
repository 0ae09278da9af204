package dev.outboxrelay.client;

import java.time.Instant;
import java.util.Map;
import java.util.Objects;

/**
 * What a writer publishes: a JSON payload (as JSON text your serializer produced) or bytes with
 * their content type (Avro, Protobuf, ...). Build one with {@link #json} or {@link #bytes} and the
 * {@code with...} methods.
 *
 * @param destination the RabbitMQ exchange, Kafka topic, Redis stream or NSQ topic
 * @param json the payload as JSON text, or null for a bytes payload
 * @param bytes the payload as bytes, or null for a JSON payload
 * @param contentType the content type of a bytes payload
 * @param key messages with the same key reach the broker in commit order
 * @param routingKey RabbitMQ's routing key (defaults to the key)
 * @param headers broker headers
 * @param deliverAt published no earlier than this (for a prepared message, once committed)
 */
public record Message(
    String destination,
    String json,
    byte[] bytes,
    String contentType,
    String key,
    String routingKey,
    Map<String, String> headers,
    Instant deliverAt) {

  public Message {
    headers = headers == null ? Map.of() : Map.copyOf(headers);
  }

  /** A message whose payload is JSON text. */
  public static Message json(String destination, String json) {
    return new Message(destination, json, null, null, null, null, Map.of(), null);
  }

  /** A message whose payload is bytes of {@code contentType}. */
  public static Message bytes(String destination, byte[] bytes, String contentType) {
    return new Message(destination, null, bytes, contentType, null, null, Map.of(), null);
  }

  public Message withKey(String key) {
    return new Message(destination, json, bytes, contentType, key, routingKey, headers, deliverAt);
  }

  public Message withRoutingKey(String routingKey) {
    return new Message(destination, json, bytes, contentType, key, routingKey, headers, deliverAt);
  }

  public Message withHeaders(Map<String, String> headers) {
    return new Message(destination, json, bytes, contentType, key, routingKey, headers, deliverAt);
  }

  public Message withDeliverAt(Instant deliverAt) {
    return new Message(destination, json, bytes, contentType, key, routingKey, headers, deliverAt);
  }

  boolean isBytes() {
    return bytes != null || contentType != null;
  }

  /** The headers as a JSON object of strings, for the SQL API's jsonb argument. */
  String headersJson() {
    StringBuilder out = new StringBuilder("{");
    headers.forEach(
        (k, v) -> {
          if (out.length() > 1) {
            out.append(',');
          }
          quote(out, k).append(':');
          quote(out, Objects.requireNonNull(v, "header values must not be null"));
        });
    return out.append('}').toString();
  }

  private static StringBuilder quote(StringBuilder out, String s) {
    out.append('"');
    for (char c : s.toCharArray()) {
      switch (c) {
        case '"' -> out.append("\\\"");
        case '\\' -> out.append("\\\\");
        default -> {
          if (c < 0x20) {
            out.append(String.format("\\u%04x", (int) c));
          } else {
            out.append(c);
          }
        }
      }
    }
    return out.append('"');
  }
}
