# Added to dev.hcl to run examlab itself as Nomad jobs (deploy/nomad) on
# the dev agent: the host volumes those jobs mount. As root:
#
#   make nomad-dev-deploy     # makes the directories, then runs:
#   nomad agent -config nomad/agent/dev.hcl -config nomad/agent/dev-deploy.hcl
#
# The platform's jobs run with the exec driver, as the user nobody, in a
# chroot of the client's /bin, /etc, /lib, /sbin and /usr: the examlab
# binary they run must be under one of those (/usr/local/bin/examlab), and
# both directories below writable by nobody. The labs' labnet tasks run
# the same binary outside the chroot (raw_exec), at the same path.

client {
  # The shared state directory (sessions/...) that api, worker and relay
  # read and write; on a real cluster, shared storage on every client.
  host_volume "examlab-state" {
    path      = "/var/lib/examlab/dev-deploy/state"
    read_only = false
  }

  # Redis's append-only file.
  host_volume "examlab-redis" {
    path      = "/var/lib/examlab/dev-deploy/redis"
    read_only = false
  }
}
