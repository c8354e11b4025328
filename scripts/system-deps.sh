#!/usr/bin/env bash
# Make sure the system tools the demo and tests start themselves are present:
# mosquitto (the MQTT broker), socat (pseudo-terminal pairs for serial buses) and chromium
# (the headless browser the web console's tests drive through Playwright: Debian's build,
# because Playwright's own browser download needs the internet).
# As root, install what is missing with apt-get; otherwise print the exact command.
set -euo pipefail
missing=()
command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
command -v socat >/dev/null 2>&1 || missing+=(socat)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
((${#missing[@]} == 0)) && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged mosquitto service on install; our tests start their own.
  exit 0
fi
echo "missing system packages: ${missing[*]}" >&2
echo "run:  sudo apt-get install -y ${missing[*]}" >&2
exit 1
