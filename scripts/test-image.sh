#!/usr/bin/env bash
# Tests the container image scripts/build-image.sh built, without starting a container (CI has
# no cgroups to start one with): the image's files are unpacked from `podman save` into a
# directory, and the server runs from that directory as the image's user, under
# `chroot --userspec=10001:10001`, with the image's own ENV, ENTRYPOINT and CMD, on loopback.
#
#   scripts/test-image.sh                      # tollgate:latest
#   IMAGE=tollgate:dev scripts/test-image.sh
#
# Checked: the image's configuration (user, env, volume, port, healthcheck, entrypoint); the
# owner and mode of /data and /tmp; that the binary starts with only the image's libraries;
# `init --json` on the empty volume as user 10001; the first `serve`; the image's HEALTHCHECK
# command; a plan and a reserve; a SIGTERM; a second `serve` on the same /data that still holds
# the reservation. Any failure prints the server's log. Needs podman, chroot, curl and jq, and
# root (chroot). Runs with no standard input.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-tollgate:latest}"
# Seconds a server gets to answer /readyz, and to exit after SIGTERM.
START_SECONDS=30
STOP_SECONDS=30

work=$(mktemp -d)
root="$work/root"
log="$work/serve.log"
server_pid=""

cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill -KILL "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

die() {
  echo "test-image: FAILED: $*" >&2
  if [[ -s "$log" ]]; then
    echo "---- server log ($log)" >&2
    cat "$log" >&2
    echo "---- end of the server log" >&2
  fi
  exit 1
}

[[ $EUID -eq 0 ]] || die "run as root (chroot)"
for tool in podman chroot curl jq; do
  command -v "$tool" >/dev/null || die "$tool not found"
done

# ------------------------------------------------------------------ the image, as saved
# `podman save` writes the image as `docker save` would, and as `docker load` reads it:
# manifest.json names the image's configuration and its layer tars, bottom first.
podman image exists "$IMAGE" || die "no image $IMAGE (run scripts/build-image.sh first)"
podman save --quiet --format docker-archive --output "$work/image.tar" "$IMAGE"
mkdir "$work/archive" "$root"
tar --extract --file "$work/image.tar" --directory "$work/archive"
manifest="$work/archive/manifest.json"

# The configuration a container runtime reads from the archive.
config=$(jq '.config' "$work/archive/$(jq -r '.[0].Config' "$manifest")")
expect_config() { # JQ-FILTER EXPECTED
  local got
  got=$(jq -c "$1" <<<"$config")
  [[ "$got" == "$2" ]] || die "image config $1 is $got, expected $2"
}
expect_config '.User' '"10001:10001"'
expect_config '.Entrypoint' '["/usr/local/bin/tollgate"]'
expect_config '.Cmd' '["serve"]'
expect_config '.ExposedPorts | keys' '["7070/tcp"]'
expect_config '.Volumes | keys' '["/data"]'
expect_config '[.Env[] | select(startswith("TOLLGATE_"))] | sort' \
  '["TOLLGATE_DATA_DIR=/data","TOLLGATE_LISTEN=0.0.0.0:7070"]'
# Only the docker format keeps a healthcheck: null here means a build without --format docker.
expect_config '.Healthcheck.Test' '["CMD","/usr/local/bin/tollgate","healthcheck"]'
mapfile -t image_env < <(jq -r '.Env[]' <<<"$config")
mapfile -t entrypoint < <(jq -r '.Entrypoint[]' <<<"$config")
mapfile -t cmd < <(jq -r '.Cmd[]' <<<"$config")
mapfile -t healthcheck < <(jq -r '.Healthcheck.Test[1:][]' <<<"$config")

# The image's files: its layers untarred in order, as root, keep their owners and modes. This
# image has one layer and deletes nothing, so there are no whiteouts to apply (checked below).
mapfile -t layers < <(jq -r '.[0].Layers[]' "$manifest")
[[ ${#layers[@]} -gt 0 ]] || die "no layers in the archive of $IMAGE"
for layer in "${layers[@]}"; do
  tar --extract --file "$work/archive/$layer" --directory "$root" --numeric-owner \
    --same-permissions --same-owner
done
rm -rf "$work/archive" "$work/image.tar"
whiteouts=$(find "$root" -name '.wh.*' | head -5)
[[ -z "$whiteouts" ]] || die "the image deletes files (whiteouts: $whiteouts); apply them here"

expect_stat() { # PATH OWNER MODE
  local got
  got=$(stat -c '%u:%g %a' "$root$1")
  [[ "$got" == "$2 $3" ]] || die "$1 is $got, expected $2 $3"
}
expect_stat /data 10001:10001 700
expect_stat /tmp 0:0 1777
expect_stat /usr/local/bin/tollgate 0:0 755
grep -q '^tollgate:x:10001:10001:' "$root/etc/passwd" || die "no user tollgate 10001 in /etc/passwd"
[[ ! -e "$root/bin/sh" ]] || die "the image has a shell: it should hold the binary alone"

# in_image [VAR=value...] ARGS...: runs ARGS inside the image's files as the image's user, with
# the image's environment (and only it) plus the VAR=value given first.
in_image() {
  local extra=()
  while [[ $# -gt 0 && "$1" == *=* && "$1" != /* ]]; do
    extra+=("$1")
    shift
  done
  env -i "${image_env[@]}" "${extra[@]}" chroot --userspec=10001:10001 "$root" "$@" </dev/null
}

# The binary starts with the libraries of the image alone (and names its build).
version=$(in_image /usr/local/bin/tollgate --version) ||
  die "the binary does not start inside the image (a missing library?)"
echo "inside the image: $version"

# ------------------------------------------------------------------ first start
# The documented way to read the secrets of a new install, on the empty volume as user 10001.
init=$(in_image /usr/local/bin/tollgate init --json) || die "init --json failed on the empty /data"
key=$(jq -r '.keys.test.secret' <<<"$init")
[[ "$key" == tg_sk_test_* ]] || die "init --json printed no test secret key: $init"

# start_server: the image's ENTRYPOINT and CMD, as a container would run them, on a port the
# kernel picks (TOLLGATE_LISTEN=127.0.0.1:0, so no race for a free port); sets url.
start_server() {
  : >"$log"
  # in_image's command written out, not the function: `&` on a simple command forks a child
  # that execs env, which execs chroot, which execs the server, so $! is the server itself and
  # SIGTERM reaches it (a function would run in a bash subshell that SIGTERM would kill alone).
  env -i "${image_env[@]}" TOLLGATE_LISTEN=127.0.0.1:0 \
    chroot --userspec=10001:10001 "$root" "${entrypoint[@]}" "${cmd[@]}" </dev/null >>"$log" 2>&1 &
  server_pid=$!
  url=""
  local deadline=$((SECONDS + START_SECONDS))
  while [[ $SECONDS -lt $deadline ]]; do
    kill -0 "$server_pid" 2>/dev/null || die "the server exited at start"
    if [[ -z "$url" ]]; then
      url=$(grep -so 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //') ||
        true
    fi
    if [[ -n "$url" ]] && [[ $(curl -s -o /dev/null -w '%{http_code}' "$url/readyz") == 200 ]]; then
      echo "server up at $url"
      return
    fi
    sleep 0.2
  done
  die "the server did not answer /readyz with 200 within $START_SECONDS s"
}

stop_server() {
  kill -TERM "$server_pid"
  local deadline=$((SECONDS + STOP_SECONDS)) status=0
  while kill -0 "$server_pid" 2>/dev/null; do
    [[ $SECONDS -lt $deadline ]] || die "the server did not exit within $STOP_SECONDS s of SIGTERM"
    sleep 0.2
  done
  wait "$server_pid" || status=$?
  server_pid=""
  [[ $status -eq 0 ]] || die "the server exited with status $status after SIGTERM"
}

# api METHOD PATH [BODY]: the answer's body; dies unless the status is 200.
api() {
  local answer status
  answer=$(curl -s -w '\n%{http_code}' -X "$1" "$url$2" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' ${3:+-d "$3"}) || die "$1 $2: no answer"
  status=${answer##*$'\n'}
  answer=${answer%$'\n'*}
  [[ "$status" == 200 ]] || die "$1 $2 answered $status: $answer"
  printf '%s' "$answer"
}

start_server
# The image's HEALTHCHECK command, pointed at this server's port; and it fails where nothing
# answers (port 9, discard, has no server here).
in_image TOLLGATE_HEALTHCHECK_URL="$url" "${healthcheck[@]}" || die "the HEALTHCHECK failed"
in_image /usr/local/bin/tollgate healthcheck --url "$url" || die "healthcheck --url failed"
if in_image /usr/local/bin/tollgate healthcheck --url http://127.0.0.1:9 2>/dev/null; then
  die "healthcheck succeeded against a port nothing listens on"
fi

api PUT /v1/plans '{"defaultPlan": "free", "plans": [{"id": "free", "limits": [
  {"id": "images_daily", "quota": 10,
   "window": {"type": "calendar", "period": "day", "timezone": "UTC"},
   "match": [{"event": "image.*"}]}]}]}' >/dev/null
reserved=$(api POST /v1/reserve '{"userId": "u_1", "event": "image.render", "ttlSeconds": 3600}')
[[ $(jq -r '.allowed' <<<"$reserved") == true ]] || die "the reserve was not allowed: $reserved"
reservation=$(jq -r '.reservationId' <<<"$reserved")
echo "reserved $reservation"
stop_server

# Every file the server wrote belongs to its user: the volume stays usable after a restart.
foreign=$(find "$root/data" ! -uid 10001 | head -5)
[[ -z "$foreign" ]] || die "files in /data not owned by 10001: $foreign"
# `init` wrote every secret to /data/tollgate-keys.json, readable by the image's user alone,
# the same object it printed; and the server's log holds neither the admin token nor a live key.
expect_stat /data/tollgate-keys.json 10001:10001 600
[[ $(jq -cS . "$root/data/tollgate-keys.json") == $(jq -cS . <<<"$init") ]] ||
  die "the keys file differs from what init --json printed"
echo "keys file: /data/tollgate-keys.json, 10001:10001, 0600, as printed"
for secret in "$(jq -r .adminToken <<<"$init")" "$(jq -r .keys.live.secret <<<"$init")"; do
  if grep -qF "$secret" "$log"; then die "the server logged a secret"; fi
done

# ------------------------------------------------------------------ second start, same /data
start_server
held=$(api GET "/v1/reservations/$reservation")
[[ $(jq -r '.reservationId' <<<"$held") == "$reservation" ]] ||
  die "the reservation did not survive the restart: $held"
[[ $(jq -r '.status' <<<"$held") == pending ]] || die "the reservation is not pending: $held"
stop_server
echo "test-image: OK ($IMAGE)"
