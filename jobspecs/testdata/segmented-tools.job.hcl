job "exam-golden00" {
  datacenters = ["dc1"]
  type = "service"
  priority = 50
  meta = {
    "examlab.candidate" = "candidate@example.com"
    "examlab.exam" = "segmented-lab"
    "examlab.managed" = "true"
    "examlab.render" = "8"
    "examlab.session" = "golden0000s1"
    "examlab.spec" = "610458f4e19ba133"
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
          "examlab.exam" = "segmented-lab"
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
        network_mode = "none"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
        sysctl = {
          "net.ipv6.conf.all.disable_ipv6" = "1"
          "net.ipv6.conf.default.disable_ipv6" = "1"
        }
      }
      resources {
        cpu = 50
        memory = 32
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
          "examlab.exam" = "segmented-lab"
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
        network_mode = "none"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
        sysctl = {
          "net.ipv4.ip_forward" = "1"
          "net.ipv6.conf.all.disable_ipv6" = "1"
          "net.ipv6.conf.default.disable_ipv6" = "1"
        }
      }
      resources {
        cpu = 50
        memory = 32
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
    task "g2" {
      driver = "docker"
      config {
        cap_add = ["chown", "dac_override", "fowner", "kill", "net_admin", "net_raw", "setgid", "setuid"]
        cap_drop = ["all"]
        cpu_hard_limit = false
        force_pull = false
        hostname = "g2"
        image = "examlab/node:bookworm"
        labels = {
          "examlab.cpu-limit" = "0.25"
          "examlab.exam" = "segmented-lab"
          "examlab.node" = "g2"
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
        network_mode = "none"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
        sysctl = {
          "net.ipv4.ip_forward" = "1"
          "net.ipv6.conf.all.disable_ipv6" = "0"
          "net.ipv6.conf.default.disable_ipv6" = "1"
        }
      }
      resources {
        cpu = 50
        memory = 32
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
    task "osaka" {
      driver = "docker"
      config {
        cap_add = ["chown", "dac_override", "fowner", "kill", "net_raw", "setgid", "setuid"]
        cap_drop = ["all"]
        cpu_hard_limit = false
        force_pull = false
        hostname = "osaka"
        image = "examlab/node:bookworm"
        labels = {
          "examlab.cpu-limit" = "0.25"
          "examlab.exam" = "segmented-lab"
          "examlab.node" = "osaka"
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
        network_mode = "none"
        pids_limit = 256
        security_opt = ["no-new-privileges"]
        sysctl = {
          "net.ipv6.conf.all.disable_ipv6" = "1"
          "net.ipv6.conf.default.disable_ipv6" = "1"
        }
      }
      resources {
        cpu = 50
        memory = 32
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
    task "labnet-up" {
      driver = "raw_exec"
      lifecycle {
        hook = "poststart"
        sidecar = false
      }
      config {
        args = ["labnet", "up", "-session", "golden0000s1", "-await", "$${NOMAD_ALLOC_DIR}/labnet.json"]
        command = "/usr/local/bin/examlab"
      }
      restart {
        attempts = 0
        mode = "fail"
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
    task "labnet-watch" {
      driver = "raw_exec"
      lifecycle {
        hook = "prestart"
        sidecar = true
      }
      config {
        args = ["labnet", "watch", "-session", "golden0000s1", "-exam", "segmented-lab", "-grader-tools", "examlab-grader-0123456789ab", "-grader-busybox", "/bin/busybox", "-plan", "$${NOMAD_TASK_DIR}/lab.json", "-state", "$${NOMAD_ALLOC_DIR}/labnet.json"]
        command = "/usr/local/bin/examlab"
      }
      template {
        destination = "local/lab.json"
        change_mode = "noop"
        left_delimiter = "<examlab-plan<"
        right_delimiter = ">examlab-plan>"
        data = <<EOT
{
  "session_id": "golden0000s1",
  "exam_id": "segmented-lab",
  "candidate": "candidate@example.com",
  "network": "exam-golden00-net",
  "segments": [
    {
      "name": "lan-a",
      "subnet": "192.168.10.0/24"
    },
    {
      "name": "wan",
      "subnet": "10.0.12.0/30"
    },
    {
      "name": "lan-b",
      "subnet": "192.168.20.0/24"
    }
  ],
  "nodes": [
    {
      "name": "tokyo",
      "role": "branch",
      "container": "exam-golden00-tokyo",
      "hostname": "tokyo",
      "image": "examlab/node:bookworm",
      "memory_mb": 128,
      "cpus": 0.25,
      "pids_limit": 256,
      "reserve_cpus": 0.05,
      "reserve_memory_mb": 32,
      "cap_add": [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "KILL",
        "NET_RAW",
        "SETGID",
        "SETUID"
      ],
      "labels": {
        "examlab.exam": "segmented-lab",
        "examlab.managed": "true",
        "examlab.node": "tokyo",
        "examlab.role": "branch",
        "examlab.session": "golden0000s1"
      },
      "interfaces": [
        {
          "name": "eth0",
          "segment": "lan-a",
          "address": "192.168.10.10/24"
        }
      ],
      "routes": [
        {
          "to": "default",
          "via": "192.168.10.1"
        }
      ],
      "address": "192.168.10.10",
      "files": [
        {
          "path": "/etc/motd",
          "mode": 420,
          "content": "Welcome to {{ .Lab }} at $${HOME} (%%{ if x }) \u003cb\u003etokyo\u003c/b\u003e \u003eexamlab-plan\u003e\n"
        }
      ]
    },
    {
      "name": "g1",
      "role": "gateway",
      "container": "exam-golden00-g1",
      "hostname": "g1",
      "image": "examlab/node:bookworm",
      "memory_mb": 128,
      "cpus": 0.25,
      "pids_limit": 256,
      "reserve_cpus": 0.05,
      "reserve_memory_mb": 32,
      "cap_add": [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "KILL",
        "NET_ADMIN",
        "NET_RAW",
        "SETGID",
        "SETUID"
      ],
      "sysctls": {
        "net.ipv4.ip_forward": "1"
      },
      "labels": {
        "examlab.exam": "segmented-lab",
        "examlab.managed": "true",
        "examlab.node": "g1",
        "examlab.role": "gateway",
        "examlab.session": "golden0000s1"
      },
      "interfaces": [
        {
          "name": "eth0",
          "segment": "lan-a",
          "address": "192.168.10.1/24"
        },
        {
          "name": "eth1",
          "segment": "wan",
          "address": "10.0.12.1/30"
        }
      ],
      "address": "192.168.10.1"
    },
    {
      "name": "g2",
      "role": "gateway",
      "container": "exam-golden00-g2",
      "hostname": "g2",
      "image": "examlab/node:bookworm",
      "memory_mb": 128,
      "cpus": 0.25,
      "pids_limit": 256,
      "reserve_cpus": 0.05,
      "reserve_memory_mb": 32,
      "cap_add": [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "KILL",
        "NET_ADMIN",
        "NET_RAW",
        "SETGID",
        "SETUID"
      ],
      "sysctls": {
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.disable_ipv6": "0"
      },
      "labels": {
        "examlab.exam": "segmented-lab",
        "examlab.managed": "true",
        "examlab.node": "g2",
        "examlab.role": "gateway",
        "examlab.session": "golden0000s1"
      },
      "interfaces": [
        {
          "name": "eth0",
          "segment": "wan",
          "address": "10.0.12.2/30"
        },
        {
          "name": "eth1",
          "segment": "lan-b",
          "address": "192.168.20.1/24"
        }
      ],
      "address": "10.0.12.2"
    },
    {
      "name": "osaka",
      "role": "branch",
      "container": "exam-golden00-osaka",
      "hostname": "osaka",
      "image": "examlab/node:bookworm",
      "memory_mb": 128,
      "cpus": 0.25,
      "pids_limit": 256,
      "reserve_cpus": 0.05,
      "reserve_memory_mb": 32,
      "cap_add": [
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "KILL",
        "NET_RAW",
        "SETGID",
        "SETUID"
      ],
      "labels": {
        "examlab.exam": "segmented-lab",
        "examlab.managed": "true",
        "examlab.node": "osaka",
        "examlab.role": "branch",
        "examlab.session": "golden0000s1"
      },
      "interfaces": [
        {
          "name": "eth0",
          "segment": "lan-b",
          "address": "192.168.20.10/24"
        }
      ],
      "routes": [
        {
          "to": "default",
          "via": "192.168.20.1"
        }
      ],
      "address": "192.168.20.10",
      "setup": "echo '{{ never a template }}' \u003e /root/ready\n",
      "setup_timeout": 30000000000
    }
  ]
}
EOT
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
