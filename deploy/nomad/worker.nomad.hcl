# examlab workers: provision, archive, cleanup and the periodic sweeps,
# driving labs on this same cluster through the Nomad API. Health checks
# hit the ops listener (/healthz: the process is up; /readyz: Redis and the
# lab runtime answer).
#
#   nomad job run -var public_url=https://exam.example.org deploy/nomad/worker.nomad.hcl

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "examlab" {
  description = "Path of the examlab binary on the clients (also what labs' labnet tasks run)."
  type        = string
  default     = "/usr/local/bin/examlab"
}

variable "nomad_addr" {
  description = "Nomad API address for the lab runtime; empty means the local agent over HTTPS."
  type        = string
  default     = ""
}

variable "nomad_cacert" {
  description = "CA of the Nomad API's certificate; empty for a plain-HTTP dev agent."
  type        = string
  default     = "/etc/nomad.d/tls/ca.pem"
}

variable "instances" {
  description = "How many to run; one is enough on a single dev agent."
  type        = number
  default     = 2
}

variable "public_url" {
  type    = string
  default = "https://exam.example.org"
}

job "examlab-worker" {
  datacenters = var.datacenters
  type        = "service"

  group "worker" {
    count = var.instances

    volume "state" {
      type      = "host"
      source    = "examlab-state"
      read_only = false
    }

    # Leave the service catalogue before the task is stopped.
    shutdown_delay = "5s"

    network {
      port "ops" {}
    }

    service {
      name     = "examlab-worker"
      provider = "nomad"
      port     = "ops"

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }

      check {
        name     = "ready"
        type     = "http"
        path     = "/readyz"
        interval = "15s"
        timeout  = "5s"
      }
    }

    task "worker" {
      driver = "exec"

      volume_mount {
        volume      = "state"
        destination = "/srv/examlab"
      }

      config {
        command = var.examlab
        args    = ["worker"]
      }

      env {
        EXAMLAB_STATE_DIR         = "/srv/examlab"
        EXAMLAB_RUNTIME           = "nomad"
        EXAMLAB_NOMAD_LABNET      = var.examlab
        EXAMLAB_NOMAD_DATACENTERS = join(",", var.datacenters)
        EXAMLAB_PUBLIC_URL        = var.public_url
        EXAMLAB_OPS_LISTEN        = "${NOMAD_ADDR_ops}"
        NOMAD_ADDR                = var.nomad_addr != "" ? var.nomad_addr : "https://${attr.unique.network.ip-address}:4646"
        NOMAD_CACERT              = var.nomad_cacert
      }

      # Redis is found through Nomad's service catalogue; secrets come from
      # the nomad/jobs variable.
      template {
        destination = "${NOMAD_SECRETS_DIR}/examlab.env"
        env         = true
        data        = <<-EOT
          {{ range nomadService "examlab-redis" }}EXAMLAB_REDIS={{ .Address }}:{{ .Port }}{{ end }}
          {{ with nomadVar "nomad/jobs" }}
          EXAMLAB_REDIS_PASSWORD={{ .redis_password }}
          EXAMLAB_ADMIN_TOKEN={{ .admin_token }}
          NOMAD_TOKEN={{ .nomad_token }}
          {{ end }}
        EOT
      }

      # A worker drains its tasks for up to 20s on SIGTERM.
      kill_timeout = "30s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
