# The server of the three-client test cluster (`make nomad-cluster`): one
# server, no labs of its own, on loopback. nomad/agent/cluster.sh runs it
# with its own data directory and ports (a file it writes beside the data);
# this file holds what the cluster is for.

bind_addr            = "127.0.0.1"
log_level            = "INFO"
disable_update_check = true

advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}

server {
  enabled          = true
  bootstrap_expect = 1

  # Notice a dead client quickly: a client heartbeats every 5-10 s and is
  # marked down 5 s after a missed one, so a SIGKILLed client's labs show
  # as unknown (then lost) within about 15 s instead of 30-40 s. Fine for
  # three clients; a large cluster wants the defaults (10 s each).
  min_heartbeat_ttl = "5s"
  heartbeat_grace   = "5s"

  # Applied once, when the cluster is first bootstrapped; later changes
  # need `nomad operator scheduler set-config` (or a fresh data dir).
  default_scheduler_config {
    # Honour a task's memory_max: a lab node reserves what it needs for
    # placement and may use up to its limit when the client has room.
    memory_oversubscription_enabled = true
    # Spread labs over the clients instead of filling one first: a lost
    # client then takes fewer labs with it.
    scheduler_algorithm = "spread"
  }
}

consul {
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}
