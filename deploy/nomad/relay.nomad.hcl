# The examlab terminal relay on its own, for clusters that scale browser
# terminals apart from the API: candidates' WebSockets, exec into their lab
# nodes through Nomad alloc exec, recordings to shared storage. Route
# /ws/ (the terminal WebSockets) to the "examlab-relay" service.
#
#   nomad job run -var public_url=https://exam.example.org deploy/nomad/relay.nomad.hcl

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "examlab" {
  type    = string
  default = "/usr/local/bin/examlab"
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

job "examlab-relay" {
  datacenters = var.datacenters
  type        = "service"

  group "relay" {
    count = var.instances

    # Leave the service catalogue before the task is stopped.
    shutdown_delay = "5s"

    volume "state" {
      type      = "host"
      source    = "examlab-state"
      read_only = false
    }

    network {
      port "http" {}
    }

    service {
      name     = "examlab-relay"
      provider = "nomad"
      port     = "http"

      check {
        name     = "alive"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "2s"
      }
    }

    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      auto_revert      = true
    }

    task "relay" {
      driver = "exec"

      volume_mount {
        volume      = "state"
        destination = "/srv/examlab"
      }

      config {
        command = var.examlab
        args    = ["relay"]
      }

      env {
        EXAMLAB_RELAY_LISTEN      = "${NOMAD_ADDR_http}"
        EXAMLAB_PUBLIC_URL        = var.public_url
        EXAMLAB_COOKIE_SECURE     = substr(var.public_url, 0, 8) == "https://" ? "true" : "false"
        EXAMLAB_STATE_DIR         = "/srv/examlab"
        EXAMLAB_RUNTIME           = "nomad"
        EXAMLAB_NOMAD_LABNET      = var.examlab
        EXAMLAB_NOMAD_DATACENTERS = join(",", var.datacenters)
        NOMAD_ADDR                = var.nomad_addr != "" ? var.nomad_addr : "https://${attr.unique.network.ip-address}:4646"
        NOMAD_CACERT              = var.nomad_cacert
      }

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

      # Open terminals get up to 30s to close cleanly on SIGTERM.
      kill_timeout = "35s"

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
