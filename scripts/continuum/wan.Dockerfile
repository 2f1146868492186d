# WAN link between the continuum's hosts (scripts/images.sh wan): ddnn-wan, a TCP proxy that
# delays each direction (this kernel has no tc netem).
FROM ddnn-local/debian:bookworm
COPY ddnn-wan /usr/local/bin/ddnn-wan
USER nobody
ENTRYPOINT ["ddnn-wan"]
