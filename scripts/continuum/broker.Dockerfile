# Test broker image for CI (scripts/images.sh broker): tansu 0.6.0, the host's build, on the local
# Debian base. Users run apache/kafka (docker-compose.yml); this image exists because no image
# can be pulled on the machines this project is tested on.
FROM ddnn-local/debian:bookworm
COPY tansu /usr/local/bin/tansu
RUN useradd --system --uid 10002 --home-dir /var/lib/kafka tansu \
    && mkdir -p /var/lib/kafka/data && chown tansu /var/lib/kafka/data
USER tansu
WORKDIR /var/lib/kafka/data
EXPOSE 9092
ENTRYPOINT ["tansu"]
