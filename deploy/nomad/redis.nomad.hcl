# Redis for examlab: the asynq queues and the session index. One instance,
# its append-only file on the client's "examlab-redis" host volume, so a
# restart or a redeploy keeps every queued task and index entry.
#
#   nomad var put nomad/jobs redis_password=... admin_token=... nomad_token=...
#   nomad job run deploy/nomad/redis.nomad.hcl
#
# The password lives in the nomad/jobs variable that every examlab job
# reads; redis-server comes from Debian's package on the client.

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "examlab-redis" {
  datacenters = var.datacenters
  type        = "service"

  group "redis" {
    count = 1

    volume "data" {
      type      = "host"
      source    = "examlab-redis"
      read_only = false
    }

    # Leave the service catalogue before the task is stopped.
    shutdown_delay = "5s"

    network {
      port "redis" {}
    }

    service {
      name     = "examlab-redis"
      provider = "nomad"
      port     = "redis"

      check {
        name     = "accepts connections"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Redis holds the platform's queues: keep restarting it in place.
    restart {
      attempts = 10
      interval = "10m"
      delay    = "5s"
      mode     = "delay"
    }

    task "redis" {
      driver = "exec"

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      config {
        command = "/usr/bin/redis-server"
        args    = ["${NOMAD_SECRETS_DIR}/redis.conf"]
      }

      template {
        destination = "${NOMAD_SECRETS_DIR}/redis.conf"
        perms       = "0600"
        data        = <<-EOT
          bind {{ env "NOMAD_IP_redis" }}
          port {{ env "NOMAD_PORT_redis" }}
          dir /data
          appendonly yes
          appendfsync everysec
          save ""
          {{ with nomadVar "nomad/jobs" }}requirepass {{ .redis_password }}{{ end }}
        EOT
      }

      resources {
        cpu    = 500
        memory = 512
      }
    }
  }
}
