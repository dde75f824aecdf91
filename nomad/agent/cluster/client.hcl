# What every client of the three-client test cluster (`make nomad-cluster`)
# shares. The clients run on one machine against one Docker engine;
# nomad/agent/cluster.sh gives each its name (client1..3), data directory,
# ports, the server's address and its share of the machine in a file it
# writes beside the client's data, and runs it as root (the docker driver's
# CPU limits and raw_exec's labnet tasks need it).

bind_addr            = "127.0.0.1"
log_level            = "INFO"
disable_update_check = true

advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}

client {
  enabled = true
  # Labs never publish ports; fingerprint the loopback interface so nothing
  # is bound beyond this machine.
  network_interface = "lo"
  # No cloud here: skip the fingerprinters that probe a metadata service
  # (169.254.169.254) and the Consul and Vault ones.
  options = {
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean,consul,vault"
  }
}

consul {
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}

# raw_exec runs each lab's labnet tasks (the session network, the lab's
# agent), which talk to the local Docker engine.
plugin "raw_exec" {
  config {
    enabled = true
  }
}

plugin "docker" {
  config {
    # Every capability an exam may grant a node (exam.AllowedCapabilities);
    # net_admin and net_raw are not in the driver's default list.
    allow_caps = [
      "audit_write", "chown", "dac_override", "fowner", "fsetid", "kill",
      "net_admin", "net_bind_service", "net_raw", "setgid", "setuid", "sys_chroot",
    ]
    allow_privileged = false

    # The grader's tools: every node mounts a named volume (mount, type
    # volume), which the driver refuses unless volumes are enabled
    # (nomad/README.md, "The grader's tools").
    volumes {
      enabled = true
    }

    gc {
      # No registry can give the lab image back: never remove images.
      image     = false
      container = true
      # The three clients share one engine, and each would take the
      # others' lab containers for ones it leaked (Nomad labels, no
      # allocation of its own) and remove them. Off: a client removes
      # only the containers of its own allocations.
      dangling_containers {
        enabled = false
      }
    }
  }
}
