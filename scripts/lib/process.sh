# Shared by the service scripts (sourced; they define `log`).

# Waits (up to 10 s) until process $1 has exited; fails the script if it has not.
wait_gone() {
  local i
  for i in $(seq 1 100); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  log "pid $1 still running after 10 s"
  exit 1
}
