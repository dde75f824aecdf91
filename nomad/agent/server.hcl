# A Nomad server of a small examlab cluster. Run three (one per machine) for
# a quorum that survives losing one; servers run no labs.
#
#   nomad agent -config /etc/nomad.d/server.hcl
#
# Replace the addresses in server_join and the TLS file paths with yours.
# See nomad/README.md for bootstrapping ACLs and the token examlab uses.

datacenter = "dc1"
data_dir   = "/var/lib/nomad"
# Listen on the machine's private address only.
bind_addr            = "{{ GetPrivateIP }}"
disable_update_check = true

server {
  enabled          = true
  bootstrap_expect = 3

  server_join {
    retry_join = ["nomad-server-1.internal", "nomad-server-2.internal", "nomad-server-3.internal"]
  }

  # A finished lab's job is purged by examlab; this only tidies what an
  # operator stops by hand.
  job_gc_threshold = "1h"

  # A lab node reserves what it idles at and may use up to its memory_max:
  # without oversubscription Nomad ignores memory_max and examlab reserves
  # each node's whole limit instead. Applies when the cluster is first
  # bootstrapped; on a running one: nomad operator scheduler set-config
  # -memory-oversubscription=true
  default_scheduler_config {
    memory_oversubscription_enabled = true
  }
}

# Every request needs a token: examlab's workers get one scoped to the lab
# namespace (nomad/README.md lists the policy).
acl {
  enabled = true
}

# Mutual TLS between agents and for the HTTP API that examlab, and alloc
# exec for candidates' terminals, go through.
tls {
  http                   = true
  rpc                    = true
  ca_file                = "/etc/nomad.d/tls/ca.pem"
  cert_file              = "/etc/nomad.d/tls/server.pem"
  key_file               = "/etc/nomad.d/tls/server-key.pem"
  verify_server_hostname = true
  verify_https_client    = false
}
