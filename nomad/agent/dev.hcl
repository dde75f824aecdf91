# One Nomad agent that is both server and client, bound to loopback, for
# running examlab's Nomad runtime on a single machine. Run it as root (the
# docker driver's CPU limits and raw_exec's labnet task need it):
#
#   sudo nomad agent -config nomad/agent/dev.hcl
#
# then point examlab at it with NOMAD_ADDR=http://127.0.0.1:4646 (see
# nomad/README.md). State lives in data_dir and survives restarts; remove the
# directory to start from scratch.

name                 = "examlab-dev"
data_dir             = "/var/lib/examlab/nomad-dev"
bind_addr            = "127.0.0.1"
log_level            = "INFO"
disable_update_check = true

# Loopback only; Nomad refuses to guess an advertise address there.
advertise {
  http = "127.0.0.1"
  rpc  = "127.0.0.1"
  serf = "127.0.0.1"
}

server {
  enabled          = true
  bootstrap_expect = 1

  # A lab node reserves what it idles at and may use up to its memory_max:
  # without oversubscription Nomad ignores memory_max and examlab reserves
  # each node's whole limit instead. Applies when the cluster is first
  # bootstrapped; on a running one: nomad operator scheduler set-config
  # -memory-oversubscription=true
  default_scheduler_config {
    memory_oversubscription_enabled = true
  }
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
  # The examlab binary that runs `labnet up|down` for each lab is found
  # through the job's own path (EXAMLAB_NOMAD_LABNET); nothing to set here.
}

consul {
  auto_advertise   = false
  server_auto_join = false
  client_auto_join = false
}

# raw_exec runs the per-session labnet task, which talks to the local Docker
# engine to create and remove the session's internal network.
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
    # volume), which the driver refuses unless volumes are enabled. That
    # would also let a job bind host paths into its containers: only
    # examlab submits jobs here (its namespace and token), and its jobs
    # mount nothing else (nomad/README.md, "The grader's tools").
    volumes {
      enabled = true
    }

    gc {
      # No registry can give the lab image back once it is removed: never
      # garbage-collect images. Containers go with their allocation.
      image     = false
      container = true
    }
  }
}
