# Redis for the examlab deployment, from Debian's redis-server package on
# the locally built Debian userland of the lab image (BASE), so no registry
# is needed. Built by build.sh.
ARG BASE=examlab/node:bookworm
FROM ${BASE}
ARG SECURITY_MIRROR=http://deb.debian.org/debian-security
# The base lists only bookworm main; add its updates and security suites so
# Redis comes with Debian's fixes. policy-rc.d stops the package from
# starting a server inside the build.
RUN set -eu; \
    mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list); \
    printf 'deb %s bookworm-updates main\ndeb %s bookworm-security main\n' "$mirror" "$SECURITY_MIRROR" \
        >/etc/apt/sources.list.d/examlab-updates.list; \
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; \
    chmod 0755 /usr/sbin/policy-rc.d; \
    apt-get update -qq; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null; \
    rm -f /usr/sbin/policy-rc.d; \
    rm -rf /var/lib/apt/lists/* /var/log/*; \
    install -d -o redis -g redis -m 0750 /data
USER redis
WORKDIR /data
EXPOSE 6379
# Reachable only on the deployment's own network (no published port).
# Append-only persistence in /data, which the compose file keeps on a
# named volume.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data", \
     "--appendonly", "yes", "--appendfsync", "everysec", "--save", "900 1"]
