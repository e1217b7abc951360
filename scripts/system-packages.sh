#!/usr/bin/env bash
# The system programs fraudpipe's local services need — redis-server, Java >= 17 and Maven (Kafka comes from Maven
# Central) — and, with --browser, Chromium for the dashboard's browser test. Installs what is missing with the
# system's package manager when it can: apt-get as root or through password-less sudo (Debian, Ubuntu), or Homebrew
# (macOS). Otherwise prints the one command to run and exits 1. Nothing is printed when nothing is missing.
#
# Used by `make demo`, scripts/test.sh (`make test`) and .ci/run; scripts/services.sh names it when a program is missing.
set -euo pipefail

browser=0
[[ "${1:-}" == "--browser" ]] && browser=1

apt=() brew=()
need() {  # need COMMAND DEBIAN_PACKAGES... -- BREW_FORMULAE...
  local command="$1"; shift
  command -v "$command" >/dev/null && return 0
  while [[ $# -gt 0 && "$1" != "--" ]]; do apt+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  brew+=("$@")
}
need redis-server redis-server -- redis
need java openjdk-17-jre-headless -- openjdk@17
need mvn maven -- maven
if ((browser)) && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  need chromium chromium fonts-liberation --  # macOS: FRAUDPIPE_TEST_CHROMIUM names a Chrome instead
fi
((${#apt[@]})) || exit 0

if command -v apt-get >/dev/null; then
  sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo)
    else
      echo "missing ${apt[*]}: run  sudo apt-get install -y ${apt[*]}" >&2
      exit 1
    fi
  fi
  echo "installing ${apt[*]} with apt-get"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt[@]}"
elif command -v brew >/dev/null; then
  ((${#brew[@]})) || { echo "missing ${apt[*]}: set FRAUDPIPE_TEST_CHROMIUM to a Chrome or Chromium" >&2; exit 1; }
  echo "installing ${brew[*]} with Homebrew"
  brew install "${brew[@]}"
else
  echo "missing ${apt[*]} (Debian package names): install them with your system's package manager" >&2
  exit 1
fi
