#!/bin/sh
# Entry point of the chatsite image, also used by the local stack (deploy/stack.py)
# so that both run the server with exactly the same flags.
#
#   web      serve the ASGI app: uvicorn (the default: the fastest server that
#            passes every fault and security test; docs/deployment.md), or
#            daphne with ASGI_SERVER=daphne (supported and tested too)
#   migrate  apply migrations and collect static files, then exit (one-shot)
#   check    `manage.py check --deploy`, failing on warnings
#   *        run the given command (e.g. `python manage.py createroom lobby`)
set -eu

# Frames above this are refused by daphne before they reach Python. The app's own
# limit (CHAT_MAX_FRAME_BYTES, 64 KiB) closes the socket with a 4xxx code first;
# this is the outer wall against memory exhaustion (CVE-2026-44545).
: "${DAPHNE_MAX_MESSAGE_BYTES:=131072}"

case "${1:-web}" in
web)
    if [ "${ASGI_SERVER:-uvicorn}" = uvicorn ]; then
        # The same walls as daphne's below: frame size, pings, no compression.
        # --forwarded-allow-ips: who may set X-Forwarded-For (nginx's address).
        set -- uvicorn \
            --host "${BIND:-0.0.0.0}" \
            --port "${PORT:-8000}" \
            --proxy-headers \
            --forwarded-allow-ips "${FORWARDED_ALLOW_IPS:-127.0.0.1}" \
            --ws websockets-sansio \
            --ws-max-size "$DAPHNE_MAX_MESSAGE_BYTES" \
            --ws-ping-interval "${DAPHNE_PING_INTERVAL:-20}" \
            --ws-ping-timeout "${DAPHNE_PING_TIMEOUT:-30}" \
            --ws-per-message-deflate false \
            --timeout-graceful-shutdown "${DAPHNE_APPLICATION_CLOSE_TIMEOUT:-10}" \
            --lifespan off \
            --no-server-header \
            --log-level warning \
            --no-access-log
        exec "$@" chatsite.asgi:application
    fi
    # --proxy-headers: the client address comes from X-Forwarded-For set by nginx.
    # --websocket_timeout: a socket lives at most a day, then the browser reconnects
    #   and resumes from its cursor (matches channels-redis's default group_expiry).
    # --ping-interval/--ping-timeout: keep idle sockets alive through nginx and
    #   notice dead peers within a minute.
    set -- daphne \
        -b "${BIND:-0.0.0.0}" \
        -p "${PORT:-8000}" \
        --proxy-headers \
        --websocket-max-message-size "$DAPHNE_MAX_MESSAGE_BYTES" \
        --websocket-max-frame-size "$DAPHNE_MAX_MESSAGE_BYTES" \
        --websocket_timeout "${DAPHNE_WEBSOCKET_TIMEOUT:-86400}" \
        --websocket_connect_timeout "${DAPHNE_WEBSOCKET_CONNECT_TIMEOUT:-10}" \
        --ping-interval "${DAPHNE_PING_INTERVAL:-20}" \
        --ping-timeout "${DAPHNE_PING_TIMEOUT:-30}" \
        --application-close-timeout "${DAPHNE_APPLICATION_CLOSE_TIMEOUT:-10}" \
        --no-server-name
    if [ -n "${DAPHNE_ACCESS_LOG:-}" ]; then
        set -- "$@" --access-log "$DAPHNE_ACCESS_LOG"
    fi
    exec "$@" chatsite.asgi:application
    ;;
migrate)
    # A migration may rewrite a large table: no per-statement limit for it.
    DATABASE_STATEMENT_TIMEOUT_MS=0 python manage.py migrate --noinput
    python manage.py collectstatic --noinput --verbosity 0
    ;;
check)
    exec python manage.py check --deploy --fail-level WARNING
    ;;
*)
    exec "$@"
    ;;
esac
