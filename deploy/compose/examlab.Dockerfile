# The examlab platform image: the static examlab binary on an empty base,
# with the CA bundle from Debian's ca-certificates, the grader's static
# busybox (which the worker puts in every lab node) and a /tmp. Nothing is
# pulled: scratch is Docker's built-in empty image. Built by build.sh, which
# prepares the context (the binary and rootfs/).
FROM scratch
COPY rootfs/ /
COPY examlab /usr/local/bin/examlab
ENV EXAMLAB_LISTEN=0.0.0.0:8080 \
    EXAMLAB_STATE_DIR=/var/lib/examlab
EXPOSE 8080
# examlab is PID 1: it starts no child processes, and it drains on SIGTERM.
ENTRYPOINT ["/usr/local/bin/examlab"]
CMD ["serve"]
