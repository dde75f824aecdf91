# A Nomad client of a small examlab cluster: it runs labs (one allocation of
# eight docker containers per session) and, if you like, the platform's own
# jobs from deploy/nomad. Run it as root on every lab machine:
#
#   nomad agent -config /etc/nomad.d/client.hcl
#
# Each client also needs:
#   - Docker Engine, and the lab image built locally (`make image`: no
#     registry is reachable, and the job never pulls);
#   - the examlab binary at the path the platform's EXAMLAB_NOMAD_LABNET
#     names (default /usr/local/bin/examlab): each lab's prestart and
#     poststop tasks run `examlab labnet up|down` with raw_exec to create
#     and remove the session's internal Docker network;
#   - for deploy/nomad's jobs, the shared state directory mounted at
#     /srv/examlab on every client (NFS or similar) and redis-server installed.

datacenter           = "dc1"
data_dir             = "/var/lib/nomad"
bind_addr            = "{{ GetPrivateIP }}"
disable_update_check = true

client {
  enabled = true

  server_join {
    retry_join = ["nomad-server-1.internal", "nomad-server-2.internal", "nomad-server-3.internal"]
  }

  # Head room for the agent, Docker and the labs' network plumbing.
  reserved {
    cpu    = 500
    memory = 512
  }

  # Shared storage for sessions/ (api and worker read and write it).
  host_volume "examlab-state" {
    path      = "/srv/examlab"
    read_only = false
  }

  # Redis's append-only file, on the client that runs deploy/nomad/redis.
  host_volume "examlab-redis" {
    path      = "/var/lib/examlab/redis"
    read_only = false
  }
}

# Only the labnet lifecycle tasks use raw_exec. It runs as the agent's user
# (root), so keep raw_exec jobs to examlab's namespace: create it with
# `capabilities { enabled_task_drivers = ["docker", "raw_exec"] }` and give
# every other namespace a list without raw_exec (nomad/README.md).
plugin "raw_exec" {
  config {
    enabled = true
  }
}

plugin "docker" {
  config {
    # Every capability an exam may grant a node; net_admin and net_raw are
    # not in the driver's default list. Nothing privileged.
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
      # No registry can give the lab image back: never remove images.
      image     = false
      container = true
    }
  }
}

acl {
  enabled = true
}

tls {
  http                   = true
  rpc                    = true
  ca_file                = "/etc/nomad.d/tls/ca.pem"
  cert_file              = "/etc/nomad.d/tls/client.pem"
  key_file               = "/etc/nomad.d/tls/client-key.pem"
  verify_server_hostname = true
  verify_https_client    = false
}
