# Shared by the service scripts (sourced).

# Keeps the kernel from giving these ports (numbers or "a-b" ranges) to outgoing connections as
# their local port. The services' ports lie in the ephemeral range (ip_local_port_range,
# 32768-60999 on Debian): while the fault suite has a broker stopped, any client socket may be
# handed its port, and the broker then cannot bind it again ("Address already in use"). Needs
# root; without it nothing changes.
reserve_ports() {
  local file=/proc/sys/net/ipv4/ip_local_reserved_ports
  [ -w "$file" ] || return 0
  local current joined
  current=$(cat "$file")
  joined=$(IFS=,; echo "$*")
  echo "${current:+$current,}$joined" >"$file" 2>/dev/null || true
}
