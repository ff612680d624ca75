#!/usr/bin/env bash
# Builds the container image `tollgate:latest` from the release binary, with no base image: the
# root filesystem is staged here from this machine's files and added to `FROM scratch`
# (Containerfile, docs/operations.md "Install and run").
#
#   scripts/build-image.sh                          # release build, then the image
#   BIN=/path/to/tollgate scripts/build-image.sh    # that binary, no build
#   IMAGE=registry.example/tollgate:1.2 scripts/build-image.sh
#   BUILDER=docker scripts/build-image.sh           # build with Docker instead of podman
#
# The staged root (CARGO_TARGET_DIR, default target/, then image-root/) holds:
#   /usr/local/bin/tollgate               the binary
#   every library ldd lists, and the dynamic loader, at the paths the binary asks for them
#   /etc/passwd, /etc/group               the user and group tollgate, 10001, and root
#   /etc/nsswitch.conf                    files then DNS, for the Stripe and Polar host names
#   /data                                 the volume of the embedded store: 10001:10001, 0700
#   /tmp                                  1777, for temporary files
# No CA certificates: every HTTPS client in the binary (reqwest with `rustls-tls`) trusts the
# Mozilla roots compiled into it (webpki-roots), and PostgreSQL is reached without TLS. No time
# zone files: jiff carries its own database (`tzdb-bundle-always`).
#
# Needs podman (Debian: apt-get install podman) or Docker, and ldd; run as root, so that the
# staged /data can be given to user 10001. Prints the image's size in bytes last.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-tollgate:latest}"
BUILDER="${BUILDER:-podman}"
target_dir="${CARGO_TARGET_DIR:-target}"
root="$target_dir/image-root"
context="$target_dir/image-context"
# The user and group the server runs as; a fixed id, so a volume's owner means the same thing in
# every copy of the image (and matches the Containerfile's USER).
TOLLGATE_UID=10001

die() { echo "build-image: $*" >&2; exit 1; }

# podman writes OCI images unless told otherwise, and the OCI format has no HEALTHCHECK; Docker
# writes the docker format always.
case "$BUILDER" in
  podman) format=(--format docker) ;;
  docker) format=() ;;
  *) die "BUILDER must be podman or docker, not $BUILDER" ;;
esac
command -v "$BUILDER" >/dev/null || die "$BUILDER not found (Debian: apt-get install $BUILDER)"
[[ $EUID -eq 0 ]] || die "run as root: the staged /data must belong to user $TOLLGATE_UID"

if [[ -z "${BIN:-}" ]]; then
  cargo build --release --locked -p tollgate-cli
  BIN="$target_dir/release/tollgate"
fi
[[ -x "$BIN" ]] || die "no executable at $BIN"

rm -rf "$root" "$context"
mkdir -p "$root" "$context"
install -D -m 0755 "$BIN" "$root/usr/local/bin/tollgate"

# Each library at the path ldd resolved it to, and the loader at the path written in the binary
# (PT_INTERP, which ldd prints without `=>`): the loader of the image finds them there without
# an /etc/ld.so.cache, as they are in its default directories. `cp -L` copies the file a
# symbolic link names (Debian's /lib64/ld-linux-x86-64.so.2 is one), not the link.
libraries=$(ldd "$BIN") || die "ldd $BIN failed"
if grep -q 'not found' <<<"$libraries"; then
  die "ldd cannot find some libraries of $BIN: $libraries"
fi
while read -r path; do
  [[ -n "$path" ]] || continue
  mkdir -p "$root$(dirname "$path")"
  cp -L "$path" "$root$path"
  echo "staged $path"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libraries")
interpreter=$(readelf -l "$BIN" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
[[ -z "$interpreter" || -e "$root$interpreter" ]] ||
  die "the loader $interpreter of $BIN is not among ldd's libraries"

mkdir -p "$root/etc"
cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
tollgate:x:$TOLLGATE_UID:$TOLLGATE_UID:tollgate:/data:/sbin/nologin
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
tollgate:x:$TOLLGATE_UID:
EOF
# Without this file glibc asks DNS before /etc/hosts; a container runtime writes /etc/hosts and
# /etc/resolv.conf into the container itself.
cat >"$root/etc/nsswitch.conf" <<EOF
passwd: files
group: files
hosts: files dns
EOF
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"

mkdir -p "$root/data" "$root/tmp"
chown "$TOLLGATE_UID:$TOLLGATE_UID" "$root/data"
chmod 0700 "$root/data"
chmod 1777 "$root/tmp"

# One tar with numeric owners, in name order and with one modification time, so the same files
# make the same layer (podman then reuses it) and /data keeps its owner through ADD.
mtime="@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
tar --create --file "$context/rootfs.tar" --directory "$root" --sort=name --numeric-owner \
  --mtime="$mtime" --format=gnu .

"$BUILDER" build "${format[@]}" --file Containerfile --tag "$IMAGE" "$context"
size=$("$BUILDER" image inspect --format '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $size bytes ($(numfmt --to=iec-i --suffix=B "$size"))"
