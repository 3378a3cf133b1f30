#!/usr/bin/env bash
# Downloads the Debian 12 packages (.deb) of PAL's build dependencies that a GPU machine
# without a package registry lacks, into scripts/gpu/debs/ (git-ignored), for
# scripts/gpu/check.sh to unpack there into a folder of its own. Run it here, on the
# Debian 12 development machine (apt's package lists present; root not needed for a
# download, but `apt-get update` needs it once). Safe to run again: it fetches only what
# is missing or changed and removes what is no longer wanted.
#
#   scripts/gpu/prepare.sh            fetch, then print what the folder holds
#   scripts/gpu/prepare.sh --list     print the package list only
#
# What it fetches: yaml-cpp, spdlog + {fmt}, libsndfile with its codecs (FLAC, Ogg,
# Vorbis, Opus, mpg123, LAME), libsoxr, sentencepiece (+ its protobuf-lite), CLI11,
# nlohmann-json, GoogleTest, cpp-httplib (+ the OpenSSL, zlib and brotli headers its
# pkg-config file names), and pkgconf (a pkg-config for machines without one), with
# everything they depend on except the C library and the compiler's runtime, which the
# machine has. scripts/gpu/debs/MANIFEST lists the packages and the newest glibc and
# libstdc++ symbol versions their binaries need, which check.sh compares with the machine's.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
dest=$root/scripts/gpu/debs
list_only=0
case "${1:-}" in
  --list) list_only=1 ;;
  -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "prepare.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac
log() { echo "prepare.sh: $*" >&2; }

# What PAL's CMakeLists.txt finds (find_package / pkg_check_modules), as Debian names it.
wanted=(
  libyaml-cpp-dev libspdlog-dev libfmt-dev
  libsndfile1-dev libsoxr-dev libsentencepiece-dev
  libcli11-dev nlohmann-json3-dev libgtest-dev libcpp-httplib-dev
  pkgconf
)
# Never carried: the C library and the compiler's runtime (the machine's own must be
# used), their headers, and what only they pull in; sources and test frameworks that
# nothing here needs.
excluded='^(libc6|libc6-dev|libc-dev-bin|libc-bin|linux-libc-dev|libcrypt1|libcrypt-dev|libgcc-s1|gcc-12-base|libstdc\+\+6|libnsl2|libnsl-dev|libtirpc3|libtirpc-dev|libtirpc-common|rpcsvc-proto|libgssapi-krb5-2|libkrb5-3|libkrb5support0|libk5crypto3|libkeyutils1|libcom-err2|googletest|catch2|debconf|dpkg|perl-base|libselinux1|libpcre2-8-0)$'

command -v apt-cache >/dev/null || { log "needs apt (Debian 12)"; exit 1; }
grep -qs 'VERSION_CODENAME=bookworm' /etc/os-release ||
  log "warning: this is not Debian 12 (bookworm); the GPU machine check expects Debian 12 binaries"

# The dependency closure, minus the exclusions.
packages=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
             --no-replaces --no-enhances "${wanted[@]}" 2>/dev/null |
           grep -E '^[a-z0-9]' | sort -u | grep -Ev "$excluded" || true)
[ -n "$packages" ] || { log "apt-cache found none of: ${wanted[*]} (run apt-get update as root)"; exit 1; }
arch=$(dpkg --print-architecture)

# The file name apt-get download gives each package's candidate version.
declare -A expected=()
for p in $packages; do
  ver=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
  if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then log "no candidate version of $p"; exit 1; fi
  parch=$(apt-cache show --no-all-versions "$p" | awk '/^Architecture:/ {print $2; exit}')
  expected[$p]="${p}_${ver//:/%3a}_${parch:-$arch}.deb"
done
if [ "$list_only" = 1 ]; then
  for p in $packages; do echo "${expected[$p]}"; done
  exit 0
fi

mkdir -p "$dest"
cd "$dest"
fetch=()
for p in $packages; do [ -s "${expected[$p]}" ] || fetch+=("$p"); done
if [ ${#fetch[@]} -gt 0 ]; then
  log "downloading ${#fetch[@]} packages into scripts/gpu/debs/"
  apt-get download -q "${fetch[@]}" >/dev/null 2>download.log || {
    cat download.log >&2; log "apt-get download failed (network? apt-get update?)"; exit 1; }
  rm -f download.log
fi
for p in $packages; do
  [ -s "${expected[$p]}" ] || { log "missing after download: ${expected[$p]}"; exit 1; }
done
# Files of other versions or packages no longer wanted.
keep=" ${expected[*]} "
for f in *.deb; do
  [[ "$keep" == *" $f "* ]] || { log "removing the stale $f"; rm -f "$f"; }
done

# The newest symbol versions of glibc and libstdc++ that the binaries inside need.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for f in *.deb; do dpkg-deb -x "$f" "$tmp"; done
glibc=$( (find "$tmp" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
          xargs -0 -r objdump -T 2>/dev/null | grep -o 'GLIBC_2\.[0-9.]*' || true) | sort -uV | tail -1)
glibcxx=$( (find "$tmp" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
            xargs -0 -r objdump -T 2>/dev/null | grep -o 'GLIBCXX_3\.4\.[0-9]*' || true) | sort -uV | tail -1)
{
  echo "# scripts/gpu/prepare.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ), $(. /etc/os-release; echo "$PRETTY_NAME") $arch"
  echo "arch $arch"
  echo "needs_glibc ${glibc#GLIBC_}"
  echo "needs_glibcxx ${glibcxx#GLIBCXX_}"
  for p in $packages; do echo "deb ${expected[$p]}"; done
} >MANIFEST
log "$(ls ./*.deb | wc -l) packages, $(du -sh . | cut -f1) in scripts/gpu/debs/; they need glibc >= ${glibc#GLIBC_}, libstdc++ >= ${glibcxx#GLIBCXX_}"
