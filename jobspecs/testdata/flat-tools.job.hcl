job "exam-golden00" {
  datacenters = ["dc1"]
  type = "service"
  priority = 50
  meta = {
    "examlab.candidate" = "candidate@example.com"
    "examlab.exam" = "flat-lab"
    "examlab.managed" = "true"
    "examlab.render" = "8"
    "examlab.session" = "golden0000s1"
    "examlab.spec" = "f1648104ef3f7f81"
  }
  group "lab" {
    count = 1
    restart {
      attempts = 2
      interval = "5m0s"
      delay = "5s"
      mode = "fail"
    }
    reschedule {
      attempts = 0
      unlimited = false
    }
    disconnect {
      lost_after = "15m0s"
      replace = false
      reconcile = "keep_original"
    }
    update {
      max_parallel = 0
    }
    task "labnet-up" {
      driver = "raw_exec"
      lifecycle {
        hook = "prestart"
        sidecar = false
      }
      config {
        args = ["labnet", "up", "-session", "golden0000s1", "-exam", "flat-lab", "-grader-tools", "examlab-grader-0123456789ab", "-grader-busybox", "/bin/busybox"]
        command = "/usr/local/bin/examlab"
      }
      resources {
        cpu = 20
        memory = 32
        memory_max = 256
      }
      logs {
        max_files = 1
        max_file_size = 1
      }
    }
    task "tokyo" {
      driver = "docker"
      config {
        cap_add = ["chown", "dac_override", "fowner", "kill", "net_raw", "setgid", "setuid"]
        cap_drop = ["all"]
        cpu_hard_limit = false
        force_pull = false
        hostname = "tokyo"
        image = "examlab/node:bookworm"
        labels = {
          "examlab.cpu-limit" = "0.25"
          "examlab.exam" = "flat-lab"
          "examlab.node" = "tokyo"
          "examlab.role" = "branch"
          "examlab.runtime" = "nomad"
          "examlab.session" = "golden0000s1"
        }
        logging {
          config = {
            "max-file" = "2"
            "max-size" = "5m"
          }
          type = "json-file"
        }
        mount {
          readonly = true
          source = "examlab-grader-0123456789ab"
          target = "/.examlab"
          type = "volume"
        }
        network_aliases = ["tokyo"]
        network_mode = "exam-golden00-net"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
      }
      resources {
        cpu = 100
        memory = 48
        memory_max = 128
      }
      kill_timeout = "5s"
      logs {
        disabled = true
      }
      meta = {
        "examlab.role" = "branch"
      }
    }
    task "g1" {
      driver = "docker"
      config {
        cap_add = ["chown", "dac_override", "fowner", "kill", "net_admin", "net_raw", "setgid", "setuid"]
        cap_drop = ["all"]
        cpu_hard_limit = false
        force_pull = false
        hostname = "g1"
        image = "examlab/node:bookworm"
        labels = {
          "examlab.cpu-limit" = "0.25"
          "examlab.exam" = "flat-lab"
          "examlab.node" = "g1"
          "examlab.role" = "gateway"
          "examlab.runtime" = "nomad"
          "examlab.session" = "golden0000s1"
        }
        logging {
          config = {
            "max-file" = "2"
            "max-size" = "5m"
          }
          type = "json-file"
        }
        mount {
          readonly = true
          source = "examlab-grader-0123456789ab"
          target = "/.examlab"
          type = "volume"
        }
        network_aliases = ["g1"]
        network_mode = "exam-golden00-net"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
        sysctl = {
          "net.ipv4.ip_forward" = "1"
        }
      }
      resources {
        cpu = 100
        memory = 48
        memory_max = 128
      }
      kill_timeout = "5s"
      logs {
        disabled = true
      }
      meta = {
        "examlab.role" = "gateway"
      }
    }
    task "labnet-watch" {
      driver = "raw_exec"
      lifecycle {
        hook = "prestart"
        sidecar = true
      }
      config {
        args = ["labnet", "watch", "-session", "golden0000s1"]
        command = "/usr/local/bin/examlab"
      }
      resources {
        cpu = 20
        memory = 32
        memory_max = 256
      }
      logs {
        max_files = 1
        max_file_size = 1
      }
    }
    task "labnet-down" {
      driver = "raw_exec"
      lifecycle {
        hook = "poststop"
        sidecar = false
      }
      config {
        args = ["labnet", "down", "-session", "golden0000s1"]
        command = "/usr/local/bin/examlab"
      }
      resources {
        cpu = 20
        memory = 32
        memory_max = 256
      }
      logs {
        max_files = 1
        max_file_size = 1
      }
    }
  }
}
